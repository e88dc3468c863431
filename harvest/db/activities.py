"""Import final activity records into the `activities` table: batched upserts, deduped, re-runnable.

Dedupe follows the original design: one row per normalized name + formatted address (the stable
activity id is a hash of exactly that, and `dedupe_key` keeps the readable form, unique in the database).
Importing the same run twice creates no duplicates: unchanged rows are counted as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from harvest.db.runs import transaction, utcnow
from harvest.db.schema import activities
from harvest.errors import DatabaseError
from harvest.models import ImportSummary
from harvest.extract.text import normalize_key as dedupe_text

MAX_ERRORS = 50
UPDATABLE = [c.name for c in activities.columns if c.name not in ("id", "created_at")]


def _batches(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def record_to_row(record: dict[str, Any], run_id: str, now: datetime) -> dict[str, Any]:
    """Map one final JSONL record to an `activities` row; raises ValueError/KeyError on a malformed one."""
    name = (record.get("name") or "").strip()
    if not name or not record.get("id"):
        raise ValueError("record has no name or id")
    location = record.get("location") or {}
    image = record.get("image") or {}
    address = location.get("formatted_address") or ""
    return {
        "id": record["id"],
        "dedupe_key": f"{dedupe_text(name)}|{dedupe_text(address)}",
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
        "latitude": location.get("latitude"),
        "longitude": location.get("longitude"),
        "place_id": location.get("place_id"),
        "start_date": _parse_time(record.get("start_date")),
        "end_date": _parse_time(record.get("end_date")),
        "tags": list(record.get("tags") or []),
        "embedding": record.get("embedding"),
        "image_uri": image.get("uri"),
        "image_width": image.get("width"),
        "image_height": image.get("height"),
        "source_url": record.get("source_url"),
        "content_hash": record.get("content_hash") or "",
        "run_id": run_id,
        "created_at": now,
        "updated_at": now,
    }


def _upsert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    dialect = engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(activities)
    statement = statement.on_conflict_do_update(
        index_elements=[activities.c.dedupe_key],
        set_={name: statement.excluded[name] for name in UPDATABLE},
    )
    with transaction(engine) as connection:
        connection.execute(statement, rows)


def import_activities(
    engine: Engine, records: Iterable[dict[str, Any]], *, run_id: str, batch_size: int = 500
) -> ImportSummary:
    """Upsert records in batches; return {imported, updated, skipped, failed, errors}.

    A malformed record is counted as failed with its reason and the rest go on; a database error
    fails the import (the caller keeps the run's files so it can be retried).
    """
    summary = ImportSummary()
    now = utcnow()
    for batch in _batches(records, batch_size):
        rows: dict[str, dict[str, Any]] = {}
        for record in batch:
            try:
                row = record_to_row(record, run_id, now)
            except (ValueError, KeyError, TypeError) as exc:
                summary.failed += 1
                if len(summary.errors) < MAX_ERRORS:
                    summary.errors.append(f"{record.get('id') or record.get('name') or '?'}: {exc}")
                continue
            if row["dedupe_key"] in rows:
                summary.skipped += 1  # the same activity twice in one file
            rows[row["dedupe_key"]] = row
        if not rows:
            continue
        with transaction(engine) as connection:
            existing = dict(
                connection.execute(
                    sa.select(activities.c.dedupe_key, activities.c.content_hash).where(
                        activities.c.dedupe_key.in_(list(rows))
                    )
                ).all()
            )
        to_write = []
        for key, row in rows.items():
            if key not in existing:
                summary.imported += 1
                to_write.append(row)
            elif existing[key] != row["content_hash"]:
                summary.updated += 1
                to_write.append(row)
            else:
                summary.skipped += 1
        if to_write:
            try:
                _upsert(engine, to_write)
            except DatabaseError as exc:
                raise DatabaseError(f"import into activities failed after {summary.imported + summary.updated} rows: {exc}") from exc
    return summary


def count_activities(engine: Engine) -> int:
    with transaction(engine) as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(activities)).scalar_one())
