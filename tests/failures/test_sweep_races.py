"""Issue 17: the sweep, the hooks and the import under races and partial failures.

Real Postgres, a real S3 endpoint (moto server) or a local folder. Step orders are forced at the storage and
database boundary (a store wrapper, SQLAlchemy event listeners), never by patching the code under test.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from harvest.db import runs as run_rows
from harvest.db.engine import utcnow
from harvest.diff.compare import digest_key
from harvest.enrich.images.cache import cached_images, store_images
from harvest.import_.activities import import_activities
from harvest.retention.policy import RetentionPolicy, cleanup_run, sweep
from harvest.storage import LocalStore, write_json, write_jsonl
from harvest.storage.base import ObjectInfo
from tests.helpers import process_elsewhere

POLICY = RetentionPolicy(kept_days=14, failed_days=30, grace=timedelta(hours=24))
NOW = utcnow()
LATER = NOW + timedelta(days=2)  # past the grace period of everything written during the test


def never_heard_of(run_id: str) -> str | None:
    return None


class HookedStore:
    """An ObjectStore that runs `on_list(prefix)` after a listing was taken, and fails `delete` of keys
    matching `fail_delete` (a transient storage error) while that predicate says so."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.base_uri = inner.base_uri
        self.on_list: Callable[[str], None] | None = None
        self.fail_delete: Callable[[str], bool] = lambda key: False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        listing = list(self.inner.list(prefix))
        if self.on_list is not None:
            self.on_list(prefix)
        return iter(listing)

    def delete(self, key: str) -> None:
        if self.fail_delete(key):
            from harvest.errors import StorageError

            raise StorageError(f"injected: cannot delete {key}")
        self.inner.delete(key)


def image(store, name: str) -> str:  # noqa: ANN001
    key = "images/" + name * 64 + ".webp"
    write_json(store, key, "image", {"pixels": name})
    return key


def start_run(engine, store, url: str | None = None) -> str:  # noqa: ANN001
    run_id = str(uuid.uuid4())
    run_rows.create_run(engine, run_id, url or f"https://site.example/{run_id}", {})
    run_rows.record_file(engine, run_id, write_jsonl(store, f"runs/{run_id}/raw_activities.jsonl", "raw_activities",
                                                     [{"name": "A"}]))
    return run_id


def final_record(store, image_key: str | None, name: str = "A") -> dict:  # noqa: ANN001
    return {"id": name.lower(), "name": name, "content_hash": "h-" + name, "location": {"formatted_address": "1 Rd"},
            "tags": [], "image": {"uri": store.uri_for(image_key), "width": 1, "height": 1} if image_key else None}


# --- scenario 1: what references an image --------------------------------------------------------------


def test_1a_images_of_a_run_stopped_in_its_image_stage_survive_the_sweep(engine, store) -> None:  # noqa: ANN001
    used = image(store, "a")
    run_id = start_run(engine, store)
    # The image chunk finished (its part is recorded), then the run crashed: kept 30 days for a resume.
    run_rows.record_file(engine, run_id, write_jsonl(
        store, f"runs/{run_id}/images_map.part-0000.jsonl", "images_map.part-0000",
        [{"id": "a", "uri": store.uri_for(used)}]))
    run_rows.finish_run(engine, run_id, "crashed", retention="kept", expires_at=NOW + timedelta(days=30))
    report = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=LATER)
    assert report.images == [] and store.head(used) is not None


def test_1b_a_run_importing_and_cleaning_up_during_the_sweep_keeps_its_images(engine, store) -> None:  # noqa: ANN001
    used = image(store, "b")
    run_id = start_run(engine, store)
    run_rows.record_file(engine, run_id, write_jsonl(store, f"runs/{run_id}/images_map.jsonl", "images_map",
                                                     [{"id": "b", "uri": store.uri_for(used)}]))
    final = write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", [final_record(store, used, "B")])
    run_rows.record_file(engine, run_id, final)

    def finish_auto_import() -> None:  # the run imports, completes, and its hook deletes its files
        import_activities(engine, [final_record(store, used, "B")], run_id=run_id)
        run_rows.finish_run(engine, run_id, "completed")
        cleanup_run(engine, store, run_id)

    fired: list[str] = []

    def after(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        # Right after the sweep's first read of what references images (the activities or the images maps,
        # whichever it reads first), the run imports and deletes its files.
        reads_references = "activities.image_uri" in statement or (
            "run_files.kind" in statement and "images_map" in str(params))
        if reads_references and not fired:
            fired.append(statement)
            finish_auto_import()

    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        report = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=LATER)
    finally:
        sa.event.remove(engine, "after_cursor_execute", after)
    assert fired, "the race was forced"
    assert report.images == [] and store.head(used) is not None


def test_1c_a_reused_image_is_protected_while_a_run_may_point_at_it(engine, tmp_path: Path) -> None:  # noqa: ANN001
    local = LocalStore(tmp_path / "store")
    reused = image(local, "c")
    old = time.time() - 3 * 86400  # stored by a run three days ago, never rewritten since
    os.utime(tmp_path / "store" / reused, (old, old))
    store_images(engine, [{"source_url": "http://site/c.jpg", "uri": local.uri_for(reused), "width": 1, "height": 1,
                           "bytes": 10, "sha256": "c" * 64, "etag": '"c"', "last_modified": None}])
    with engine.begin() as connection:  # last checked three days ago, like the object
        connection.exec_driver_sql("UPDATE image_cache SET checked_at = now() - interval '3 days'")
    # A running run's image chunk looks it up to revalidate (the 304 then reuses it): the claim.
    assert "http://site/c.jpg" in cached_images(engine, ["http://site/c.jpg"])
    report = sweep(engine, local, POLICY, flow_run_state=never_heard_of, now=utcnow())
    assert report.images == [] and local.head(reused) is not None
    # Once the claim is older than the grace period (and nothing else points at it), it may go.
    report = sweep(engine, local, POLICY, flow_run_state=never_heard_of, now=utcnow() + timedelta(days=2))
    assert report.images == [reused]


# --- scenario 5: idempotent finishing steps ------------------------------------------------------------


def chunked_run(engine, store, chunks: int = 3) -> str:  # noqa: ANN001
    """A run whose image chunks all finished: parts stored and recorded, per-chunk steps recorded."""
    run_id = start_run(engine, store)
    for index in range(chunks):
        ref = write_jsonl(store, f"runs/{run_id}/images_map.part-{index:04d}.jsonl", f"images_map.part-{index:04d}",
                          [{"id": f"a{index}", "uri": None}])
        run_rows.record_file(engine, run_id, ref)
        run_rows.record_step(engine, run_id, f"images.{index}", {"items_in": 1, "items_out": 1, "seconds": 0.1})
    return run_id


def test_5_combine_survives_a_failed_part_delete_and_a_resume_after_it(engine, store) -> None:  # noqa: ANN001
    from harvest.enrich.join import combine_parts

    run_id = chunked_run(engine, store)
    hooked = HookedStore(store)
    # The combined map is stored and recorded; deleting the second part fails (a transient storage error),
    # after the first part's object was deleted: the state a crash between fold_steps and forget_files leaves.
    hooked.fail_delete = lambda key: key.endswith("part-0001.jsonl")
    ref, warnings = combine_parts(engine, hooked, run_id, "images_map", "images", 3)
    assert ref.records == 3 and warnings and "part-0001" in warnings[0]
    assert run_rows.get_run(engine, run_id)["steps"]["images"]["items_in"] == 3
    # The resume (or Prefect's retry) runs it again: same map, no error, the parts are gone this time.
    hooked.fail_delete = lambda key: False
    again, warnings = combine_parts(engine, hooked, run_id, "images_map", "images", 3)
    assert again.uri == ref.uri and again.sha256 == ref.sha256 and warnings == []
    assert sorted(run_rows.files_view(engine, run_id)) == ["images_map", "raw_activities"]
    assert [k for k in (info.key for info in store.list(f"runs/{run_id}/")) if "part-" in k] == []


def test_5_collected_embeddings_survive_a_failed_prefill_delete(engine, store) -> None:  # noqa: ANN001
    from harvest.enrich.embeddings.resume import collected_embeddings, drop_prefill

    run_id = start_run(engine, store)
    prefill = write_jsonl(store, f"runs/{run_id}/embeddings_prefill.jsonl", "embeddings_prefill", [{"id": "a"}])
    run_rows.record_file(engine, run_id, prefill)
    assert collected_embeddings(engine, run_id) is None, "nothing collected yet: poll the batch"
    for kind in ("embeddings", "embeddings_index"):
        run_rows.record_file(engine, run_id, write_jsonl(store, f"runs/{run_id}/{kind}.jsonl", kind, [{"id": "a"}]))
    hooked = HookedStore(store)
    hooked.fail_delete = lambda key: "prefill" in key
    warnings = drop_prefill(engine, hooked, run_id)
    assert warnings and "prefill" in warnings[0], "a failed delete is a warning, not a failed poll"
    assert "embeddings_prefill" in run_rows.files_view(engine, run_id), "its row stays: the object is accounted for"
    # The retry finds the vectors collected and only finishes the tidying.
    assert [ref.kind for ref in collected_embeddings(engine, run_id)] == ["embeddings", "embeddings_index"]
    hooked.fail_delete = lambda key: False
    assert drop_prefill(engine, hooked, run_id) == []
    assert "embeddings_prefill" not in run_rows.files_view(engine, run_id)
    assert store.head(f"runs/{run_id}/embeddings_prefill.jsonl") is None


# --- scenario 6: the diff baseline ---------------------------------------------------------------------


def finished_run(engine, store, url: str, *, status: str = "completed", days: float = 14) -> str:  # noqa: ANN001
    """A finished run with kept files (final, digest) that expires in `days`."""
    run_id = start_run(engine, store, url)
    for ref in (write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", [{"id": "a", "name": "A"}]),
                write_jsonl(store, digest_key(run_id), "digest", [{"id": "a", "h": ["x"]}])):
        run_rows.record_file(engine, run_id, ref)
    run_rows.finish_run(engine, run_id, status, retention="kept", expires_at=NOW + timedelta(days=days))
    return run_id


def test_6_the_latest_digest_of_a_url_survives_supersede_then_expiry(engine, store) -> None:  # noqa: ANN001
    url = "https://baseline.example/"
    old = finished_run(engine, store, url)
    cleanup_run(engine, store, old)
    new = finished_run(engine, store, url)
    first = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW)
    assert first.digests == [digest_key(old)]
    later = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=15))
    assert later.expired == [new]
    assert store.head(digest_key(new)) is not None, "the URL's only baseline was deleted"
    nxt = start_run(engine, store, url)  # the next run of the URL diffs against `new`, not "everything added"
    assert run_rows.previous_comparable_run(engine, nxt, url) == new
    assert run_rows.comparable_file(engine, new)["kind"] == "digest"
    # A failed run's digest is nobody's baseline: it goes with its files.
    failed = finished_run(engine, store, "https://failed.example/", status="failed", days=30)
    sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=31))
    assert store.head(digest_key(failed)) is None


# --- scenario 7: files of a run finishing during a sweep -----------------------------------------------


def test_7_a_run_finishing_during_the_sweep_is_not_flagged_missing(engine, store) -> None:  # noqa: ANN001
    run_id = start_run(engine, store)
    hooked = HookedStore(store)

    def finish_during_the_sweep(prefix: str) -> None:  # right after the sweep listed runs/
        if prefix == "runs/" and hooked.on_list is not None:
            hooked.on_list = None
            final = write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", [{"id": "a"}])
            run_rows.record_file(engine, run_id, final)
            run_rows.finish_run(engine, run_id, "completed", retention="kept", expires_at=NOW + timedelta(days=14))

    hooked.on_list = finish_during_the_sweep
    report = sweep(engine, hooked, POLICY, flow_run_state=never_heard_of, now=NOW)
    assert hooked.on_list is None, "the run finished during the sweep"
    assert report.missing == []
    assert all(f["missing_at"] is None for f in run_rows.list_files(engine, run_id))


def test_7_recording_a_file_again_clears_missing(engine, store) -> None:  # noqa: ANN001
    run_id = start_run(engine, store)
    final = write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", [{"id": "a"}])
    run_rows.record_file(engine, run_id, final)
    run_rows.finish_run(engine, run_id, "failed", retention="kept", expires_at=NOW + timedelta(days=30))
    store.delete(f"runs/{run_id}/final.jsonl")
    assert [m["kind"] for m in sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW).missing] == [
        "final_jsonl"]
    # `harvest runs resume` writes it again and records it: it is present, not missing.
    run_rows.record_file(engine, run_id, write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", [{"id": "a"}]))
    files = {f["kind"]: f for f in run_rows.list_files(engine, run_id)}
    assert files["final_jsonl"]["missing_at"] is None
    assert run_rows.comparable_file(engine, run_id)["kind"] == "final_jsonl"


# --- scenario 8: a run whose completion hook never ran ---------------------------------------------------


def test_8_a_finished_run_without_its_hook_is_settled_then_expires(engine, store) -> None:  # noqa: ANN001
    run_id = start_run(engine, store)
    run_rows.finish_run(engine, run_id, "completed")  # the flow ended; its process died before the hook ran
    assert run_rows.get_run(engine, run_id)["retention"] == "pending"
    young = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW)
    assert young.settled == [], "within the grace period the hook may still be running"
    settled = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=LATER)
    assert settled.settled == [run_id]
    row = run_rows.get_run(engine, run_id)
    assert row["retention"] == "kept" and row["expires_at"] is not None
    gone = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=15))
    assert gone.expired == [run_id] and list(store.list(f"runs/{run_id}/")) == []


# --- scenario 9: reconciliation ------------------------------------------------------------------------


def stale(engine, run_id: str, **values: Any) -> None:  # noqa: ANN001
    """The run's row was last touched two days ago (and, with `host`, runs elsewhere)."""
    from harvest.db.schema import scrape_runs

    with engine.begin() as connection:
        connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id).values(
            updated_at=NOW - timedelta(days=2), **values))


def test_9_a_live_local_run_is_never_reconciled_by_staleness(engine, store) -> None:  # noqa: ANN001
    waiting = start_run(engine, store)  # this process, alive: e.g. waiting hours on an embeddings batch
    stale(engine, waiting)
    for prefect_says in (None, "RUNNING"):
        report = sweep(engine, store, POLICY, flow_run_state=lambda _, says=prefect_says: says, now=NOW)
        assert report.reconciled == []
    assert run_rows.get_run(engine, waiting)["status"] == "running"
    with pytest.raises(Exception, match="already"):  # the URL stays locked to it
        run_rows.create_run(engine, str(uuid.uuid4()), run_rows.get_run(engine, waiting)["url"], {})


def test_9_a_dead_hosts_run_is_reconciled_though_prefect_says_running(engine, store) -> None:  # noqa: ANN001
    dead = start_run(engine, store)
    stale(engine, dead, host="dead-host.example", pid=4242, process=process_elsewhere(4242))
    report = sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW)
    assert [(r["run_id"], r["status"]) for r in report.reconciled] == [(dead, "crashed")]
    assert "dead-host.example" in report.reconciled[0]["reason"]
    # A live run on another host beats: it is fresh, not reconciled.
    alive = start_run(engine, store)
    stale(engine, alive, host="other-host.example", pid=4343, process=(elsewhere := process_elsewhere(4343)))
    assert run_rows.heartbeat(engine, alive, process=elsewhere)
    assert sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW).reconciled == []


def test_9_the_heartbeat_thread_beats_while_running_and_stops_after(engine, store) -> None:  # noqa: ANN001
    from flows.heartbeat import start_heartbeat

    run_id = start_run(engine, store)
    stale(engine, run_id)
    thread = start_heartbeat(engine, run_id, 0.05)
    deadline = time.monotonic() + 30
    while run_rows.get_run(engine, run_id)["updated_at"] < NOW - timedelta(days=1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_rows.get_run(engine, run_id)["updated_at"] > NOW - timedelta(minutes=5)
    run_rows.finish_run(engine, run_id, "completed")
    thread.join(timeout=30)
    assert not thread.is_alive(), "the heartbeat stops once the run is no longer running"


# --- scenario 11: import lease, partial import summary, pinned cleanup, grace bound ----------------------


def test_11_an_expiry_during_a_manual_import_waits_for_it(engine, store) -> None:  # noqa: ANN001
    from harvest.import_.stage import import_kept_run

    run_id = finished_run(engine, store, "https://import.example/", days=1 / 48)  # expires in 30 minutes
    final = write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl",
                        [final_record(store, None, f"N{n}") for n in range(5)])
    run_rows.record_file(engine, run_id, final)
    sweeps = []

    class SweepWhileReading(HookedStore):
        def open_read(self, key: str) -> Any:
            handle = self.inner.open_read(key)
            if key.endswith("final.jsonl") and not sweeps:  # the import has started reading: a sweep runs
                past_expiry = NOW + timedelta(hours=1)
                sweeps.append(sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=past_expiry))
            return handle

    hooked = SweepWhileReading(store)
    result, summary = import_kept_run(hooked, run_id, engine)
    assert sweeps and sweeps[0].expired == [], "the run being imported was expired under the import"
    assert summary.imported == 5 and store.head(f"runs/{run_id}/final.jsonl") is not None
    row = run_rows.get_run(engine, run_id)
    assert row["lease_until"] is None and row["import_summary"]["imported"] == 5
    # Once imported and released, the next sweep past its expiry handles it as usual.
    assert sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=LATER).expired == [run_id]


def test_11_a_database_error_part_way_still_records_what_was_imported(engine, store) -> None:  # noqa: ANN001
    from harvest.errors import DatabaseError
    from harvest.import_.stage import import_final_records

    run_id = finished_run(engine, store, "https://partial.example/")
    records = [final_record(store, None, f"P{n:04d}") for n in range(1200)]  # three COPY batches of 500
    final = write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", records)
    batches: list[str] = []

    def fail_third_batch(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        if statement.startswith("SELECT activities.dedupe_key"):  # each batch's key lookup
            batches.append(statement)
            if len(batches) == 3:
                raise sa.exc.OperationalError(statement, None, Exception("injected: the database went away"))

    sa.event.listen(engine, "before_cursor_execute", fail_third_batch)
    try:
        with pytest.raises(DatabaseError):
            import_final_records(store, run_id, final, engine)
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_third_batch)
    summary = run_rows.get_run(engine, run_id)["import_summary"]
    assert summary is not None, "rows were imported but the run says nothing"
    assert summary["imported"] == 1000 and "failed after 1000 rows" in summary["interrupted"]


def test_11_cleanup_never_deletes_a_pinned_runs_files(engine, store) -> None:  # noqa: ANN001
    from harvest.retention.queries import set_pinned

    run_id = finished_run(engine, store, "https://pinned.example/")
    set_pinned(engine, run_id, True)
    assert cleanup_run(engine, store, run_id) is None
    assert store.head(f"runs/{run_id}/final.jsonl") is not None
    assert run_rows.get_run(engine, run_id)["retention"] == "kept"


def test_11_the_orphan_grace_period_has_a_lower_bound(monkeypatch) -> None:  # noqa: ANN001
    from pydantic import ValidationError

    from harvest.settings import HarvestSettings

    monkeypatch.setenv("HARVEST_ORPHAN_GRACE_HOURS", "0")
    with pytest.raises(ValidationError, match="orphan_grace_hours"):
        HarvestSettings()
    monkeypatch.setenv("HARVEST_ORPHAN_GRACE_HOURS", "1")
    assert HarvestSettings().orphan_grace_hours == 1
