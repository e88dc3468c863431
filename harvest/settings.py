"""One settings object, read from the environment once and passed down.

The variable names are a contract other tools rely on (deploy scripts, CI, the README): keep them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from harvest.cost.prices import Prices
from harvest.standardize.languages import DEFAULT_DATE_LANGUAGES, check_date_languages

HARVEST_HOME = Path(os.environ.get("HARVEST_HOME", str(Path.home() / ".harvest")))


def _default_database_url() -> str:
    return f"sqlite:///{HARVEST_HOME / 'harvest.db'}"


def _default_storage_url() -> str:
    return (HARVEST_HOME / "storage").as_uri()


# The headless shell first: the same engine without the browser's UI, which cost ~25% more CPU per render
# (a browser-UI renderer process repainting for every navigation) and a slower launch.
BROWSER_CANDIDATES = (
    "/usr/bin/chromium-headless-shell", "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome",
)


def _default_browser_path() -> str | None:
    for candidate in BROWSER_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return None


# Languages (dateparser codes) whose month names a page's dates may be written in; English month names are read
# whatever the list. A page's `<html lang>` is not used: it is missing, or left at a theme's "en-US", on too many
# sites to be trusted, and the month names themselves say which language a date is in.


class HarvestSettings(BaseSettings):
    """Everything that changes harvest's behaviour per environment. Secrets are `SecretStr`."""

    model_config = SettingsConfigDict(env_prefix="HARVEST_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        default_factory=_default_database_url,
        description="SQLAlchemy URL of the metadata/activities database; SQLite under ~/.harvest by default.",
    )
    storage_url: str = Field(
        default_factory=_default_storage_url,
        description="Where run files go: s3://bucket/prefix, file:///abs/path, or a block slug s3-bucket/<name>.",
    )
    result_storage_block: str | None = Field(
        default=None,
        description="The one Prefect block harvest's tasks persist their results in, as <block type>/<name> (e.g. "
        "s3-bucket/harvest-results); it must be rooted where HARVEST_STORAGE_URL is (a run refuses one rooted "
        "elsewhere, whose results the sweep would never delete) and runs never save over it. Unset: harvest keeps "
        "its own block, harvest-results, pointed at HARVEST_STORAGE_URL (saved when missing or pointed elsewhere; "
        "`harvest blocks register` saves it too); with HARVEST_STORAGE_URL=s3-bucket/<name>, that block.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto, R2); unset for AWS itself."
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "HARVEST_OPENAI_API_KEY"),
        description="No key: embeddings and LLM extraction are skipped with a visible warning.",
    )
    openai_api_key_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the OpenAI key, read when OPENAI_API_KEY is unset.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "HARVEST_OPENAI_BASE_URL"),
        description="Any OpenAI-compatible endpoint; unset for api.openai.com.",
    )
    extraction_model: str = Field(
        default="gpt-4o-mini", description="Chat model used for LLM extraction of pages without structured data."
    )
    embedding_dimensions: int = Field(
        default=1536, description="Expected vector length; vectors of any other length are refused."
    )
    geocoder: Literal["nominatim", "google", "none"] = Field(default="nominatim")
    geocoder_url: str | None = Field(
        default=None, description="Base URL of a self-hosted Nominatim, a Google-compatible endpoint or a test server."
    )
    google_maps_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_MAPS_API_KEY", "HARVEST_GOOGLE_MAPS_API_KEY")
    )
    google_maps_api_key_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the Google key, read when the variable is unset.",
    )
    geocoder_rate_per_second: float = Field(
        default=1.0, description="Geocoder calls per second (Nominatim's usage policy asks for at most 1)."
    )
    openai_max_concurrent: int = Field(
        default=4, description="Calls to OpenAI in flight at once across all workers (a Prefect global limit)."
    )
    embeddings_sync_below: int = Field(
        default=100, ge=0,
        description=(
            "Fewer texts than this left to embed: use the synchronous endpoint now instead of a batch "
            "(0: always batch)."
        ),
    )
    # Prices (USD) of the paid calls, for the run ledger and budgets; sources and the date they were checked are
    # in docs/configuration.md. They price the configured models: change them with HARVEST_EXTRACTION_MODEL or
    # the run's embedding_model.
    price_embedding_per_million_tokens: float = Field(
        default=0.02, ge=0, description="text-embedding-3-small, per 1M input tokens (synchronous endpoint)."
    )
    price_chat_input_per_million_tokens: float = Field(
        default=0.15, ge=0, description="gpt-4o-mini (the extraction model), per 1M input tokens."
    )
    price_chat_output_per_million_tokens: float = Field(
        default=0.60, ge=0, description="gpt-4o-mini (the extraction model), per 1M output tokens."
    )
    price_batch_discount: float = Field(
        default=0.5, ge=0, le=1, description="Share the Batch API takes off embedding tokens (0.5: half price)."
    )
    price_google_geocode_per_1000: float = Field(
        default=5.0, ge=0, description="Google Geocoding, per 1,000 requests (Nominatim is free)."
    )
    max_cost_usd: float | None = Field(
        default=None, ge=0,
        description="The deployment's default budget per run (USD), used when the run config sets none.",
    )
    browser_path: str | None = Field(
        default_factory=_default_browser_path, description="Chromium executable driven by Playwright."
    )
    allow_private_networks: bool = Field(
        default=False,
        description="Allow crawling/downloading loopback, private, link-local and metadata addresses (tests, demo).",
    )
    batch_poll_seconds: float = Field(default=30.0, description="First interval between batch status polls.")
    batch_poll_max_seconds: float = Field(default=600.0, description="Cap on the growing poll interval.")
    batch_max_wait_seconds: float = Field(default=24 * 3600.0, description="Total time to wait for a batch.")
    batch_max_requests: int = Field(
        default=50_000, ge=1, le=50_000,
        description="Lines per embeddings batch (OpenAI's limit: 50,000); more lines are split into several batches.",
    )
    batch_max_bytes: int = Field(
        default=200_000_000, ge=1, le=200_000_000,
        description="Bytes per batch input file (OpenAI's limit: 200 MB); larger inputs are split into batches.",
    )
    user_agent: str = Field(default="harvest/0.1 (+https://github.com/harvest; family-activities crawler)")
    request_timeout_seconds: float = Field(default=20.0)
    per_host_concurrency: int = Field(default=4, description="Concurrent page/image requests per host.")
    # The crawler's own knobs: unset means the default declared in harvest/crawl/options.py (CrawlOptions).
    crawl_max_concurrency: int | None = Field(default=None, ge=1, description="Page fetches in flight at once (8).")
    crawl_browser_pages: int | None = Field(default=None, ge=1, description="Browser tabs rendering at once (4).")
    crawl_trap_limit: int | None = Field(
        default=None, ge=1, description="Query-string variants followed per path before the rest count as a trap (100)."
    )
    crawl_max_page_bytes: int | None = Field(default=None, ge=1, description="Pages larger than this fail (5 MiB).")
    crawl_learn_after: int | None = Field(
        default=None, ge=1, description="Pages of a host that needed the browser before auto mode renders the rest (3)."
    )
    crawl_retries: int | None = Field(default=None, ge=1, description="Attempts per URL for transient failures (3).")
    crawl_backoff_seconds: float | None = Field(default=None, ge=0, description="First backoff between attempts (0.5).")
    crawl_settle_seconds: float | None = Field(
        default=None, ge=0, description="Longest wait for a rendered page to go quiet (2)."
    )
    crawl_queue_size: int | None = Field(
        default=None, ge=1, description="Pages the crawl may get ahead of its consumer before pausing (16)."
    )
    crawl_url_budget_seconds: float | None = Field(
        default=None, gt=0,
        description="Most time one URL may take, redirects, retries and its render included (2 x the timeout).",
    )
    crawl_min_body_rate: float | None = Field(
        default=None, ge=0, description="Bytes/s a page body must average after its first timeout, else cut (1024)."
    )
    crawl_revalidate: bool = Field(
        default=True,
        description="Keep each page's validators, links and activities (page_cache) and re-crawl politely: "
        "conditional requests, a 304 or an older sitemap <lastmod> reuses what the page gave (false: fetch all).",
    )
    date_languages: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_DATE_LANGUAGES,
        description="Comma-separated languages (dateparser codes: fr, de, ...) a page's dates may be written in; "
        "English is always read. A date in any other language is refused with a warning, never guessed.",
    )
    page_memory_days: float = Field(
        default=30, ge=1,
        description="Days a page_cache row lives without a crawl fetching or revalidating its URL before the sweep "
        "deletes it (URLs a site stopped linking to: session ids, dated event pages); sooner when the files of "
        "the run that last reached it go. At least 1: a nightly crawl must be able to confirm its pages first.",
    )
    image_max_bytes: int = Field(default=15 * 1024 * 1024, description="Images larger than this are refused.")
    image_max_pixels: int = Field(default=50_000_000, description="Decompression-bomb guard for images.")
    image_processes: bool = Field(
        default=True, description="Decode and re-encode images in a process pool sized to the cores (false: threads)."
    )
    image_pool_from: int = Field(
        default=32, ge=0,
        description="A stage converts its first N images in its own threads and starts the process pool only for "
        "more: starting the pool's processes costs more CPU and seconds than converting a few dozen images.",
    )
    task_runner: Literal["threads", "dask"] = Field(
        default="threads", description="threads: a thread pool in the flow's process; dask: a Dask cluster."
    )
    dask_address: str | None = Field(
        default=None, description="Scheduler of an existing Dask cluster (tcp://host:8786); unset: a local one."
    )
    dask_processes: int = Field(
        default=0, ge=0,
        description=(
            "Worker processes of the local Dask cluster (no HARVEST_DASK_ADDRESS). 0: one worker inside the flow's "
            "process (threads; works on Prefect's temporary API). N ≥ 1: N worker processes, each building what its "
            "tasks need from the environment; they report to PREFECT_API_URL, so a Prefect server is needed."
        ),
    )
    enrich_chunk_size: int = Field(
        default=1000, ge=1,
        description="Activities costing a request (an address no earlier run geocoded, an image URL) per "
        "image/geocode task: enrichment fans out in chunks of this many of them.",
    )
    enrich_max_chunks: int = Field(
        default=4, ge=1, description="At most this many chunks per enrichment (bigger chunks on bigger sites)."
    )
    retention_days: float = Field(default=14, description="Days a completed run's kept files live before the sweep.")
    failed_retention_days: float = Field(
        default=30, description="Days a failed, crashed or cancelled run's files live before the sweep."
    )
    orphan_grace_hours: float = Field(
        default=24, ge=1,
        description="Unaccounted objects younger than this are left alone (a run may be writing them); also how "
        "long a run on another host may go without a heartbeat, and a finished run without its hook. At least 1: "
        "shorter would delete what a live run is still writing.",
    )
    source_drop_alarm: float = Field(
        default=0.5, gt=0, le=1,
        description="A source's run whose activities fall by more than this share of its previous completed run's "
        "(or to 0) raises the drop alarm: a warning on the run, a harvest.source.degraded event, the source "
        "degraded (its rows kept from the sweep) until a healthy run.",
    )
    source_failure_alarm: int = Field(
        default=3, ge=1,
        description="A source whose last this-many runs all failed (failed or crashed) raises the same alarm.",
    )
    sources_deployment: str = Field(
        default="scrape-website/fleet",
        description="The scrape deployment (flow/name) whose schedules carry the sources' cadences "
        "(`harvest sources add`).",
    )
    sources_pool: str = Field(
        default="harvest-sources",
        description="The work pool `harvest sources worker` serves: the sources deployment's (a process pool, so a "
        "plain `prefect worker` can serve it too, slower).",
    )
    notify_webhook_url: SecretStr | None = Field(
        default=None,
        description="A URL that gets a JSON POST ({subject, body, text}) when a harvest flow run fails or crashes: "
        "`harvest automations register` saves it in the Custom Webhook block harvest-notify (as a secret value) and "
        "points the notification automation at it.",
    )
    notify_block: str | None = Field(
        default=None,
        description="Any Prefect notification block to notify through instead, as <block type>/<name> (e.g. "
        "slack-webhook/team-alerts, made in the UI).",
    )
    db_reconnect_seconds: float = Field(
        default=20, description="How long connecting to a restarting database is retried before a step fails."
    )
    migrations_dir: str | None = Field(
        default=None,
        description="Alembic migrations directory (the Docker image's /app/migrations); unset or empty: "
        "`migrations/` beside the package.",
    )

    @field_validator("storage_url")
    @classmethod
    def _storage_url_has_a_known_form(cls, value: str) -> str:
        if not value.startswith(("s3://", "file://", "s3-bucket/")):
            raise ValueError(
                f"HARVEST_STORAGE_URL must be s3://bucket/prefix, file:///abs/path or s3-bucket/<block>, got {value!r}"
            )
        return value

    @field_validator("date_languages", mode="before")
    @classmethod
    def _date_languages_are_known(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip().lower() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple):
            check_date_languages([str(language) for language in value])
        return value

    def prices(self) -> Prices:
        """The price table the run ledger charges with."""
        return Prices(
            embedding_per_million_tokens=self.price_embedding_per_million_tokens,
            chat_input_per_million_tokens=self.price_chat_input_per_million_tokens,
            chat_output_per_million_tokens=self.price_chat_output_per_million_tokens,
            batch_discount=self.price_batch_discount,
            google_geocode_per_1000=self.price_google_geocode_per_1000,
        )

    @property
    def has_openai(self) -> bool:
        return self.openai_api_key is not None and bool(self.openai_api_key.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> HarvestSettings:
    """The process-wide settings, read from the environment on first use."""
    return HarvestSettings()
