"""run_ledger.released_usd: holds given back because the calls they were held for will never report back

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('run_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'released_usd', sa.Float(), nullable=False, server_default='0',
            comment='Holds released when the run was reconciled as dead or by `harvest runs release-reservations`: '
                    'their calls never reported back (they may have been billed). No longer counted in the budget.'))


def downgrade() -> None:
    with op.batch_alter_table('run_ledger', schema=None) as batch_op:
        batch_op.drop_column('released_usd')
