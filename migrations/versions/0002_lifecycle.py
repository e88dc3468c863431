"""run lifecycle: pinning, diff against the previous run, vanished files, one running run per URL

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pinned', sa.Boolean(), server_default=sa.false(), nullable=False,
                                      comment='Exempt from the sweep.'))
        batch_op.add_column(sa.Column('previous_run_id', sa.String(length=64), nullable=True,
                                      comment='The earlier run of the same URL this run was diffed against.'))
        batch_op.add_column(sa.Column('diff', Json, nullable=True,
                                      comment='{added, removed, changed, unchanged} against previous_run_id.'))
        batch_op.alter_column('expires_at', existing_type=sa.DateTime(timezone=True), existing_nullable=True,
                              comment="When a kept run's files may be swept; NULL while running.")
        batch_op.create_index('ix_scrape_runs_expires_at', ['expires_at'], unique=False)
        batch_op.create_index(
            'uq_scrape_runs_running_url', ['url'], unique=True,
            postgresql_where=sa.text("status = 'running'"), sqlite_where=sa.text("status = 'running'"),
        )
    with op.batch_alter_table('run_files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('missing_at', sa.DateTime(timezone=True), nullable=True,
                                      comment='Set by the sweep when the object vanished from storage.'))


def downgrade() -> None:
    with op.batch_alter_table('run_files', schema=None) as batch_op:
        batch_op.drop_column('missing_at')
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.drop_index('uq_scrape_runs_running_url')
        batch_op.drop_index('ix_scrape_runs_expires_at')
        batch_op.drop_column('diff')
        batch_op.drop_column('previous_run_id')
        batch_op.drop_column('pinned')
