"""scrape_runs.process: the identity of the process running the run (boot id, pid namespace, pid, start time), so
that liveness survives pid reuse and containers (harvest/liveness.py)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for runs recorded before: their process cannot be judged, so their heartbeat decides (as for a run on
    # another host).
    op.add_column('scrape_runs', sa.Column(
        'process', sa.Text, nullable=True,
        comment="The flow process's identity: <boot id>/<pid namespace>/<pid>/<start ticks>; its liveness can be "
        "judged only under the same kernel and pid namespace (harvest/liveness.py).",
    ))


def downgrade() -> None:
    with op.batch_alter_table('scrape_runs') as batch:
        batch.drop_column('process')
