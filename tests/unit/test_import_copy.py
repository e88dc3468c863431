"""The Postgres COPY import gives the same rows and the same counts as the portable upsert path."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from harvest.db.activities import COLUMNS, import_activities
from harvest.db.engine import get_engine
from harvest.db.schema import activities
from harvest.errors import DatabaseError


def record(n: int, **changes: object) -> dict:
    base = {
        "id": f"id-{n}", "name": f"Playground {n}", "description": "Swings ünïcode\ttab", "urgency": "medium",
        "is_public": n % 2 == 0,
        "location": {"name": f"Park {n}", "formatted_address": f"{n} Main Rd, Eltham VIC 3095, Australia",
                     "latitude": -37.7 + n / 1000, "longitude": 145.1, "place_id": f"p{n}", "city": "Eltham"},
        "start_date": "2024-05-01T10:00:00+10:00", "end_date": "2024-06-01", "tags": ["park", "swings"],
        "embedding": [0.5, -0.25, 1e-7 * n], "image": {"uri": "s3://b/images/x.webp", "width": 10, "height": 5},
        "source_url": "http://site/a", "content_hash": f"h{n}",
    }
    base.update(changes)
    return base


def table(engine: sa.Engine) -> dict[str, dict]:
    """Every row by dedupe key, without the write timestamps (they differ between two imports)."""
    with engine.begin() as connection:
        rows = connection.execute(sa.select(activities)).mappings().all()
    return {row["dedupe_key"]: {k: v for k, v in row.items() if k not in ("created_at", "updated_at", "run_started_at")} for row in rows}


def counts(summary) -> tuple:  # noqa: ANN001
    return summary.imported, summary.updated, summary.skipped, summary.failed, len(summary.errors)


SCENARIO = [
    # a first import with a duplicate inside the file, a malformed record and an awkward one
    [record(n) for n in range(2500)] + [record(5, description="second copy")]
    + [record(9000, name=""), {"nothing": True}, record(9002, start_date="bad")]
    + [record(9003, embedding=None, image=None, tags=[], location=None, start_date=None, end_date=None)],
    # the same again: all skipped
    [record(n) for n in range(2500)],
    # one changed, one new, one the same, one same key spelled differently with a new hash
    [record(1, content_hash="new", description="New swings"), record(7000), record(2),
     record(3, id="id-other", name="  PLAYGROUND   3 ", content_hash="other")],
]


def test_copy_import_matches_the_upsert_path(clean_db: str, tmp_path) -> None:  # noqa: ANN001
    engine = get_engine(clean_db)
    results: dict[str, tuple[list[tuple], dict]] = {}
    for method in ("upsert", "copy"):
        with engine.begin() as connection:
            connection.execute(activities.delete())
        summaries = [counts(import_activities(engine, batch, run_id=f"r{i}", method=method)) for i, batch in enumerate(SCENARIO)]
        results[method] = (summaries, table(engine))
    assert results["copy"][0] == results["upsert"][0]
    assert results["copy"][0][0] == (2501, 0, 1, 3, 3)
    assert results["copy"][0][1] == (0, 0, 2500, 0, 0)
    assert results["copy"][0][2] == (1, 2, 1, 0, 0)
    assert results["copy"][1] == results["upsert"][1]
    row = next(row for row in results["copy"][1].values() if row["id"] == "id-5")
    # the second copy of activity 5 comes in a later batch with the same content hash: unchanged, not written
    assert row["description"] == "Swings ünïcode\ttab" and row["embedding"] == pytest.approx([0.5, -0.25, 5e-7])


def test_copy_import_uses_batches_and_reports_database_errors(clean_db: str) -> None:
    engine = get_engine(clean_db)
    summary = import_activities(engine, [record(n) for n in range(4500)], run_id="r", method="copy", batch_size=2000)
    assert (summary.imported, summary.skipped) == (4500, 0)
    # an over-long varchar fails in the database, not in Python: the import fails with the cause
    with pytest.raises(DatabaseError, match="StringDataRightTruncation|too long"):
        import_activities(engine, [record(1, content_hash="x" * 100)], run_id="r", method="copy")
    assert set(COLUMNS) == {c.name for c in activities.columns}


def test_copy_import_counts_a_malformed_vector_as_failed(clean_db: str) -> None:
    """The portable path sends such a vector to the database and fails the whole import; COPY encodes rows
    in Python first, so the bad record is one failure and the rest are imported."""
    engine = get_engine(clean_db)
    bad = [record(1, embedding=["x"]), record(2, embedding=[[1.0], [2.0]]), record(3, embedding="0.5"),
           record(4, image={"uri": "u", "width": 1.5, "height": 2})]
    summary = import_activities(engine, bad + [record(5)], run_id="r", method="copy")
    assert (summary.imported, summary.failed, len(summary.errors)) == (1, 4, 4)
