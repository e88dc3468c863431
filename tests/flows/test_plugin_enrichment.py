"""The proof that an enrichment plugs in at one place (issue 30): a throwaway fourth enrichment, defined here and
registered through harvest/enrich/registry.py, and no other production code told about it.

It owns a column (`rating`: what its migration would add; the test adds it to the database and drops it after)
and scores each activity by the length of its name, in chunks that wait for each other. Through the real flow
on Prefect's ephemeral API, with Postgres, S3 (moto) and the local OpenAI and geocoder servers, it must:
fan out in chunks running side by side, merge into the records and the `activities` rows, leave the stored
values alone when it fails, resume (a finished chunk is loaded, not run again) and be swept with the run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db.engine import get_engine
from harvest.enrich.base import ChunkedEnrichment, EnrichContext, WorkCount
from harvest.enrich.fan_out import enrichment_chunks
from harvest.models import FileRef
from harvest.pipeline import Chunk, StageResult, timed
from harvest.settings import HarvestSettings
from harvest.storage import iter_jsonl, write_jsonl
from harvest.storage.keys import run_key
from tests.failures.support import file_rows, jsonl, run_row, s3_object, scrape
from tests.helpers import reset_harvest_caches

SITE = {"max_pages": 30, "max_extractions": 12}


class Rating(ChunkedEnrichment):
    """A made-up score per activity: its name's length. Every record counts as work, so it fans out as far as the
    settings allow. With `meet`, each chunk waits (at most a minute) until every chunk of the run has started:
    chunks run one after another would time out there and fail. `failing` makes every chunk fail, and
    `failing_once` the chunks of those indexes, the first time each is asked."""

    name = "rating"
    map_kind = "rating_map"
    merged_key = "rating"
    columns = (sa.Column("rating", sa.Float),)

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()
        self.meet = False
        self.failing = False
        self.failing_once: set[int] = set()
        self._barriers: dict[str, threading.Barrier] = {}
        self._lock = threading.Lock()

    def work(self, engine: Engine | None, settings: HarvestSettings) -> WorkCount | None:
        return len

    def enrich_chunk(self, context: EnrichContext, standardized: FileRef, chunk: Chunk) -> StageResult:
        with self._lock:
            self.calls[(context.run_id, chunk.index)] += 1
            fail_now = self.failing or chunk.index in self.failing_once
            self.failing_once.discard(chunk.index)
        if fail_now:
            raise RuntimeError("the rating service is down")
        if self.meet:
            self._barrier(context, standardized).wait(timeout=60)
        result = StageResult()
        kind = chunk.output(self.map_kind)
        lines = ({"id": record["id"], "score": float(len(record["name"]))}
                 for record in chunk.records(context.store, standardized.uri))
        with timed(result.stats):
            ref = write_jsonl(context.store, run_key(context.run_id, kind, "jsonl"), kind, lines)
        result.files.append(ref)
        result.stats.items_in = result.stats.items_out = ref.records
        return result

    def _barrier(self, context: EnrichContext, standardized: FileRef) -> threading.Barrier:
        size, most = context.settings.enrich_chunk_size, context.settings.enrich_max_chunks
        parties = len(enrichment_chunks(standardized.records, standardized.records, size, most))
        with self._lock:
            return self._barriers.setdefault(context.run_id, threading.Barrier(parties))

    def merged(self, line: dict[str, Any] | None) -> Any:
        return line["score"] if line else None

    def finish(self, record: dict[str, Any], value: Any) -> None:
        record["rating"] = value

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"rating": record.get("rating")}


@pytest.fixture
def rating(harvest_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Rating]:
    """The enrichment registered, its column in the database (its migration), chunks of 2, at most 3 of them."""
    from harvest.enrich import registry

    monkeypatch.setenv("HARVEST_ENRICH_CHUNK_SIZE", "2")
    monkeypatch.setenv("HARVEST_ENRICH_MAX_CHUNKS", "3")
    reset_harvest_caches()
    engine = get_engine(harvest_env["HARVEST_DATABASE_URL"])
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE activities ADD COLUMN rating double precision")
    enrichment = Rating()
    registry.register(enrichment)
    try:
        yield enrichment
    finally:
        registry.unregister(enrichment.name)
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE activities DROP COLUMN rating")


def _ratings(db_url: str) -> dict[str, tuple[float | None, str]]:
    """activities: name → (rating, content_hash)."""
    with get_engine(db_url).begin() as connection:
        rows = connection.exec_driver_sql("SELECT name, rating, content_hash FROM activities").all()
    return {name: (score, content_hash) for name, score, content_hash in rows}


def _task_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [run.name for run in runs]


def test_a_fourth_enrichment_fans_out_merges_and_survives_its_own_failure(
    rating: Rating, harvest_env, s3, demo_site
) -> None:  # noqa: ANN001
    from flows.import_run import import_run
    from flows.runners import enrichment_threads
    from harvest.settings import get_settings

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    rating.meet = True
    state = scrape(demo_site.base_url + "/", **SITE)  # files kept, to read them; imported below
    assert state.is_completed(), state.message
    summary = state.result()
    run_id = summary.run_id
    row = run_row(db_url, run_id)
    assert row is not None and not [w for w in row["warnings"] if w.startswith("rating")], row["warnings"]

    # Fanned out: three chunks (they met at the barrier, so they ran side by side), joined as one step.
    standardized = summary.files["standardized"]
    assert standardized.records >= 5, "enough activities for three chunks of 2"
    assert sorted(index for (run, index) in rating.calls if run == run_id) == [0, 1, 2]
    assert row["steps"]["rating"]["details"]["chunks"] == 3
    assert row["steps"]["rating"]["items_out"] == standardized.records
    assert not any(step.startswith("rating.") for step in row["steps"]), "chunk steps fold into the step"
    names = _task_names(run_id)
    assert sorted(name for name in names if name.startswith("rating.")) == ["rating.0", "rating.1", "rating.2"]
    assert any(name.startswith("rating-") for name in names), names  # the join, named after the step
    # The pool the flow sizes from the registry makes room for its chunks and their join.
    settings = get_settings()
    assert enrichment_threads(settings) == 3 * (settings.enrich_max_chunks + 1) + 1

    # Merged into the records: merged.jsonl, final.jsonl and, imported, the activities rows.
    files = file_rows(db_url, run_id)
    merged = jsonl(s3_object(s3, files["merged"]["uri"]))
    assert all(line["rating"] == float(len(line["activity"]["name"])) for line in merged)
    final = jsonl(s3_object(s3, files["final_jsonl"]["uri"]))
    assert [record["rating"] for record in final] == [line["rating"] for line in merged]
    imported = import_run(run_id)
    stored = _ratings(db_url)
    assert len(stored) == imported.imported > 0
    assert all(score == float(len(name)) for name, (score, _) in stored.items()), stored

    # Its own failure: the run completes without it, says so, and never blanks what an earlier run stored,
    # even where the row is rewritten (its content changed: here, by marking the stored hashes stale).
    with get_engine(db_url).begin() as connection:
        connection.exec_driver_sql("UPDATE activities SET content_hash = 'stale'")
    rating.meet, rating.failing = False, True
    again = scrape(demo_site.base_url + "/", auto_import=True, **SITE)
    assert again.is_completed(), again.message
    second = again.result()
    assert any(w.startswith("rating: step failed") for w in second.warnings), second.warnings
    assert second.import_summary.updated == len(stored), second.import_summary
    after = _ratings(db_url)
    assert {name: score for name, (score, _) in after.items()} == {name: s for name, (s, _) in stored.items()}
    assert all(content_hash != "stale" for _, content_hash in after.values()), "the rows were rewritten"


def test_a_fourth_enrichment_resumes_and_is_swept_with_its_run(rating: Rating, harvest_env, s3, demo_site) -> None:  # noqa: ANN001
    from flows.resources import resources
    from flows.resume import resume_flow_run
    from harvest.retention.policy import RetentionPolicy, sweep

    db_url, bucket = harvest_env["HARVEST_DATABASE_URL"], harvest_env["HARVEST_BUCKET"]
    rating.failing_once = {1}  # the first attempt's second chunk fails; the others store their parts
    first = scrape(demo_site.base_url + "/", **SITE)
    run_id = str(first.state_details.flow_run_id)
    assert "rating_map" not in file_rows(db_url, run_id), "the map was never joined"

    resumed = resume_flow_run(run_id)
    assert resumed.is_completed(), resumed.message
    calls = {index: count for (run, index), count in rating.calls.items() if run == run_id}
    assert calls == {0: 1, 1: 2, 2: 1}, "finished chunks are loaded on resume, the failed one runs again"
    store = resources().store
    files = file_rows(db_url, run_id)
    standardized = [line["id"] for line in iter_jsonl(store, files["standardized"]["uri"])]
    assert [line["id"] for line in iter_jsonl(store, files["rating_map"]["uri"])] == standardized
    assert not any(".part-" in kind for kind in files), "its parts were consumed by the join"

    # Swept like the others: once the kept run expires, the sweep deletes its files, the map among them.
    row = run_row(db_url, run_id)
    assert row is not None and row["retention"] == "kept"
    report = sweep(get_engine(db_url), store, RetentionPolicy(), flow_run_state=lambda _: "COMPLETED",
                   now=row["expires_at"] + timedelta(days=1))
    assert run_id in report.expired
    assert file_rows(db_url, run_id)["rating_map"]["deleted_at"] is not None
    assert s3.keys(bucket, f"harvest/runs/{run_id}/") == [], "nothing of the run is left in storage"
