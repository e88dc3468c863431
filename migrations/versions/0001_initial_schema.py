"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('activities',
    sa.Column('id', sa.String(length=64), nullable=False, comment='Stable activity id: hash of name + address.'),
    sa.Column('dedupe_key', sa.Text(), nullable=False, comment="Normalized name + formatted address: the original design's dedupe rule."),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('urgency', sa.String(length=8), nullable=False),
    sa.Column('is_public', sa.Boolean(), nullable=False),
    sa.Column('location_name', sa.Text(), nullable=True),
    sa.Column('formatted_address', sa.Text(), nullable=True),
    sa.Column('street_address', sa.Text(), nullable=True),
    sa.Column('city', sa.Text(), nullable=True),
    sa.Column('state_province', sa.Text(), nullable=True),
    sa.Column('postal_code', sa.Text(), nullable=True),
    sa.Column('country_code', sa.String(length=8), nullable=True),
    sa.Column('latitude', sa.Float(), nullable=True),
    sa.Column('longitude', sa.Float(), nullable=True),
    sa.Column('place_id', sa.Text(), nullable=True),
    sa.Column('start_date', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_date', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('embedding', sa.JSON().with_variant(postgresql.ARRAY(postgresql.REAL()), 'postgresql'), nullable=True),
    sa.Column('image_uri', sa.Text(), nullable=True),
    sa.Column('image_width', sa.Integer(), nullable=True),
    sa.Column('image_height', sa.Integer(), nullable=True),
    sa.Column('source_url', sa.Text(), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True, comment='The run that last wrote this row.'),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activities')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_activities_dedupe_key'))
    )
    op.create_table('scrape_runs',
    sa.Column('id', sa.String(length=64), nullable=False, comment='The Prefect flow run id.'),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False, comment='running|completed|failed|crashed|cancelled|expired'),
    sa.Column('retention', sa.String(length=16), server_default='pending', nullable=False, comment='pending|kept|cleaned|cleanup_failed|expired'),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, comment='The run config, never any secret.'),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('flow_run_name', sa.Text(), nullable=True),
    sa.Column('deployment_id', sa.String(length=64), nullable=True),
    sa.Column('deployment_name', sa.Text(), nullable=True),
    sa.Column('work_pool', sa.Text(), nullable=True),
    sa.Column('activities_processed', sa.Integer(), nullable=True),
    sa.Column('import_summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('warnings', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default='[]', nullable=False),
    sa.Column('failed_urls', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default='[]', nullable=False),
    sa.Column('steps', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default='{}', nullable=False, comment='step -> {items_in, items_out, skipped, seconds}'),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scrape_runs'))
    )
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.create_index('ix_scrape_runs_status', ['status'], unique=False)
        batch_op.create_index('ix_scrape_runs_url_started_at', ['url', 'started_at'], unique=False)

    op.create_table('run_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('records', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['scrape_runs.id'], name=op.f('fk_run_files_run_id_scrape_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_files')),
    sa.UniqueConstraint('run_id', 'kind', name=op.f('uq_run_files_run_id_kind'))
    )


def downgrade() -> None:
    op.drop_table('run_files')
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_scrape_runs_url_started_at')
        batch_op.drop_index('ix_scrape_runs_status')

    op.drop_table('scrape_runs')
    op.drop_table('activities')
