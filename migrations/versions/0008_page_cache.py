"""page_cache: per-URL validators, links and activities, for polite incremental re-crawls

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# As in the schema: JSONB on Postgres, JSON text elsewhere (a migration keeps its own copy of the types).
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        'page_cache',
        sa.Column('url', sa.Text(), nullable=False, comment='The URL as the crawl requested it (normalized).'),
        sa.Column('page_url', sa.Text(), nullable=False,
                  comment="The page's identity then: canonical, else final URL."),
        sa.Column('final_url', sa.Text(), nullable=False, comment='Where redirects ended.'),
        sa.Column('etag', sa.Text(), nullable=True,
                  comment='Validators for a conditional GET: 304 means reuse, no download.'),
        sa.Column('last_modified', sa.Text(), nullable=True),
        sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False,
                  comment="When the content was last confirmed (the server's Date): compared with sitemap lastmod."),
        sa.Column('rendered', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('links', Json, nullable=False, comment='Outgoing links, followed again when the page is reused.'),
        sa.Column('pagination', Json, nullable=False),
        sa.Column('activities', Json, nullable=False, comment='Raw activities extraction found on the page.'),
        sa.Column('duplicate', sa.Boolean(), server_default=sa.false(), nullable=False,
                  comment="A duplicate of page_url then: its activities are that page's."),
        sa.Column('original_url', sa.Text(), nullable=True,
                  comment="For a duplicate: the URL whose row holds the page's activities."),
        sa.Column('extractor', sa.Text(), nullable=False,
                  comment='Version of the extraction that found them: another version ignores the row.'),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('url', name=op.f('pk_page_cache')),
    )


def downgrade() -> None:
    op.drop_table('page_cache')
