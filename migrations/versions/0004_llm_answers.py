"""llm_answers: the extraction model's answer per exact prompt, so an unchanged page is not sent again

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'llm_answers',
        sa.Column('key', sa.String(length=64), nullable=False, comment='sha256 of the model and the exact messages sent.'),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('answer', sa.Text(), nullable=False, comment="The model's JSON answer, as returned."),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_llm_answers')),
    )


def downgrade() -> None:
    op.drop_table('llm_answers')
