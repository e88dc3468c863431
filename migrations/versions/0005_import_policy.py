"""import policy and import leases: activities carry their run's start time and an embedding fingerprint;
a run being imported holds a lease the sweep respects

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embedding_hash', sa.String(length=64), nullable=True,
                                      comment='sha256 of the embedding as written: says a vector changed unparsed.'))
        batch_op.add_column(sa.Column('run_started_at', sa.DateTime(timezone=True), nullable=True,
                                      comment='Start of the run that last wrote this row: an older run never overwrites it.'))
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True,
                                      comment='An import in progress: the sweep leaves the files alone until then.'))


def downgrade() -> None:
    with op.batch_alter_table('scrape_runs', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_column('run_started_at')
        batch_op.drop_column('embedding_hash')
