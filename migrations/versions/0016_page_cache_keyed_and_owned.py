"""page_cache: one row per (URL, render mode, extractor), owned by the run that last wrote or confirmed it (issue 27
items 2 and 7).

A page remembered by a `render="http"` run was reused unrendered by later `browser`/`auto` runs, and runs with and
without the LLM overwrote each other's row (the key was the URL alone). The rows also held raw activities past the
retention promise. Rows stored before this migration have neither a render mode nor a run, so no crawl could ever
recall them and no cleanup could account for them: they are dropped (the next crawl of a site fetches each page in
full once and remembers it under the new key).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UPDATED_AT = ('When a crawl last fetched or revalidated the URL: the sweep prunes rows older than '
              'HARVEST_PAGE_MEMORY_DAYS.')


def _columns() -> list[sa.Column]:
    return [
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
        sa.Column('subresources', Json, nullable=True,
                  comment="A rendered page's scripts and their data, [{url, etag, last_modified}], revalidated "
                  "before it is reused; NULL when unknown (the page is rendered again)."),
    ]


def upgrade() -> None:
    op.drop_table('page_cache')
    op.create_table(
        'page_cache',
        *_columns(),
        sa.Column('render', sa.String(16), nullable=False,
                  comment="The render mode of the crawls that use the row (http|browser|auto): a page remembered "
                  "by one mode never stands in for another's (a plain page for a render)."),
        sa.Column('extractor', sa.Text(), nullable=False,
                  comment='Version of the extraction that found them (its LLM, if any): another version has its '
                  'own row.'),
        sa.Column('run_id', sa.String(64), nullable=True,
                  comment="The run that last wrote or confirmed the row (its raw activities hold the page's): "
                  "the row goes with that run's files. NULL: remembered outside a run, pruned by age only."),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False, comment=UPDATED_AT),
        sa.PrimaryKeyConstraint('url', 'render', 'extractor', name=op.f('pk_page_cache')),
    )
    op.create_index('ix_page_cache_updated_at', 'page_cache', ['updated_at'], unique=False)
    op.create_index('ix_page_cache_page_url', 'page_cache', ['page_url'], unique=False)
    # Cleaning a run up deletes its rows: an index read, not a scan.
    op.create_index('ix_page_cache_run_id', 'page_cache', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_table('page_cache')  # its rows hold keys the old table cannot: dropped, as the upgrade did
    op.create_table(
        'page_cache',
        *_columns(),
        sa.Column('extractor', sa.Text(), nullable=False,
                  comment='Version of the extraction that found them: another version ignores the row.'),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False, comment=UPDATED_AT),
        sa.PrimaryKeyConstraint('url', name=op.f('pk_page_cache')),
    )
    op.create_index('ix_page_cache_updated_at', 'page_cache', ['updated_at'], unique=False)
    op.create_index('ix_page_cache_page_url', 'page_cache', ['page_url'], unique=False)
