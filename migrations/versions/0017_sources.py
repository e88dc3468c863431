"""sources: the sites harvest keeps fresh on a schedule, and each one's health (issue 32)

The cadence itself is a schedule of the scrape deployment in Prefect (its slug is `schedule_slug`): Prefect holds
the truth about when and whether a source runs; this table holds what it is and how it is doing.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# As in the schema: JSONB on Postgres, JSON text elsewhere (a migration keeps its own copy of the types).
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        'sources',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('url', sa.Text(), nullable=False, comment='The start URL as the flow validates it: its runs carry it.'),
        sa.Column('config', Json, nullable=False, comment="The run config the source's schedule passes, never a secret."),
        sa.Column('deployment', sa.Text(), nullable=False, comment='The deployment whose schedule runs it: flow/name.'),
        sa.Column('schedule_slug', sa.Text(), nullable=False,
                  comment="The schedule's slug on that deployment: Prefect holds cadence and paused/active."),
        sa.Column('health', sa.String(16), nullable=False, server_default='ok',
                  comment='ok|degraded: degraded after a drop or repeated failures, until a healthy run.'),
        sa.Column('health_reason', sa.Text(), comment='Why the source is degraded (the alarm).'),
        sa.Column('health_run_id', sa.String(64), comment='The run that set the health.'),
        sa.Column('health_changed_at', sa.DateTime(timezone=True)),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_sources')),
        sa.UniqueConstraint('url', name=op.f('uq_sources_url')),
        sa.UniqueConstraint('schedule_slug', name=op.f('uq_sources_schedule_slug')),
    )


def downgrade() -> None:
    op.drop_table('sources')
