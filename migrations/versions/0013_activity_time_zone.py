"""activities say their venue's IANA time zone and whether they are all-day (issue 26)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'timezone', sa.Text,
            comment="IANA zone of the venue: start_date's local wall time is start_date in this zone.",
        ))
        batch_op.add_column(sa.Column(
            'all_day', sa.Boolean, nullable=False, server_default=sa.false(),
            comment='The page gave a date without a time: start_date is that day\'s midnight in the zone.',
        ))


def downgrade() -> None:
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_column('all_day')
        batch_op.drop_column('timezone')
