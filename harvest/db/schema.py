"""The tables harvest owns: run records, their files, and the imported activities.

Defined once here with SQLAlchemy Core; Alembic migrations in `migrations/` create them.
Types are portable (Postgres in production and tests, SQLite as the embedded default).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSONB on Postgres (indexable, compact), JSON text elsewhere.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# A real float array on Postgres; JSON list elsewhere.
FloatArray = sa.JSON().with_variant(postgresql.ARRAY(sa.REAL()), "postgresql")


class Timestamp(sa.TypeDecorator[datetime]):
    """A moment in time, read back as an aware UTC datetime from either database.

    `timestamptz` on Postgres; on SQLite (which keeps no zone) a naive UTC text. Design choice: the conversion
    lives in the column type, once, instead of in each reader. In: an aware value is stored as its UTC instant
    on SQLite (SQLite would otherwise keep its wall time and drop the offset); Postgres gets every value as
    given, so a naive one is read in the session's zone exactly as the COPY import reads it. Out: a naive value
    (SQLite) is UTC; an aware one (Postgres, in the session's zone) is the same instant in UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


scrape_runs = sa.Table(
    "scrape_runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True, comment="The Prefect flow run id."),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, comment="running|completed|failed|crashed|cancelled|expired"),
    sa.Column("retention", sa.String(16), nullable=False, server_default="pending",
              comment="pending|kept|cleaned|cleanup_failed|expired"),
    sa.Column("config", Json, nullable=False, comment="The run config, never any secret."),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("flow_run_name", sa.Text),
    sa.Column("deployment_id", sa.String(64)),
    sa.Column("deployment_name", sa.Text),
    sa.Column("work_pool", sa.Text),
    sa.Column("activities_processed", sa.Integer),
    sa.Column("import_summary", Json),
    sa.Column("error", sa.Text),
    sa.Column("warnings", Json, nullable=False, server_default="[]"),
    sa.Column("failed_urls", Json, nullable=False, server_default="[]"),
    sa.Column("steps", Json, nullable=False, server_default="{}",
              comment="step -> {items_in, items_out, skipped, seconds}"),
    sa.Column("expires_at", Timestamp, comment="When a kept run's files may be swept; NULL while running."),
    sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false(), comment="Exempt from the sweep."),
    sa.Column("previous_run_id", sa.String(64), comment="The earlier run of the same URL this run was diffed against."),
    sa.Column("diff", Json, comment="{added, removed, changed, unchanged} against previous_run_id."),
    sa.Column("host", sa.Text, comment="Hostname of the process running the flow (with pid: a liveness check)."),
    sa.Column("pid", sa.Integer),
    sa.Column("process", sa.Text, comment="The flow process's identity: <boot id>/<pid namespace>/<pid>/<start ticks>; "
              "its liveness can be judged only under the same kernel and pid namespace (harvest/liveness.py)."),
    sa.Column("lease_until", Timestamp, comment="An import in progress: the sweep leaves the files alone until then."),
    sa.Index("ix_scrape_runs_url_started_at", "url", "started_at"),
    sa.Index("ix_scrape_runs_status", "status"),
    sa.Index("ix_scrape_runs_expires_at", "expires_at"),
    # One running run per URL, enforced by the database: a second insert for the same URL fails.
    sa.Index(
        "uq_scrape_runs_running_url", "url", unique=True,
        postgresql_where=sa.text("status = 'running'"), sqlite_where=sa.text("status = 'running'"),
    ),
)

run_files = sa.Table(
    "run_files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("scrape_runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp),
    sa.Column("missing_at", Timestamp, comment="Set by the sweep when the object vanished from storage."),
    sa.UniqueConstraint("run_id", "kind"),
)

activities = sa.Table(
    "activities",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True, comment="Stable activity id: hash of name + address."),
    sa.Column("dedupe_key", sa.Text, nullable=False, unique=True,
              comment="The activity's identity: normalized name + place (the address, else the page's coordinates); "
              "the id is its hash."),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("urgency", sa.String(8), nullable=False),
    sa.Column("is_public", sa.Boolean, nullable=False),
    sa.Column("location_name", sa.Text),
    sa.Column("formatted_address", sa.Text),
    sa.Column("street_address", sa.Text),
    sa.Column("city", sa.Text),
    sa.Column("state_province", sa.Text),
    sa.Column("postal_code", sa.Text),
    sa.Column("country_code", sa.String(8)),
    sa.Column("latitude", sa.Float),
    sa.Column("longitude", sa.Float),
    sa.Column("place_id", sa.Text),
    sa.Column("start_date", Timestamp),
    sa.Column("end_date", Timestamp),
    sa.Column("timezone", sa.Text,
              comment="IANA zone of the venue: start_date's local wall time is start_date in this zone."),
    sa.Column("all_day", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="The page gave a date without a time: start_date is that day's midnight in the zone."),
    sa.Column("occurrences", Json, nullable=False, server_default="[]",
              comment="Every [start, end] of an activity found on several dates (start_date: the earliest)."),
    sa.Column("tags", Json, nullable=False),
    sa.Column("embedding", FloatArray),
    sa.Column("image_uri", sa.Text),
    sa.Column("image_width", sa.Integer),
    sa.Column("image_height", sa.Integer),
    sa.Column("source_url", sa.Text),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), comment="The run that last wrote this row."),
    sa.Column("embedding_hash", sa.String(64),
              comment="sha256 of the embedding as written: says a vector changed unparsed."),
    sa.Column("run_started_at", Timestamp,
              comment="Start of the run that last wrote this row: an older run never overwrites it."),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("source", sa.Text,
              comment="The source (a run's start URL) whose claim the row's values were last written from; NULL for "
              "rows of no known run. Its claim and every other are in activity_sources."),
)

# Where an activity came from (issue 32): one claim per (activity, source). Keyed on the stored row's dedupe_key as
# a value, whatever formula computed it. harvest/import_/provenance.py writes and reads it.
activity_sources = sa.Table(
    "activity_sources",
    metadata,
    sa.Column("dedupe_key", sa.Text, sa.ForeignKey("activities.dedupe_key", ondelete="CASCADE", onupdate="CASCADE",
                                                deferrable=True, initially="DEFERRED"),
              primary_key=True, comment="The activity's stored key (checked at commit: a batch writes its claims "
              "before the rows they claim)."),
    sa.Column("source_url", sa.Text, primary_key=True,
              comment="The source: the start URL of the runs that listed the activity, as the run row records it."),
    sa.Column("first_party", sa.Boolean, nullable=False,
              comment="The source's host is the host of the activity's own URL as this source gives it (its item "
              "URL, else the page it was found on): the venue's own site, not an aggregator pointing at it."),
    sa.Column("run_id", sa.String(64), nullable=False, comment="The latest run of this source that listed it."),
    sa.Column("first_seen_at", Timestamp, nullable=False,
              comment="Start of the first run of the source that listed it."),
    sa.Column("last_seen_at", Timestamp, nullable=False,
              comment="Start of the latest run of the source that listed it."),
    sa.Column("fields", Json, nullable=False,
              comment="This source's own values of the activity's columns (all but the key, the vector and the "
              "bookkeeping): the row is re-derived from them when a source that outranked it is withdrawn."),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Index("ix_activity_sources_source_url", "source_url"),
)

geocode_cache = sa.Table(
    "geocode_cache",
    metadata,
    sa.Column("provider", sa.String(32), primary_key=True, comment="nominatim|google: their answers differ."),
    sa.Column("address_key", sa.Text, primary_key=True, comment="normalize_address() of the address."),
    sa.Column("geocode", Json, nullable=False, comment="The Geocode the provider returned (successes only)."),
    sa.Column("created_at", Timestamp, nullable=False),
)

image_cache = sa.Table(
    "image_cache",
    metadata,
    sa.Column("source_url", sa.Text, primary_key=True),
    sa.Column("uri", sa.Text, nullable=False, comment="The stored, content-addressed WebP."),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("etag", sa.Text, comment="Validators for a conditional GET: 304 means reuse, no download."),
    sa.Column("last_modified", sa.Text),
    sa.Column("checked_at", Timestamp, nullable=False),
)

llm_answers = sa.Table(
    "llm_answers",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True, comment="sha256 of the model and the exact messages sent."),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False, comment="The model's JSON answer, as returned."),
    sa.Column("created_at", Timestamp, nullable=False),
)


run_ledger = sa.Table(
    "run_ledger",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("scrape_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("stage", sa.String(64), primary_key=True, comment="crawl, images, geocode, embeddings, run"),
    sa.Column("usage", Json, nullable=False, server_default="{}",
              comment="counter -> count (harvest.cost.prices.Counter): tokens, requests, pages, cache hits, bytes."),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0",
              comment="Estimated cost of the usage at the configured prices."),
    sa.Column("reserved_usd", sa.Float, nullable=False, server_default="0",
              comment="Estimates held for paid calls not yet settled: they count against the budget."),
    sa.Column("released_usd", sa.Float, nullable=False, server_default="0",
              comment="Holds released when the run was reconciled as dead or by `harvest runs release-reservations`: "
                      "their calls never reported back (they may have been billed). No longer counted in the budget."),
    sa.Column("updated_at", Timestamp, nullable=False),
)


sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("url", sa.Text, nullable=False, unique=True,
              comment="The start URL as the flow validates it: its runs carry it."),
    sa.Column("config", Json, nullable=False, comment="The run config the source's schedule passes, never a secret."),
    sa.Column("deployment", sa.Text, nullable=False, comment="The deployment whose schedule runs it: flow/name."),
    sa.Column("schedule_slug", sa.Text, nullable=False, unique=True,
              comment="The schedule's slug on that deployment: Prefect holds cadence and paused/active."),
    sa.Column("health", sa.String(16), nullable=False, server_default="ok",
              comment="ok|degraded: degraded after a drop or repeated failures, until a healthy run."),
    sa.Column("health_reason", sa.Text, comment="Why the source is degraded (the alarm)."),
    sa.Column("health_run_id", sa.String(64), comment="The run that set the health."),
    sa.Column("health_changed_at", Timestamp),
    sa.Column("created_at", Timestamp, nullable=False),
)


page_cache = sa.Table(
    "page_cache",
    metadata,
    sa.Column("url", sa.Text, primary_key=True, comment="The URL as the crawl requested it (normalized)."),
    sa.Column("render", sa.String(16), primary_key=True,
              comment="The render mode of the crawls that use the row (http|browser|auto): a page remembered "
              "by one mode never stands in for another's (a plain page for a render)."),
    sa.Column("extractor", sa.Text, primary_key=True,
              comment="Version of the extraction that found them (its LLM, if any): another version has its "
              "own row."),
    sa.Column("page_url", sa.Text, nullable=False, comment="The page's identity then: canonical, else final URL."),
    sa.Column("final_url", sa.Text, nullable=False, comment="Where redirects ended."),
    sa.Column("etag", sa.Text, comment="Validators for a conditional GET: 304 means reuse, no download."),
    sa.Column("last_modified", sa.Text),
    sa.Column("fetched_at", Timestamp, nullable=False,
              comment="When the content was last confirmed (the server's Date): compared with sitemap lastmod."),
    sa.Column("rendered", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("links", Json, nullable=False, comment="Outgoing links, followed again when the page is reused."),
    sa.Column("pagination", Json, nullable=False),
    sa.Column("activities", Json, nullable=False, comment="Raw activities extraction found on the page."),
    sa.Column("duplicate", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="A duplicate of page_url then: its activities are that page's."),
    sa.Column("original_url", sa.Text, comment="For a duplicate: the URL whose row holds the page's activities."),
    sa.Column("subresources", Json,
              comment="A rendered page's scripts and their data, [{url, etag, last_modified}], revalidated before "
              "it is reused; NULL when unknown (the page is rendered again)."),
    # No foreign key: the crawl stage is used (bench, tests) under run ids no `scrape_runs` row has.
    sa.Column("run_id", sa.String(64),
              comment="The run that last wrote or confirmed the row (its raw activities hold the page's): "
              "the row goes with that run's files. NULL: remembered outside a run, pruned by age only."),
    sa.Column("updated_at", Timestamp, nullable=False,
              comment="When a crawl last fetched or revalidated the URL: the sweep prunes rows older than "
              "HARVEST_PAGE_MEMORY_DAYS."),
    sa.Index("ix_page_cache_updated_at", "updated_at"),
    sa.Index("ix_page_cache_page_url", "page_url"),
    sa.Index("ix_page_cache_run_id", "run_id"),
)


def one_of(column: sa.ColumnElement[object], values: Sequence[object], dialect: str) -> sa.ColumnElement[bool]:
    """`column IN (values)` for lookups of up to thousands of keys. On Postgres it is `column = ANY(%(array)s)`,
    one array parameter: an expanded IN is a statement with one placeholder per key, which the driver has to
    parse anew each time (it was most of the Python time of an unchanged re-run's lookups)."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(values)
