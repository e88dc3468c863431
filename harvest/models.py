"""Typed records that cross module boundaries: the run config, activities at each stage, file references."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harvest.urls import validate_start_url

Urgency = Literal["low", "medium", "high"]


class RunConfig(BaseModel):
    """How far and how a run crawls, and what it does with the result. Rendered as a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid")

    max_pages: int = Field(default=150, ge=1, le=100_000, description="Stop after this many pages are fetched.")
    max_depth: int = Field(default=3, ge=0, le=50, description="Links followed from the start page (0 = only it).")
    max_extractions: int = Field(
        default=150, ge=1, le=1_000_000, description="Stop extracting after this many raw activities."
    )
    max_crawl_seconds: float = Field(
        default=1800, gt=0, le=7 * 24 * 3600,
        description="Stop crawling after this many seconds and go on with the pages found so far.",
    )
    follow_external_links: bool = Field(default=False, description="Also crawl pages on other sites.")
    include_paths: list[str] = Field(
        default_factory=list, description="Only crawl URL paths matching one of these globs (e.g. /events/*)."
    )
    exclude_paths: list[str] = Field(default_factory=list, description="Never crawl URL paths matching these globs.")
    tags_hint: list[str] = Field(default_factory=list, description="Tags added to every activity of this run.")
    auto_import: bool = Field(
        default=False, description="Import into the activities table and delete the run's files when it succeeds."
    )
    urgency_default: Urgency = Field(default="medium", description="Urgency of activities that do not say.")
    embedding_model: str = Field(default="text-embedding-3-small", description="OpenAI embeddings model.")
    keep_files: bool | None = Field(
        default=None, description="Override cleanup: true keeps files even after a successful auto-import."
    )
    max_cost_usd: float | None = Field(
        default=None, ge=0,
        description="Budget of this run in USD: no paid call is made that would pass it (0: none at all). "
        "Unset: the deployment's HARVEST_MAX_COST_USD, else no limit.",
    )
    render: Literal["auto", "browser", "http"] = Field(
        default="auto",
        description="auto: plain HTTP first, the browser only for pages that need scripts; browser: always render.",
    )
    timezone: str | None = Field(
        default=None,
        description="The site's IANA time zone (e.g. Europe/Berlin), for items whose venue has no coordinates and "
        "whose source names no zone. Unset: such times keep the offset the page wrote, or none.",
    )
    calendar_horizon_days: int = Field(
        default=180, ge=1, le=3660,
        description="iCalendar feeds: occurrences of their series are kept from the run's start to this many days "
        "ahead.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value.strip()


class StartRequest(BaseModel):
    """The URL and config a run starts from, validated before anything runs."""

    url: str
    config: RunConfig = Field(default_factory=RunConfig)

    @field_validator("url")
    @classmethod
    def _url_is_crawlable(cls, value: str) -> str:
        return validate_start_url(value)


class Location(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    formattedAddress: str | None = None
    street_address: str | None = None
    city: str | None = None
    state_province: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    # Coordinates the page itself gave (schema.org GeoCoordinates): data, kept as given and never geocoded over.
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class RawActivity(BaseModel):
    """An activity as extracted from a page: every field optional and untrusted."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    location: Location | None = None
    startDate: str | None = None
    endDate: str | None = None
    tags: list[str] = Field(default_factory=list)
    imageURL: str | None = None
    sourceUrl: str | None = None
    extractedBy: str | None = Field(
        default=None, description="jsonld | microdata | rdfa | microformats | ical | llm | fixture"
    )
    # What the page says around the item (issue 26), for standardization to weigh; all optional.
    itemUrl: str | None = Field(default=None, description="The item's own URL, as its markup gives it.")
    language: str | None = Field(default=None, description="The page's language (<html lang>), e.g. 'de'.")
    timezone: str | None = Field(default=None, description="IANA zone the source states (an iCalendar TZID).")
    shownStartTime: str | None = Field(default=None, description="HH:MM the page shows beside the item.")
    shownEndTime: str | None = Field(default=None, description="HH:MM of the end the page shows beside it.")


class Occurrence(BaseModel):
    """One date an activity happens on (a recurring show, a tour playing a venue twice)."""

    start_date: datetime
    end_date: datetime | None = None
    all_day: bool = Field(default=False, description="A date the page gave without a time: start_date is its midnight.")


class Activity(BaseModel):
    """A standardized activity: a name, clean fields and a stable id used to dedupe and to join enrichments."""

    id: str = Field(description="sha256 of the normalized name + formatted address (first 32 hex chars).")
    name: str
    description: str | None = None
    urgency: Urgency = "medium"
    is_public: bool = True
    location: Location
    start_date: datetime | None = None
    end_date: datetime | None = None
    timezone: str | None = Field(
        default=None, description="IANA zone of the venue (from its coordinates, the source, or the run config)."
    )
    all_day: bool = Field(default=False, description="The start is a date without a time (start_date: its midnight).")
    occurrences: list[Occurrence] = Field(
        default_factory=list,
        description="Every (start, end) of an activity found on several dates, earliest first; empty for one date.",
    )
    tags: list[str] = Field(default_factory=list)
    image_url: str | None = None
    source_url: str | None = None
    item_url: str | None = Field(
        default=None, description="The item's own URL as its markup gives it (e.g. schema.org url), absolute: the "
        "import tells the venue's own site from an aggregator by it (harvest/import_/provenance.py).",
    )
    content_hash: str = Field(description="sha256 of the fields that feed enrichment; unchanged input, same hash.")


class ImageInfo(BaseModel):
    """A processed image, stored content-addressed as WebP."""

    id: str
    source_url: str | None = None
    uri: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    etag: str | None = Field(default=None, description="The source's validators, for a conditional GET next time.")
    last_modified: str | None = None
    reused: bool = Field(default=False, description="The source answered 304: the stored WebP was reused.")


class Geocode(BaseModel):
    """What a geocoder said about one address; all empty when it failed."""

    address: str
    latitude: float | None = None
    longitude: float | None = None
    place_id: str | None = None
    formatted_address: str | None = None
    components: dict[str, str] = Field(default_factory=dict)
    error: str | None = None


class FileRef(BaseModel):
    """A reference to one stored file: the only thing that travels between steps."""

    kind: str
    uri: str
    records: int = 0
    bytes: int = 0
    sha256: str = ""
    content_type: str = "application/octet-stream"


class ImportSummary(BaseModel):
    imported: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = Field(default_factory=list)
    interrupted: str | None = Field(
        default=None,
        description="Set when a database error stopped the import part-way: the counts are what was written.",
    )


RunStatus = Literal["running", "completed", "failed", "crashed", "cancelled", "expired"]
Retention = Literal["pending", "kept", "cleaned", "cleanup_failed", "expired"]
