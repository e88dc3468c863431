"""caches for incremental re-runs (geocodes by address, processed images by source URL); the host and pid
of the process running each run, so a run whose process died is recognised even without a Prefect server

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.Text(), nullable=True,
                                      comment='Hostname of the process running the flow (with pid: a liveness check).'))
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
    op.create_table(
        'geocode_cache',
        sa.Column('provider', sa.String(length=32), nullable=False, comment='nominatim|google: their answers differ.'),
        sa.Column('address_key', sa.Text(), nullable=False, comment='normalize_address() of the address.'),
        sa.Column('geocode', Json, nullable=False, comment='The Geocode the provider returned (successes only).'),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('provider', 'address_key', name=op.f('pk_geocode_cache')),
    )
    op.create_table(
        'image_cache',
        sa.Column('source_url', sa.Text(), nullable=False),
        sa.Column('uri', sa.Text(), nullable=False, comment='The stored, content-addressed WebP.'),
        sa.Column('width', sa.Integer(), nullable=False),
        sa.Column('height', sa.Integer(), nullable=False),
        sa.Column('bytes', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('etag', sa.Text(), nullable=True, comment='Validators for a conditional GET: 304 means reuse, no download.'),
        sa.Column('last_modified', sa.Text(), nullable=True),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('source_url', name=op.f('pk_image_cache')),
    )


def downgrade() -> None:
    op.drop_table('image_cache')
    op.drop_table('geocode_cache')
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.drop_column('pid')
        batch_op.drop_column('host')
