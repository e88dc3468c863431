"""One final JSONL record as an `activities` row: the content columns here, each enrichment's columns from the
enrichment itself (`Enrichment.row`), so a new enrichment needs no edit here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from harvest.enrich.base import Enrichment
from harvest.enrich.registry import enrichments as registered
from harvest.standardize.standardizer import coordinates_place, identity_key


def record_to_row(
    record: dict[str, Any], run_id: str, now: datetime, run_started_at: datetime | None = None,
    enrichments: Iterable[Enrichment] | None = None, source: str | None = None,
) -> dict[str, Any]:
    """Map one final JSONL record to an `activities` row; raises ValueError/KeyError on a malformed one.
    `enrichments`: whose columns the row carries (default: the registry's); `source`: the run's start URL (the
    source whose claim the row is, harvest/import_/provenance.py), None for a record of no known run."""
    name = (record.get("name") or "").strip()
    if not name or not record.get("id"):
        raise ValueError("record has no name or id")
    location = record.get("location") or {}
    address = location.get("formatted_address") or ""
    row = {
        "id": record["id"],
        "dedupe_key": identity_key(name, address or _page_coordinates(location)),
        "name": name,
        "description": record.get("description"),
        "urgency": record.get("urgency") or "medium",
        "is_public": bool(record.get("is_public", True)),
        "location_name": location.get("name"),
        "formatted_address": address or None,
        "street_address": location.get("street_address"),
        "city": location.get("city"),
        "state_province": location.get("state_province"),
        "postal_code": location.get("postal_code"),
        "country_code": location.get("country_code"),
        "start_date": _parse_time(record.get("start_date")),
        "end_date": _parse_time(record.get("end_date")),
        "timezone": record.get("timezone"),
        "all_day": bool(record.get("all_day", False)),
        "occurrences": [_occurrence(value) for value in record.get("occurrences") or []],
        "tags": list(record.get("tags") or []),
        "source_url": record.get("source_url"),
        "content_hash": record.get("content_hash") or "",
        "run_id": run_id,
        "run_started_at": run_started_at or now,
        "created_at": now,
        "updated_at": now,
        "source": source,
    }
    for enrichment in registered() if enrichments is None else enrichments:
        row.update(enrichment.row(record))
    return row


def _page_coordinates(location: dict[str, Any]) -> str | None:
    """The place of an activity without an address, as its id saw it: the page's coordinates. A geocoder's
    coordinates never name a place (they come from an address, which then is the place)."""
    latitude, longitude = location.get("latitude"), location.get("longitude")
    if latitude is None or longitude is None or location.get("coordinates_source") not in (None, "page"):
        return None
    return coordinates_place(float(latitude), float(longitude))


def _occurrence(value: Any) -> list[Any]:
    """[start, end] of one occurrence (and true when all-day): final records write each as an object, older
    ones as a pair."""
    if isinstance(value, dict):
        pair = [value.get("start_date"), value.get("end_date")]
        return [*pair, True] if value.get("all_day") else pair
    return list(value)


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
