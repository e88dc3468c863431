"""page_cache by page: a URL the last crawl never requested, but whose page it reached under another URL (that
URL's canonical), is recalled as a duplicate of it

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A crawl asks for every URL it has no row for (all of them on a first crawl): an index read, not a scan.
    op.create_index('ix_page_cache_page_url', 'page_cache', ['page_url'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_page_cache_page_url', table_name='page_cache')
