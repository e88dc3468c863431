"""run_ledger: what each run used and cost, per stage, and what its budget holds in reserve

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# As in the schema: JSONB on Postgres, JSON text elsewhere (a migration keeps its own copy of the types).
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        'run_ledger',
        sa.Column('run_id', sa.String(64), nullable=False),
        sa.Column('stage', sa.String(64), nullable=False, comment='crawl, images, geocode, embeddings, run'),
        sa.Column('usage', Json, nullable=False, server_default='{}',
                  comment='counter -> count (harvest.cost.prices.Counter): tokens, requests, pages, cache hits, bytes.'),
        sa.Column('cost_usd', sa.Float(), nullable=False, server_default='0',
                  comment='Estimated cost of the usage at the configured prices.'),
        sa.Column('reserved_usd', sa.Float(), nullable=False, server_default='0',
                  comment='Estimates held for paid calls not yet settled: they count against the budget.'),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['scrape_runs.id'], name=op.f('fk_run_ledger_run_id_scrape_runs'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'stage', name=op.f('pk_run_ledger')),
    )


def downgrade() -> None:
    op.drop_table('run_ledger')
