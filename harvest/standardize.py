"""RawActivity -> Activity: clean fields, parsed dates, a stable id, and one record per activity.

Everything downstream (dedupe, enrichment joins, skipping unchanged activities) keys on the id and
content hash computed here, so both are pure functions of normalized content, stable across runs.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import re
from datetime import datetime

from harvest.extract.text import absolute_http_url, clean_text, format_address, normalize_key
from harvest.models import Activity, Location, RawActivity, RunConfig

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 500
MAX_DESCRIPTION_CHARS = 20_000
MAX_FIELD_CHARS = 500
MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_WARNINGS = 100
MIN_YEAR, MAX_YEAR = 1800, 2200  # outside this a "date" is a typo or a placeholder, not an activity date

_ISO_LIKE_RE = re.compile(r"^\d{4}[-/]?\d{2}")
_TEXT_DATE_FORMATS = ("%d %B %Y", "%d %b %Y", "%B %d, %Y", "%b %d, %Y", "%B %d %Y", "%b %d %Y", "%d %B, %Y")


def parse_date(value: str | None) -> datetime | None:
    """A datetime from ISO-8601 and its common variants, or None when `value` is not a date.

    Accepted: "2024-05-01", "2024-05-01T10:00", "...Z", "...+10:00", "...+1000", fractional seconds
    (any number of digits), a space instead of "T", "2024/05/01", RFC 2822 and "1 May 2024".
    Date-only and offset-less values stay naive: the page did not say which zone it meant.
    """
    text = clean_text(value, max_chars=100)
    if not text:
        return None
    parsed: datetime | None = None
    if _ISO_LIKE_RE.match(text):
        candidate = text.upper() if "t" in text or "z" in text else text
        if "/" in candidate[:10]:
            candidate = candidate[:10].replace("/", "-") + candidate[10:]
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            parsed = None
    if parsed is None:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            parsed = None
    if parsed is None:
        for date_format in _TEXT_DATE_FORMATS:
            try:
                parsed = datetime.strptime(text, date_format)
                break
            except ValueError:
                continue
    if parsed is None or not MIN_YEAR <= parsed.year <= MAX_YEAR:
        return None
    return parsed


def activity_id(name: str, formatted_address: str | None) -> str:
    """sha256 over normalized name + "|" + normalized address, first 32 hex chars.

    Normalization is casefold, collapsed whitespace and punctuation-insensitive, so the same place
    written "Coburg Lake Reserve, Coburg North" or "coburg lake reserve coburg north" gets one id.
    """
    key = f"{normalize_key(name)}|{normalize_key(formatted_address)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def content_hash(activity: Activity) -> str:
    """sha256 of what feeds enrichment (text for embeddings, address for geocoding, the image)."""
    payload = {
        "name": activity.name,
        "description": activity.description,
        "location_name": activity.location.name,
        "address": activity.location.formattedAddress,
        "tags": activity.tags,
        "image_url": activity.image_url,
        "start_date": activity.start_date.isoformat() if activity.start_date else None,
        "end_date": activity.end_date.isoformat() if activity.end_date else None,
    }
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def normalize_tags(tags: list[str]) -> list[str]:
    """Lowercase, trimmed, markup-free, de-duplicated tags in their original order."""
    out: list[str] = []
    for tag in tags:
        cleaned = clean_text(tag, max_chars=MAX_TAG_CHARS) if isinstance(tag, str) else None
        if cleaned:
            cleaned = cleaned.lower()
            if cleaned not in out:
                out.append(cleaned)
    return out


def standardize_location(location: Location | None, activity_name: str) -> Location:
    """Clean location parts; name defaults to the activity's, formattedAddress is composed if missing."""
    location = location or Location()
    street = clean_text(location.street_address, max_chars=MAX_FIELD_CHARS)
    city = clean_text(location.city, max_chars=MAX_FIELD_CHARS)
    state = clean_text(location.state_province, max_chars=MAX_FIELD_CHARS)
    postal = clean_text(location.postal_code, max_chars=MAX_FIELD_CHARS)
    country = clean_text(location.country_code, max_chars=MAX_FIELD_CHARS)
    if country and len(country) == 2:
        country = country.upper()
    formatted = clean_text(location.formattedAddress, max_chars=MAX_FIELD_CHARS)
    return Location(
        name=clean_text(location.name, max_chars=MAX_NAME_CHARS) or activity_name,
        formattedAddress=formatted or format_address(street, city, state, postal, country),
        street_address=street,
        city=city,
        state_province=state,
        postal_code=postal,
        country_code=country,
    )


class Standardizer:
    """Standardizes the raw activities of one run, dropping duplicates by id.

    Keeps counters for the run report: `accepted`, `skipped` (reason -> count) and `warnings`
    (first MAX_WARNINGS messages, `warnings_dropped` counts the rest). Only the seen-id set grows.
    """

    def __init__(self, config: RunConfig, *, max_warnings: int = MAX_WARNINGS) -> None:
        self.config = config
        self.max_warnings = max_warnings
        self.hint_tags = normalize_tags(config.tags_hint)
        self.seen_ids: set[str] = set()
        self.accepted = 0
        self.skipped: dict[str, int] = {}
        self.warnings: list[str] = []
        self.warnings_dropped = 0

    def warn(self, message: str) -> None:
        log.warning(message)
        if len(self.warnings) < self.max_warnings:
            self.warnings.append(message)
        else:
            self.warnings_dropped += 1

    def _skip(self, reason: str, raw: RawActivity) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        log.info("skipped activity %r from %s: %s", (raw.name or "")[:80], raw.sourceUrl, reason)

    def _date(self, value: str | None, field: str, name: str) -> datetime | None:
        if value is None or not value.strip():
            return None
        parsed = parse_date(value)
        if parsed is None:
            self.warn(f"{name!r}: dropped {field} {value[:60]!r}: not a recognisable date")
        return parsed

    def standardize(self, raw: RawActivity) -> Activity | None:
        """The clean Activity for `raw`, or None when it has no name or its id was already seen."""
        name = clean_text(raw.name, max_chars=MAX_NAME_CHARS)
        if not name:
            self._skip("missing name", raw)
            return None
        location = standardize_location(raw.location, name)
        identifier = activity_id(name, location.formattedAddress)
        if identifier in self.seen_ids:
            self._skip("duplicate", raw)
            return None

        start = self._date(raw.startDate, "startDate", name)
        end = self._date(raw.endDate, "endDate", name)
        if start and end:
            try:
                backwards = end < start
            except TypeError:  # one has an offset, the other not: not comparable, keep both
                backwards = False
            if backwards:
                self.warn(f"{name!r}: dropped endDate {raw.endDate!r}: before startDate {raw.startDate!r}")
                end = None

        image_url = absolute_http_url(raw.imageURL, raw.sourceUrl)
        if raw.imageURL and raw.imageURL.strip() and image_url is None:
            self.warn(f"{name!r}: dropped imageURL {raw.imageURL[:100]!r}: not an http(s) URL")

        tags = normalize_tags(raw.tags)[:MAX_TAGS]
        tags += [tag for tag in self.hint_tags if tag not in tags]

        activity = Activity(
            id=identifier,
            name=name,
            description=clean_text(raw.description, max_chars=MAX_DESCRIPTION_CHARS),
            urgency=self.config.urgency_default,
            is_public=True,
            location=location,
            start_date=start,
            end_date=end,
            tags=tags,
            image_url=image_url,
            source_url=clean_text(raw.sourceUrl, max_chars=4_000),
            content_hash="",
        )
        activity.content_hash = content_hash(activity)
        self.seen_ids.add(identifier)
        self.accepted += 1
        return activity

    def report(self) -> dict[str, object]:
        """Counters for the run summary."""
        return {
            "accepted": self.accepted,
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
            "warnings_dropped": self.warnings_dropped,
        }
