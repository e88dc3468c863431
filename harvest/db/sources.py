"""The `sources` table: the sites harvest keeps fresh, their run config and their health.

When and whether a source runs is not here: it is a schedule of the scrape deployment in Prefect (its slug is
`schedule_slug`), which the UI shows and pauses; this table says what the source is and how it is doing. A source's
runs are the `scrape_runs` rows of its URL (the URL as the flow validates it, so both spell it the same).
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.engine import transaction, utcnow
from harvest.db.schema import sources
from harvest.errors import SourceError

OK = "ok"
DEGRADED = "degraded"


def schedule_slug(url: str) -> str:
    """The Prefect schedule slug of the source of `url`: stable (re-adding a removed source gets the same one) and
    in Prefect's slug alphabet."""
    return f"harvest-source-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def add_source(engine: Engine, url: str, config: dict[str, Any], deployment: str) -> dict[str, Any]:
    """Record a new source; a URL that is a source already is a SourceError naming its id."""
    with transaction(engine) as connection:
        existing = connection.execute(sa.select(sources.c.id).where(sources.c.url == url)).scalar()
        if existing is not None:
            raise SourceError(f"{url} is already source {existing} (`harvest sources show {existing}`)")
        connection.execute(sources.insert().values(
            url=url, config=config, deployment=deployment, schedule_slug=schedule_slug(url), created_at=utcnow(),
        ))
    source = source_for_url(engine, url)
    assert source is not None
    return source


def get_source(engine: Engine, source_id: int | str) -> dict[str, Any]:
    """The source with `source_id`; an id that is no source is a SourceError."""
    try:
        number = int(source_id)
    except (TypeError, ValueError):
        raise SourceError(f"{source_id!r} is not a source id (a number: `harvest sources list`)") from None
    with transaction(engine) as connection:
        row = connection.execute(sa.select(sources).where(sources.c.id == number)).mappings().first()
    if row is None:
        raise SourceError(f"no source {number} (`harvest sources list` shows them)")
    return dict(row)


def source_for_url(engine: Engine, url: str) -> dict[str, Any] | None:
    with transaction(engine) as connection:
        row = connection.execute(sa.select(sources).where(sources.c.url == url)).mappings().first()
    return dict(row) if row is not None else None


def list_sources(engine: Engine) -> list[dict[str, Any]]:
    with transaction(engine) as connection:
        return [dict(row) for row in connection.execute(sa.select(sources).order_by(sources.c.id)).mappings()]


def remove_source(engine: Engine, source_id: int) -> None:
    with transaction(engine) as connection:
        connection.execute(sources.delete().where(sources.c.id == source_id))


def set_health(engine: Engine, source_id: int, health: str, reason: str | None, run_id: str | None) -> None:
    with transaction(engine) as connection:
        connection.execute(sources.update().where(sources.c.id == source_id).values(
            health=health, health_reason=reason, health_run_id=run_id, health_changed_at=utcnow()))


def degraded_urls() -> sa.Select[tuple[str]]:
    """The URLs of degraded sources, as a subquery: the sweep keeps their runs' files (a site that broke must not
    lose the last good run's records while someone looks)."""
    return sa.select(sources.c.url).where(sources.c.health == DEGRADED)
