"""page_cache pruning: the sweep deletes rows no crawl fetched or revalidated for HARVEST_PAGE_MEMORY_DAYS

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

UPDATED_AT = ('When a crawl last fetched or revalidated the URL: the sweep prunes rows older than '
              'HARVEST_PAGE_MEMORY_DAYS.')


def upgrade() -> None:
    # The sweep deletes the oldest rows a batch at a time: the index makes each batch a range read, not a scan
    # of the whole table.
    op.create_index('ix_page_cache_updated_at', 'page_cache', ['updated_at'], unique=False)
    # Only Postgres keeps comments; on SQLite altering a column would copy the whole table for nothing.
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('page_cache', 'updated_at', existing_type=sa.DateTime(timezone=True), existing_nullable=False,
                        comment=UPDATED_AT)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('page_cache', 'updated_at', existing_type=sa.DateTime(timezone=True), existing_nullable=False,
                        comment=None, existing_comment=UPDATED_AT)
    op.drop_index('ix_page_cache_updated_at', table_name='page_cache')
