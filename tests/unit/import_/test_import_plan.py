"""The import's policy index (final_index.jsonl, written with final.jsonl): an import reads only the final lines
the upsert policy may write. An unchanged re-import must not read final.jsonl at all, and any import must end
with the same table and the same counts as one that reads every line."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import sqlalchemy as sa

from harvest.db import runs
from harvest.db.schema import activities
from harvest.enrich.embeddings.matrix import EmbeddingMatrix
from harvest.import_.stage import import_final_records
from harvest.merge.final import write_final_records
from harvest.storage import iter_jsonl, store_local_file, write_jsonl

DATABASES = ["postgres", "sqlite"]


class CountingReads:
    """The store, counting every key opened for reading (the boundary: the import's own logic is untouched)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.opened: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def open_read(self, key: str) -> IO[bytes]:
        self.opened.append(key)
        return self.store.open_read(key)


def _activity(number: int, description: str = "Swings") -> dict[str, Any]:
    return {
        "id": f"a{number}", "name": f"Playground {number}", "description": description,
        "location": {"formattedAddress": f"{number} Main Rd, Eltham", "city": "Eltham", "country_code": "AU"},
        "tags": ["playground"], "source_url": f"https://site.example/{number}",
        "content_hash": f"h{number}-{description}",
    }


def write_run(engine: Any, store: Any, tmp_path: Path, run_id: str, activities_: list[dict[str, Any]],
              geocoded: frozenset[int] = frozenset()) -> Any:
    """A completed run's final.jsonl (+ digest and policy index) through the real writer; vectors for all."""
    runs.create_run(engine, run_id, "https://site.example/", {})
    runs.finish_run(engine, run_id, "completed")  # one running run per URL: each run here is over
    vectors = (np.random.default_rng(3).standard_normal((len(activities_), 8)) * 0.05).astype(np.float32)
    with EmbeddingMatrix(tmp_path / f"{run_id}.npy", len(activities_), 8) as matrix:
        for row in range(len(activities_)):
            matrix.write(row, vectors[row])
    embeddings = store_local_file(store, f"runs/{run_id}/embeddings.npy", "embeddings", tmp_path / f"{run_id}.npy",
                                  records=len(activities_), content_type="application/x-npy")
    merged = write_jsonl(store, f"runs/{run_id}/merged.jsonl", "merged", [
        {"activity": activity, "image": None, "embedding_row": row,
         "geocode": {"latitude": -37.7, "longitude": 145.1, "source": "geocoder"} if row in geocoded else None}
        for row, activity in enumerate(activities_)
    ])
    result = write_final_records(store, run_id, merged, embeddings)
    for ref in result.files:
        runs.record_file(engine, run_id, ref)
    return result.file("final_jsonl")


def table(engine: Any) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        rows = connection.execute(sa.select(activities).order_by(activities.c.id)).mappings().all()
    return [{k: v for k, v in row.items() if k not in ("created_at", "updated_at")} for row in rows]


def test_an_unchanged_reimport_reads_no_line_of_final_jsonl(engine, store, tmp_path: Path) -> None:  # noqa: ANN001
    items = [_activity(n) for n in range(30)]
    first = write_run(engine, store, tmp_path, "run-1", items)
    _, summary = import_final_records(store, "run-1", first, engine)
    assert (summary.imported, summary.skipped) == (30, 0)

    final = write_run(engine, store, tmp_path, "run-2", items)
    counting = CountingReads(store)
    result, summary = import_final_records(counting, "run-2", final, engine)

    assert (summary.imported, summary.updated, summary.skipped, summary.failed) == (0, 0, 30, 0)
    assert result.stats.details["skipped_by_index"] == 30
    assert store.key_for(final.uri) not in counting.opened, "final.jsonl was read though nothing is written"
    assert any(key.endswith("final_index.jsonl") for key in counting.opened)


def test_an_import_through_the_index_ends_as_one_that_reads_every_line(engine, store, tmp_path: Path) -> None:  # noqa: ANN001
    """New rows, changed content, better enrichment on unchanged content, unchanged rows: the index path writes
    the same rows with the same counts as the full read (the index deleted from the run's files)."""
    base = [_activity(n) for n in range(12)]
    later = [_activity(n, "Swings and a slide") if n % 4 == 0 else _activity(n) for n in range(12)]
    later += [_activity(n) for n in range(12, 16)]  # new
    geocoded = frozenset({1, 5})  # unchanged content, a geocode that now succeeds: written

    outcomes = []
    for name, keep_index in (("index", True), ("full", False)):
        with engine.begin() as connection:
            connection.execute(activities.delete())
        first = write_run(engine, store, tmp_path, f"{name}-1", base)
        import_final_records(store, f"{name}-1", first, engine)
        final = write_run(engine, store, tmp_path, f"{name}-2", later, geocoded)
        if not keep_index:  # a run written before the index: the import reads every line
            _forget_index(engine, f"{name}-2")
        counting = CountingReads(store)
        result, summary = import_final_records(counting, f"{name}-2", final, engine)
        assert ("skipped_by_index" in result.stats.details) is keep_index
        rows = [{**row, "run_id": row["run_id"].split("-")[1], "run_started_at": None} for row in table(engine)]
        outcomes.append((summary.model_dump(exclude={"errors"}), rows))

    (index_summary, index_rows), (full_summary, full_rows) = outcomes
    assert index_summary == full_summary
    assert (index_summary["imported"], index_summary["updated"], index_summary["skipped"]) == (4, 5, 7)
    assert index_rows == full_rows


def _forget_index(engine: Any, run_id: str) -> None:
    from harvest.db.schema import run_files

    with engine.begin() as connection:
        connection.execute(run_files.delete().where(run_files.c.run_id == run_id, run_files.c.kind == "final_index"))


def test_the_index_says_what_the_final_lines_say(engine, store, tmp_path: Path) -> None:  # noqa: ANN001
    """Each index line is its final line without the vector, and its hash is the one the import stores."""
    from harvest.enrich.embeddings.vectors import embedding_hash, parse_final_line, parse_index_line

    final = write_run(engine, store, tmp_path, "run-1", [_activity(n) for n in range(5)])
    index = runs.files_view(engine, "run-1")["final_index"]
    finals = list(iter_jsonl(store, final.uri, parse=parse_final_line))
    indexed = list(iter_jsonl(store, index.uri, parse=parse_index_line))
    assert len(finals) == len(indexed) == index.records == 5
    for line, entry in zip(finals, indexed, strict=True):
        assert embedding_hash(entry["embedding"]) == embedding_hash(line["embedding"]) is not None
        assert {**entry, "embedding": None} == {**line, "embedding": None}


@pytest.mark.parametrize("edit", ["same_size", "appended"])
def test_a_final_jsonl_edited_after_the_run_is_imported_as_edited(engine, store, tmp_path: Path, edit: str) -> None:  # noqa: ANN001
    """A kept run's final.jsonl is reviewed and corrected before its import: its index no longer describes it,
    so the import reads every line of the edited file (a corrected name is written; an appended malformed line
    is a counted failure), never the stale index's view of it. (S3 keeps LastModified to the second: a same-size
    edit is told by its time, so this one is made in a later second than the run's write, as a review is.)"""
    import json
    import time

    final = write_run(engine, store, tmp_path, "run-1", [_activity(n) for n in range(5)])
    path = tmp_path / "edited.jsonl"
    with store.open_read(store.key_for(final.uri)) as handle:
        body = handle.read()
    if edit == "same_size":
        body = body.replace(b'"Playground 3"', b'"Playpark   3"', 1)
        time.sleep(1.0)
    else:
        broken = {**json.loads(body.splitlines()[0]), "id": "broken", "name": "Broken", "start_date": "not a date",
                  "content_hash": "broken"}
        body += json.dumps(broken).encode() + b"\n"
    path.write_bytes(body)
    store.put_file(store.key_for(final.uri), path, "application/x-ndjson")

    result, summary = import_final_records(store, "run-1", final, engine)

    assert "skipped_by_index" not in result.stats.details
    names = sorted(row["name"] for row in table(engine))
    if edit == "same_size":
        assert (summary.imported, summary.failed) == (5, 0)
        assert "Playpark   3" in names and "Playground 3" not in names
    else:
        assert (summary.imported, summary.failed) == (5, 1), summary
        assert "Broken" not in names


LOOKUP = "SELECT activities.dedupe_key"  # the policy's key lookup (harvest.import_.activities._stored_rows)


def test_a_first_import_builds_and_looks_up_each_row_once(engine, store, tmp_path: Path) -> None:  # noqa: ANN001
    """Every line new: the keys are looked up once per batch of 500 (three for 1,200 lines), not once to judge
    the index and again to write, and final.jsonl is read once."""
    final = write_run(engine, store, tmp_path, "run-1", [_activity(n) for n in range(1200)])
    lookups: list[str] = []

    def count(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        if statement.startswith(LOOKUP):
            lookups.append(statement)

    counting = CountingReads(store)
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        result, summary = import_final_records(counting, "run-1", final, engine)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)

    assert (summary.imported, summary.updated, summary.skipped, summary.failed) == (1200, 0, 0, 0)
    assert result.stats.details["skipped_by_index"] == 0
    assert len(lookups) == 3, f"{len(lookups)} key lookups for 3 batches: the import repeats the policy's"
    assert counting.opened.count(store.key_for(final.uri)) == 1
    assert len(table(engine)) == 1200


@pytest.mark.parametrize("other_run", ["newer", "older", "older-venue"])
def test_a_key_another_run_stores_after_the_lookup_is_decided_at_write_time(
    engine, store, tmp_path: Path, other_run: str,  # noqa: ANN001
) -> None:
    """Between one batch's key lookup and its write, another run (another URL listing the same activity) stores
    one of the keys judged new. The row must then be written by the upsert policy, not by the stale verdict:
    a newer run's row stays (Postgres counts ours unchanged), an older run's row is overwritten (updated). When
    ours lists the activity as an aggregator (its item's URL at the other site) and the other run is that venue's,
    the venue's row stays though its run is older: the write's precedence reads the claims as they are at write
    time, not as the lookup saw them (issue 32)."""
    from harvest.import_.activities import import_activities
    from harvest.merge.final import final_record

    items = [_activity(n) for n in range(30)]
    if other_run == "older-venue":
        items[7] = {**items[7], "item_url": "https://other.example/7"}  # we list the venue's activity
    if other_run.startswith("older"):
        runs.create_run(engine, "other", "https://other.example/", {})
    final = write_run(engine, store, tmp_path, "run-1", items)
    if other_run == "newer":
        runs.create_run(engine, "other", "https://other.example/", {})
    # The other site lists it as its own (its page on its own host): first-party, like ours unless we list it as an
    # aggregator; between equals the newest wins (harvest/import_/provenance.py).
    theirs = final_record(
        {"activity": {**_activity(7, "Swings, as the other site says"), "source_url": "https://other.example/7"}}, None
    )
    state = {"looked_up": False, "stored": False}

    def store_theirs() -> None:
        if state["looked_up"] and not state["stored"]:
            state["stored"] = True  # once: the other run's own import begins transactions too
            assert import_activities(engine, [theirs], run_id="other").imported == 1

    def on_statement(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        if statement.startswith(LOOKUP):
            state["looked_up"] = True
        elif statement == "BEGIN IMMEDIATE":  # SQLite: the next transaction begins, before it takes the lock
            store_theirs()

    def on_begin(conn) -> None:  # noqa: ANN001
        if engine.dialect.name != "sqlite":  # Postgres: the write's transaction (its COPY is the driver's own)
            store_theirs()

    sa.event.listen(engine, "before_cursor_execute", on_statement)
    sa.event.listen(engine, "begin", on_begin)
    try:
        _, summary = import_final_records(store, "run-1", final, engine)
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_statement)
        sa.event.remove(engine, "begin", on_begin)

    assert state["stored"]
    rows = {row["id"]: row for row in table(engine)}
    assert len(rows) == 30
    theirs_stay = other_run in ("newer", "older-venue")
    kept = theirs if theirs_stay else items[7]
    assert (rows["a7"]["description"], rows["a7"]["content_hash"]) == (kept["description"], kept["content_hash"])
    assert rows["a7"]["run_id"] == ("other" if theirs_stay else "run-1")
    assert rows["a7"]["source"] == ("https://other.example/" if theirs_stay else "https://site.example/")
    if engine.dialect.name == "postgresql":  # the portable path counts by its lookup (see Verdicts)
        expected = (29, 0, 1) if theirs_stay else (29, 1, 0)
        assert (summary.imported, summary.updated, summary.skipped) == expected


def test_a_database_error_part_way_keeps_the_counts_so_far_and_a_rerun_finishes(
    engine, store, tmp_path: Path,  # noqa: ANN001
) -> None:
    """Through the index, a batch's lookup failing leaves the batches before it written and counted on the run
    (imported and skipped as judged so far); importing again writes the rest and skips what is stored."""
    from harvest.errors import ImportInterrupted

    first = write_run(engine, store, tmp_path, "run-1", [_activity(n) for n in range(600)])
    import_final_records(store, "run-1", first, engine)
    final = write_run(engine, store, tmp_path, "run-2", [_activity(n) for n in range(1200)])
    lookups: list[str] = []

    def fail_third_batch(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        if statement.startswith(LOOKUP):
            lookups.append(statement)
            if len(lookups) == 3:
                raise sa.exc.OperationalError(statement, None, Exception("injected: the database went away"))

    sa.event.listen(engine, "before_cursor_execute", fail_third_batch)
    try:
        with pytest.raises(ImportInterrupted, match="failed after 400 rows"):
            import_final_records(store, "run-2", final, engine)
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_third_batch)
    recorded = runs.get_run(engine, "run-2")["import_summary"]
    # batch 1: 500 stored and unchanged; batch 2: 100 unchanged, 400 new; batch 3 never judged
    assert (recorded["imported"], recorded["updated"], recorded["skipped"]) == (400, 0, 600)
    assert recorded["interrupted"] and len(table(engine)) == 1000

    result, summary = import_final_records(store, "run-2", final, engine)
    assert (summary.imported, summary.updated, summary.skipped, summary.failed) == (200, 0, 1000, 0)
    assert result.stats.details["skipped_by_index"] == 1000 and len(table(engine)) == 1200
