"""The image cache (`image_cache`): processed images by source URL, so an unchanged image is revalidated with a
conditional GET instead of downloaded again."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.caches import LOOKUP_CHUNK, upsert_rows
from harvest.db.engine import transaction, utcnow
from harvest.db.schema import image_cache, one_of


def cached_images(engine: Engine, source_urls: Iterable[str]) -> dict[str, dict[str, Any]]:
    """source URL → what an earlier run stored for it (uri, size, sha256, the source's validators).

    The rows found are claimed: their `checked_at` is set to now in the same transaction. A reused image is
    never rewritten, so its object's age says nothing about a run about to point at it; the sweep instead
    leaves alone every image whose cache row was checked within its grace period (harvest.retention.policy).
    """
    found: dict[str, dict[str, Any]] = {}
    urls = list(source_urls)
    now = utcnow()
    with transaction(engine) as connection:
        for start in range(0, len(urls), LOOKUP_CHUNK):
            batch = urls[start: start + LOOKUP_CHUNK]
            rows = connection.execute(
                sa.select(image_cache).where(one_of(image_cache.c.source_url, batch, engine.dialect.name))
            ).mappings()
            found.update({row["source_url"]: dict(row) for row in rows})
            connection.execute(
                image_cache.update().where(one_of(image_cache.c.source_url, batch, engine.dialect.name))
                .values(checked_at=now)
            )
    return found


def store_images(engine: Engine, entries: list[dict[str, Any]]) -> None:
    """Remember processed images by source URL (the last answer wins)."""
    now = utcnow()
    upsert_rows(engine, image_cache, [{**entry, "checked_at": now} for entry in entries], ["source_url"])
