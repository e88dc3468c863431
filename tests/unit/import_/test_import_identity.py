"""Issue 27 item 1: the import's key is the activity's identity. Two same-named activities at two places the page
locates only by coordinates have two ids (the standardizer keeps them apart), so they are two rows: in one batch
and across runs, on the COPY path and the portable path, on Postgres and SQLite; and rows stored under the old
key (name + address) are re-keyed by migration 0015 so that a re-import updates them instead of colliding."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from harvest.db import runs
from harvest.db.engine import get_engine, upgrade, utcnow
from harvest.db.schema import activities, scrape_runs
from harvest.import_.activities import import_activities
from harvest.models import Location
from harvest.standardize.standardizer import activity_id, place_key
from tests.helpers import database_url

PLACE_A = (-37.81361, 144.96306)
PLACE_B = (-37.84012, 145.00123)


@pytest.fixture(params=["postgres-copy", "postgres-upsert", "sqlite-upsert"])
def target(request, tmp_path):  # noqa: ANN001, ANN201
    kind, method = request.param.split("-")
    return get_engine(database_url(request, tmp_path, kind)), method


def final(name: str, place: tuple[float, float] | None, content: str = "v1", address: str | None = None) -> dict:
    """A final record as the flow writes it, with the id the standardizer gives it (name + its place)."""
    latitude, longitude = place or (None, None)
    location = Location(formattedAddress=address, latitude=latitude, longitude=longitude)
    return {
        "id": activity_id(name, place_key(location)), "name": name, "description": content, "urgency": "medium",
        "is_public": True,
        "location": {"formatted_address": address, "latitude": latitude, "longitude": longitude,
                     "coordinates_source": "page" if place else None},
        "tags": [], "content_hash": f"{name}-{place}-{content}", "source_url": "http://site/a",
    }


def make_run(engine, run_id: str, hours: int) -> str:  # noqa: ANN001
    runs.create_run(engine, run_id, f"http://site/{run_id}", {})
    runs.finish_run(engine, run_id, "completed")
    with engine.begin() as connection:
        connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id)
                           .values(started_at=utcnow() - timedelta(days=1) + timedelta(hours=hours)))
    return run_id


def load(engine, method, run_id, records) -> dict:  # noqa: ANN001
    return import_activities(engine, records, run_id=run_id, method=method).model_dump(
        exclude={"errors", "interrupted"})


def places(engine) -> dict[str, tuple[float, float, str]]:  # noqa: ANN001
    with engine.begin() as connection:
        rows = connection.execute(sa.select(activities.c.id, activities.c.latitude, activities.c.longitude,
                                            activities.c.description)).all()
    return {row.id: (row.latitude, row.longitude, row.description) for row in rows}


def test_two_coordinate_only_places_are_two_rows_in_one_batch(target) -> None:  # noqa: ANN001
    engine, method = target
    a, b = final("Nature Walk", PLACE_A), final("Nature Walk", PLACE_B)
    assert a["id"] != b["id"], "the standardizer keeps them apart"
    assert load(engine, method, make_run(engine, "r1", 1), [a, b]) == {
        "imported": 2, "updated": 0, "skipped": 0, "failed": 0}
    assert places(engine) == {a["id"]: (*PLACE_A, "v1"), b["id"]: (*PLACE_B, "v1")}
    # Importing the same file again adds nothing and changes nothing.
    assert load(engine, method, make_run(engine, "r2", 2), [a, b]) == {
        "imported": 0, "updated": 0, "skipped": 2, "failed": 0}


def test_a_later_run_with_the_other_place_never_overwrites_the_first(target) -> None:  # noqa: ANN001
    engine, method = target
    a, b = final("Nature Walk", PLACE_A), final("Nature Walk", PLACE_B)
    load(engine, method, make_run(engine, "r1", 1), [a])
    assert load(engine, method, make_run(engine, "r2", 2), [b]) == {
        "imported": 1, "updated": 0, "skipped": 0, "failed": 0}
    assert places(engine) == {a["id"]: (*PLACE_A, "v1"), b["id"]: (*PLACE_B, "v1")}, "place A is still there"
    # Each place's own change updates its own row.
    assert load(engine, method, make_run(engine, "r3", 3), [final("Nature Walk", PLACE_A, "v2")]) == {
        "imported": 0, "updated": 1, "skipped": 0, "failed": 0}
    assert places(engine)[a["id"]] == (*PLACE_A, "v2") and places(engine)[b["id"]] == (*PLACE_B, "v1")


def test_migration_0015_rekeys_stored_rows_so_a_reimport_updates_them(fresh_url) -> None:  # noqa: ANN001
    """Rows the old import stored (key: name + address): an addressed row, a coordinate-only row, and a row that
    holds place B's content under place A's id (the overwrite this issue is about). After the migration, a
    re-import of everything adds the lost place, updates nothing twice and collides with nothing."""
    upgrade(fresh_url, "0014")
    engine = get_engine(fresh_url)
    addressed = final("Playground", None, address="1 Main Rd, Eltham")
    walk_a, walk_b = final("Nature Walk", PLACE_A), final("Nature Walk", PLACE_B)
    splash = final("Splash Pad", PLACE_A)
    now = utcnow() - timedelta(days=2)
    runs.create_run(engine, "old", "http://site/old", {})
    with engine.begin() as connection:
        connection.execute(scrape_runs.update().values(started_at=now))

        def stored(record: dict, key: str, holding: dict) -> dict:
            location = holding["location"]
            return {"id": record["id"], "dedupe_key": key, "name": holding["name"], "description": "v1",
                    "urgency": "medium", "is_public": True, "formatted_address": location["formatted_address"],
                    "latitude": location["latitude"], "longitude": location["longitude"], "tags": [],
                    "occurrences": [], "all_day": False, "content_hash": holding["content_hash"], "run_id": "old",
                    "run_started_at": now, "created_at": now, "updated_at": now}

        connection.execute(activities.insert(), [  # 0015 adds no column: the declared table is 0014's
            stored(addressed, "playground|1 main rd eltham", addressed),
            stored(splash, "splash pad|", splash),
            stored(walk_a, "nature walk|", walk_b),  # place B's content under place A's id
        ])

    upgrade(fresh_url)
    assert load(engine, "upsert" if fresh_url.startswith("sqlite") else "copy", make_run(engine, "new", 1),
                [addressed, splash, walk_a, walk_b]) == {"imported": 1, "updated": 0, "skipped": 3, "failed": 0}
    assert places(engine) == {
        addressed["id"]: (None, None, "v1"), splash["id"]: (*PLACE_A, "v1"),
        walk_a["id"]: (*PLACE_A, "v1"), walk_b["id"]: (*PLACE_B, "v1"),
    }
