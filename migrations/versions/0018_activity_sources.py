"""activity_sources: where an activity came from, one claim per (activity, source), and activities.source, the source
whose values a row shows (issue 32; harvest/import_/provenance.py)

Existing rows get the claim of the run that last wrote them (its start URL, as scrape_runs records it), with their
stored values as that source's own; rows of no known run get none. Their first_party is false: the item URL that
decides it was not recorded before, so the source's next run sets it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

# What a claim keeps of a row in `fields` (harvest/import_/provenance.py::claim_fields at this revision).
_FIELDS = [
    'name', 'description', 'urgency', 'is_public', 'location_name', 'formatted_address', 'street_address', 'city',
    'state_province', 'postal_code', 'country_code', 'latitude', 'longitude', 'place_id', 'start_date', 'end_date',
    'timezone', 'all_day', 'occurrences', 'tags', 'image_uri', 'image_width', 'image_height', 'source_url',
    'content_hash', 'embedding_hash',
]
_JSON_FIELDS = {'occurrences', 'tags'}


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            'source', sa.Text,
            comment="The source (a run's start URL) whose claim the row's values were last written from; NULL for "
            "rows of no known run. Its claim and every other are in activity_sources.",
        ))
    op.create_table(
        'activity_sources',
        sa.Column('dedupe_key', sa.Text, nullable=False,
                  comment="The activity's stored key (checked at commit: a batch writes its claims before the rows "
                  "they claim)."),
        sa.Column('source_url', sa.Text, nullable=False,
                  comment='The source: the start URL of the runs that listed the activity, as the run row records it.'),
        sa.Column('first_party', sa.Boolean, nullable=False,
                  comment="The source's host is the host of the activity's own URL as this source gives it (its item "
                  "URL, else the page it was found on): the venue's own site, not an aggregator pointing at it."),
        sa.Column('run_id', sa.String(64), nullable=False, comment='The latest run of this source that listed it.'),
        sa.Column('first_seen_at', timestamp, nullable=False,
                  comment='Start of the first run of the source that listed it.'),
        sa.Column('last_seen_at', timestamp, nullable=False,
                  comment='Start of the latest run of the source that listed it.'),
        sa.Column('fields', json, nullable=False,
                  comment="This source's own values of the activity's columns (all but the key, the vector and the "
                  "bookkeeping): the row is re-derived from them when a source that outranked it is withdrawn."),
        sa.Column('updated_at', timestamp, nullable=False),
        sa.ForeignKeyConstraint(['dedupe_key'], ['activities.dedupe_key'],
                                name=op.f('fk_activity_sources_dedupe_key_activities'),
                                ondelete='CASCADE', onupdate='CASCADE', deferrable=True, initially='DEFERRED'),
        sa.PrimaryKeyConstraint('dedupe_key', 'source_url', name=op.f('pk_activity_sources')),
    )
    op.create_index('ix_activity_sources_source_url', 'activity_sources', ['source_url'])

    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        fields = 'jsonb_build_object(' + ', '.join(f"'{name}', a.{name}" for name in _FIELDS) + ')'
    else:
        fields = 'json_object(' + ', '.join(
            f"'{name}', json(a.{name})" if name in _JSON_FIELDS else f"'{name}', a.{name}" for name in _FIELDS
        ) + ')'
    op.execute(
        "UPDATE activities SET source = (SELECT r.url FROM scrape_runs r WHERE r.id = activities.run_id)"
    )
    op.execute(
        "INSERT INTO activity_sources (dedupe_key, source_url, first_party, run_id, first_seen_at, last_seen_at, "
        "fields, updated_at) "
        f"SELECT a.dedupe_key, a.source, {sa.false().compile(dialect=bind.dialect)}, a.run_id, "
        "COALESCE(a.run_started_at, a.created_at), COALESCE(a.run_started_at, a.created_at), "
        f"{fields}, a.updated_at FROM activities a WHERE a.source IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index('ix_activity_sources_source_url', table_name='activity_sources')
    op.drop_table('activity_sources')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_column('source')
