"""page_cache.subresources: what a rendered page's scripts loaded (scripts and the data they fetched), with
their validators, revalidated before the page is reused: its document's 304 does not cover them

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for every row remembered before: a rendered page among them is rendered once more, then known.
    op.add_column('page_cache', sa.Column(
        'subresources', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=True,
        comment="A rendered page's scripts and their data, [{url, etag, last_modified}], revalidated before it is "
        "reused; NULL when unknown (the page is rendered again).",
    ))


def downgrade() -> None:
    with op.batch_alter_table('page_cache') as batch:
        batch.drop_column('subresources')
