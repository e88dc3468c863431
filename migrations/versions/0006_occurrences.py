"""activities keep every dated occurrence of an activity found on several dates

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# As in the schema: JSONB on Postgres, JSON text elsewhere (a migration keeps its own copy of the types).
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'occurrences', Json, nullable=False, server_default='[]',
            comment='Every [start, end] of an activity found on several dates (start_date: the earliest).',
        ))


def downgrade() -> None:
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_column('occurrences')
