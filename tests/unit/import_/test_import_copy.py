"""The Postgres COPY import gives the same rows and the same counts as the portable upsert path."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import activities
from harvest.errors import DatabaseError
from harvest.import_.activities import import_activities
from harvest.import_.copy import COLUMNS


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


# --- psycopg's COPY stores exactly what the portable path stores, column for column -----------------------

MELBOURNE = "Australia/Melbourne"  # a session time zone that is not UTC, with DST: naive datetimes take it
NAN, INF = float("nan"), float("inf")


def varied(n: int, **changes: object) -> dict:
    """Records that exercise every column type's edge: offsets, naive times, NULLs, non-ASCII, JSONB, NaN."""
    return record(n, **changes)


EDGE_RECORDS = [
    varied(1),  # +10:00 start, a date-only (naive) end
    varied(2, start_date="2024-01-01T00:00:00-05:30", end_date="2024-03-10T12:00:00Z"),
    varied(3, start_date="2024-04-07T02:30:00", end_date="2024-10-06T02:30:00"),  # naive, on Melbourne's DST changes
    varied(4, start_date="2024-02-29T12:34:56.789012+00:00", end_date="1900-01-01T00:00:00"),
    varied(5, start_date="0001-01-01T00:00:00+00:00", end_date="9999-12-31T23:59:59.999999+14:00"),
    varied(6, name="Café ünïcode ✓ 日本語 🎠", description="tab\tnewline\nbackslash\\ quote\" NUL-free \u00a0",
           tags=["ü", 'quo"te', "back\\slash", {"k": [1, 2.5, None, True, "日本"]}, []]),
    varied(7, tags=[], embedding=[]),  # empty JSONB array and an empty real[]
    varied(8, embedding=None, image=None, location=None, start_date=None, end_date=None, description=None,
           source_url=None, tags=None),  # every nullable column NULL
    varied(9, location={"formatted_address": "9 NaN St", "latitude": NAN, "longitude": -INF, "place_id": "p9"},
           embedding=[NAN, INF, -INF, -0.0, 0.1, 3.4e38, 1e-38, -1.5e-5]),  # NaN and infinities stored as today
    varied(10, location={"formatted_address": "10 Int Rd", "latitude": -37, "longitude": 145}, is_public=0,
           image={"uri": "s3://b/i.webp", "width": 2.0, "height": 2**31 - 1}, urgency=None),  # ints, a float int
    varied(11, embedding=[float(i) / 7 for i in range(1536)]),  # a full-size vector
]


def every_column(engine: sa.Engine) -> dict[str, tuple[str, dict[str, str]]]:
    """Each row as Postgres prints it (ROW(...)::text, in the session's time zone) and as psycopg reads it back
    with SELECT * (repr per column, so NaN equals NaN); only the two write timestamps are left out."""
    compared = [c for c in COLUMNS if c not in ("created_at", "updated_at")]
    with engine.begin() as connection:
        printed = dict(connection.exec_driver_sql(
            f"SELECT dedupe_key, ROW({', '.join(compared)})::text FROM activities").all())
        rows = connection.execute(sa.select(activities)).mappings().all()
    return {row["dedupe_key"]: (printed[row["dedupe_key"]], {c: repr(row[c]) for c in compared}) for row in rows}


def test_copy_stores_every_column_exactly_as_the_upsert_path(clean_db: str) -> None:
    """The portable path (SQLAlchemy + psycopg parameters, no COPY code) is the reference; both run in a
    non-UTC session so a naive datetime is read in that zone by Postgres and by the COPY's converter alike."""
    url = sa.make_url(clean_db).update_query_dict({"options": f"-c TimeZone={MELBOURNE}"})
    engine = get_engine(url.render_as_string(hide_password=False))
    from harvest.db import runs

    runs.create_run(engine, "edge", "http://site/", {})  # one run_started_at for both imports
    tables = {}
    for method in ("upsert", "copy"):
        with engine.begin() as connection:
            connection.execute(activities.delete())
        summary = import_activities(engine, EDGE_RECORDS, run_id="edge", method=method)
        assert counts(summary) == (len(EDGE_RECORDS), 0, 0, 0, 0), summary.errors
        tables[method] = every_column(engine)
    assert tables["copy"].keys() == tables["upsert"].keys()
    for key, (printed, columns) in tables["upsert"].items():
        assert tables["copy"][key][0] == printed, key
        assert tables["copy"][key][1] == columns, key
    # the zone really applied, as Postgres applies it: an ambiguous 02:30 (clocks go back at 03:00) is the later
    # instant, +10:00; a 02:30 that does not exist (clocks go forward at 02:00) takes the offset before, 03:30+11
    printed = next(printed for printed, columns in tables["copy"].values() if columns["id"] == "'id-3'")
    assert '"2024-04-07 02:30:00+10","2024-10-06 03:30:00+11"' in printed


def test_a_row_that_cannot_be_dumped_fails_alone_and_the_batch_is_imported(clean_db: str) -> None:
    """Bad values at the start, middle and end of one COPY batch: each is a counted failure with its reason,
    and every other row of the batch is stored whole (no half row reaches the COPY stream)."""
    engine = get_engine(clean_db)
    good = [record(n) for n in range(300)]
    bad = {
        0: record(9100, image={"uri": "u", "width": 2**40, "height": 1}),  # out of int4's range
        150: record(9101, tags=[{1, 2}]),  # JSON cannot dump a set
        151: record(9102, description=12345),  # not text
        301: record(9103, embedding=[0.5, "x"]),  # not numbers
        302: record(9104, location={"formatted_address": "x", "latitude": "north"}),  # not a float
    }
    batch = list(good)
    for position, bad_record in sorted(bad.items()):
        batch.insert(position, bad_record)
    summary = import_activities(engine, batch, run_id="r", method="copy", batch_size=500)
    assert (summary.imported, summary.failed, len(summary.errors)) == (300, 5, 5), summary.errors
    assert all(error.startswith(("id-91", "Playground 91")) for error in summary.errors), summary.errors
    reference = get_engine(clean_db)
    stored = table(reference)
    assert sorted(row["id"] for row in stored.values()) == sorted(f"id-{n}" for n in range(300))
    row = next(row for row in stored.values() if row["id"] == "id-299")
    assert row["tags"] == ["park", "swings"] and row["embedding"] == pytest.approx([0.5, -0.25, 2.99e-5])


def test_a_key_another_import_stores_during_the_copy_goes_through_the_policy(clean_db: str) -> None:
    """New keys are COPYed straight into the table. When another transaction stores one of them after the lookup
    (uncommitted then, so the lookup cannot see it), the unique index refuses the COPY; the batch is then written
    by the upsert with the policy: that key updated, every other row inserted, none lost or doubled."""
    import threading
    import time
    from datetime import UTC, datetime

    from harvest.import_.rows import record_to_row

    engine = get_engine(clean_db)
    early = datetime(2020, 1, 1, tzinfo=UTC)
    other = engine.connect()
    other_transaction = other.begin()
    other.execute(activities.insert().values(record_to_row(record(7, content_hash="older"), "other", early)))
    results: list[object] = []
    importer = threading.Thread(
        target=lambda: results.append(import_activities(engine, [record(n) for n in range(10)], run_id="r", method="copy"))
    )
    importer.start()
    try:
        deadline = time.monotonic() + 20
        waiting = 0
        while not waiting and time.monotonic() < deadline:  # the COPY waits for the other transaction's key
            with engine.begin() as connection:
                waiting = connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).scalar_one()
            time.sleep(0.05)
        assert waiting, "the import never waited for the other transaction's key"
    finally:
        other_transaction.commit()
        other.close()
        importer.join(30)
    summary = results[0]
    assert counts(summary) == (9, 1, 0, 0, 0), summary
    stored = table(engine)
    assert sorted(row["id"] for row in stored.values()) == sorted(f"id-{n}" for n in range(10))
    assert next(row for row in stored.values() if row["id"] == "id-7")["content_hash"] == "h7"
