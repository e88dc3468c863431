"""The geocode cache (`geocode_cache`): answers of earlier runs by provider and normalized address, so an
unchanged re-run makes no geocoder call."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.caches import LOOKUP_CHUNK, upsert_rows
from harvest.db.engine import transaction, utcnow
from harvest.db.schema import geocode_cache, one_of


def cached_geocodes(engine: Engine, provider: str, address_keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """address key → stored Geocode (as a dict) for the keys this provider has answered before."""
    return dict(_geocode_rows(engine, provider, address_keys, geocode_cache.c.geocode))


def answered_address_keys(engine: Engine, provider: str, address_keys: Iterable[str]) -> set[str]:
    """The keys among `address_keys` this provider has answered before (keys only: no answer is read)."""
    return {row[0] for row in _geocode_rows(engine, provider, address_keys)}


def _geocode_rows(engine: Engine, provider: str, address_keys: Iterable[str], *columns: Any) -> list[Any]:
    """(address key, *columns) of this provider's cached answers for these keys, LOOKUP_CHUNK keys a query."""
    found: list[Any] = []
    keys = list(address_keys)
    with transaction(engine) as connection:
        for start in range(0, len(keys), LOOKUP_CHUNK):
            found.extend(connection.execute(
                sa.select(geocode_cache.c.address_key, *columns).where(
                    geocode_cache.c.provider == provider,
                    one_of(geocode_cache.c.address_key, keys[start: start + LOOKUP_CHUNK], engine.dialect.name),
                )
            ))
    return found


def store_geocodes(engine: Engine, provider: str, geocodes: dict[str, dict[str, Any]]) -> None:
    """Remember settled answers: coordinates or a definite "no such address" (a transient failure is not
    cached: the next run asks again)."""
    now = utcnow()
    upsert_rows(
        engine, geocode_cache,
        [{"provider": provider, "address_key": k, "geocode": v, "created_at": now} for k, v in geocodes.items()],
        ["provider", "address_key"],
    )
