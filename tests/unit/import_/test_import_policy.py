"""Scenarios 2 and 3 of issue 17: the upsert policy for enrichment columns and run recency, on both import
paths (Postgres COPY, the portable upsert on Postgres and on SQLite)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from harvest.db import runs
from harvest.db.engine import get_engine, utcnow
from harvest.db.schema import activities, scrape_runs
from harvest.enrich.embeddings.vectors import parse_final_line
from harvest.import_.activities import import_activities
from tests.helpers import database_url

T0 = utcnow() - timedelta(days=3)


@pytest.fixture(params=["postgres-copy", "postgres-upsert", "sqlite-upsert"])
def target(request, tmp_path):  # noqa: ANN001, ANN201
    kind, method = request.param.split("-")
    return get_engine(database_url(request, tmp_path, kind)), method


def make_run(engine, run_id: str, hours: int) -> str:  # noqa: ANN001
    """A run row that started `hours` after T0 (its rows' recency)."""
    runs.create_run(engine, run_id, f"http://site/{run_id}", {})
    runs.finish_run(engine, run_id, "completed")
    with engine.begin() as connection:
        connection.execute(
            scrape_runs.update().where(scrape_runs.c.id == run_id).values(started_at=T0 + timedelta(hours=hours))
        )
    return run_id


def record(content: str, *, image: str | None = None, lat: float | None = None, vector: list[float] | None = None):  # noqa: ANN201
    import orjson

    line = {
        "id": "a1", "name": "Playground", "description": content, "urgency": "medium", "is_public": True,
        "location": {"formatted_address": "1 Main Rd, Eltham", "latitude": lat, "longitude": lat and lat + 100,
                     "place_id": lat and f"p{lat}"},
        "tags": [], "embedding": vector, "content_hash": f"h-{content}",
        "image": {"uri": image, "width": 10, "height": 5} if image else None, "source_url": "http://site/a",
    }
    return parse_final_line(orjson.dumps(line))  # as the import reads a final line: the vector unparsed


def stored(engine):  # noqa: ANN001, ANN201
    with engine.begin() as connection:
        return dict(connection.execute(sa.select(activities)).mappings().one())


def load(engine, method, run_id, rec):  # noqa: ANN001, ANN201
    return import_activities(engine, [rec], run_id=run_id, method=method).model_dump(exclude={"errors", "interrupted"})


def test_failed_enrichment_never_erases_and_better_enrichment_is_written(target) -> None:  # noqa: ANN001
    engine, method = target
    first, changed, improved, worse = (make_run(engine, f"r{n}", n) for n in range(4))
    load(engine, method, first, record("v1", image="s3://b/images/x.webp", lat=-37.5, vector=[0.5, 0.25]))

    # Content changed, but this run's image, geocode and embedding steps failed: the new content is written,
    # the stored enrichment stays (and so its image stays referenced).
    assert load(engine, method, changed, record("v2")) == {"imported": 0, "updated": 1, "skipped": 0, "failed": 0}
    row = stored(engine)
    assert row["description"] == "v2" and row["run_id"] == changed
    assert (row["image_uri"], row["image_width"], row["latitude"], row["place_id"]) == (
        "s3://b/images/x.webp", 10, -37.5, "p-37.5")
    assert [round(v, 3) for v in row["embedding"]] == [0.5, 0.25]

    # Content unchanged, enrichment improved (a new image, a new embedding model): written, not skipped.
    better = record("v2", image="s3://b/images/y.webp", lat=-37.5, vector=[0.75, 0.125])
    assert load(engine, method, improved, better) == {"imported": 0, "updated": 1, "skipped": 0, "failed": 0}
    row = stored(engine)
    assert row["image_uri"] == "s3://b/images/y.webp" and [round(v, 3) for v in row["embedding"]] == [0.75, 0.125]

    # Content unchanged, enrichment failed this time: nothing to write.
    assert load(engine, method, worse, record("v2")) == {"imported": 0, "updated": 0, "skipped": 1, "failed": 0}
    assert stored(engine)["image_uri"] == "s3://b/images/y.webp"


def test_an_older_run_never_overwrites_a_newer_one(target) -> None:  # noqa: ANN001
    engine, method = target
    older, newer = make_run(engine, "old", 1), make_run(engine, "new", 2)
    load(engine, method, newer, record("new content", image="s3://b/images/new.webp", lat=1.0, vector=[1.0]))
    # The older kept run is imported after the newer one (a late `runs import`, or a resumed run).
    stale = record("old content", image="s3://b/images/old.webp", lat=2.0, vector=[2.0])
    assert load(engine, method, older, stale) == {"imported": 0, "updated": 0, "skipped": 1, "failed": 0}
    row = stored(engine)
    assert (row["description"], row["run_id"], row["image_uri"], row["latitude"]) == (
        "new content", newer, "s3://b/images/new.webp", 1.0)
    # A run that started later still writes.
    later = make_run(engine, "later", 3)
    assert load(engine, method, later, record("later content"))["updated"] == 1
    assert stored(engine)["description"] == "later content"


def test_every_dated_occurrence_reaches_the_table(target) -> None:  # noqa: ANN001
    """An activity found on several dates keeps them all in its row, not only the earliest (issue 11)."""
    import orjson

    engine, method = target
    run_id = make_run(engine, "r-dates", 1)
    occurrences = [["2024-06-01T10:00:00+10:00", "2024-06-01T12:00:00+10:00"], ["2024-06-08T10:00:00+10:00", None]]
    line = {
        "id": "a1", "name": "Puppet show", "location": {"formatted_address": "1 Main Rd, Eltham"},
        "start_date": occurrences[0][0], "end_date": occurrences[0][1], "occurrences": occurrences,
        "tags": [], "content_hash": "h-dates",
    }
    load(engine, method, run_id, parse_final_line(orjson.dumps(line)))
    row = stored(engine)
    assert row["occurrences"] == occurrences
    assert row["start_date"].isoformat().startswith("2024-06-01")

    single = {**line, "id": "a2", "name": "Story time", "content_hash": "h-single"}
    del single["occurrences"]
    load(engine, method, run_id, parse_final_line(orjson.dumps(single)))
    with engine.begin() as connection:
        kept = connection.execute(sa.select(activities.c.occurrences).where(activities.c.id == "a2")).scalar_one()
    assert kept == []
