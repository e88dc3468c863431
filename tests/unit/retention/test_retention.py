"""Retention and the sweep against real Postgres and a real S3 endpoint (moto server), with a frozen clock.

Runs are made the way the flow makes them (run row, files written through the store, file rows), so the
sweep sees exactly what a real run leaves behind; the clock is moved by passing `now`.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from harvest.db import runs as run_rows
from harvest.db.engine import utcnow
from harvest.db.schema import activity_sources, scrape_runs
from harvest.diff.compare import digest_key
from harvest.errors import ConfigError, RunAlreadyRunningError
from harvest.retention.policy import (
    RetentionPolicy,
    cleanup_older_than,
    cleanup_run,
    file_state,
    parse_duration,
    sweep,
)
from harvest.retention.queries import set_pinned
from harvest.storage import write_json, write_jsonl
from tests.helpers import process_elsewhere

POLICY = RetentionPolicy(kept_days=14, failed_days=30, grace=timedelta(hours=24))
NOW = utcnow()


def never_heard_of(run_id: str) -> str | None:
    return None


def make_run(engine, store, *, status="completed", url=None, expires_in=timedelta(days=14), image=None):  # noqa: ANN001, ANN201
    """A finished run with kept files: raw, final, images map, digest and a Prefect step result."""
    run_id = str(uuid.uuid4())
    url = url or f"https://site.example/{run_id}"
    run_rows.create_run(engine, run_id, url, {"max_pages": 5})
    refs = [
        write_jsonl(store, f"runs/{run_id}/raw_activities.jsonl", "raw_activities", [{"name": "A"}, {"name": "B"}]),
        write_jsonl(store, f"runs/{run_id}/final.jsonl", "final_jsonl", [{"id": "a", "name": "A"}]),
        write_jsonl(store, f"runs/{run_id}/images_map.jsonl", "images_map",
                    [{"id": "a", "uri": store.uri_for(image) if image else None}]),
        write_jsonl(store, digest_key(run_id), "digest", [{"id": "a", "name": "A", "h": ["x"]}]),
    ]
    for ref in refs:
        run_rows.record_file(engine, run_id, ref)
    write_json(store, f"runs/{run_id}/results/crawl.json", "result", {"result": "a FileRef"})
    run_rows.finish_run(engine, run_id, status, retention="kept", expires_at=NOW + expires_in)
    return run_id


def keys(store, prefix=""):  # noqa: ANN001, ANN201
    return sorted(info.key for info in store.list(prefix))


def row(engine, run_id):  # noqa: ANN001, ANN201
    return run_rows.get_run(engine, run_id)


def test_kept_runs_expire_after_their_ttl_and_pinned_or_running_runs_never(engine, store) -> None:
    kept = make_run(engine, store)
    failed = make_run(engine, store, status="failed", expires_in=timedelta(days=30))
    pinned = make_run(engine, store)
    set_pinned(engine, pinned, True)
    running_id = str(uuid.uuid4())
    run_rows.create_run(engine, running_id, "https://busy.example/", {})
    run_rows.update_run(engine, running_id, expires_at=NOW - timedelta(days=1))  # a bogus expiry must not matter
    write_jsonl(store, f"runs/{running_id}/raw_activities.jsonl", "raw_activities", [{"name": "A"}])

    early = sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW + timedelta(days=13))
    assert early.expired == [] and early.deleted_objects == 0

    later = sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW + timedelta(days=15))
    assert later.expired == [kept]
    # The digest of a completed run stays: it is its URL's diff baseline until a newer run supersedes it.
    assert keys(store, f"runs/{kept}/") == [] and keys(store, digest_key(kept)) == [digest_key(kept)]
    assert row(engine, kept)["retention"] == "expired" and row(engine, kept)["status"] == "completed"
    assert {(f["kind"], file_state(f, row(engine, kept))) for f in run_rows.list_files(engine, kept)} == {
        ("raw_activities", "expired"), ("final_jsonl", "expired"), ("images_map", "expired"), ("digest", "present")}
    for untouched in (failed, pinned):
        assert row(engine, untouched)["retention"] == "kept"
        assert len(keys(store, f"runs/{untouched}/")) == 4
    assert keys(store, f"runs/{running_id}/") == [f"runs/{running_id}/raw_activities.jsonl"]

    last = sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW + timedelta(days=31))
    assert last.expired == [failed]
    assert row(engine, pinned)["retention"] == "kept" and len(keys(store, f"runs/{pinned}/")) == 4
    set_pinned(engine, pinned, False)
    assert sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=31)).expired == [pinned]


def test_two_sweeps_at_once_handle_each_run_exactly_once(engine, store) -> None:
    ids = {make_run(engine, store) for _ in range(12)}
    objects = len(keys(store, "runs/"))  # the digests stay: each is its URL's diff baseline
    reports = []
    barrier = threading.Barrier(2)

    def one_sweep() -> None:
        barrier.wait()
        reports.append(sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=15)))

    threads = [threading.Thread(target=one_sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = reports
    assert not first.errors and not second.errors
    assert set(first.expired).isdisjoint(second.expired)
    assert set(first.expired) | set(second.expired) == ids
    assert first.deleted_objects + second.deleted_objects == objects
    assert keys(store, "runs/") == [] and len(keys(store, "digests/")) == 12


def test_manual_cleanup_racing_a_sweep_deletes_each_run_once_and_never_a_running_one(engine, store) -> None:
    ids = [make_run(engine, store) for _ in range(8)]
    running_id = str(uuid.uuid4())
    run_rows.create_run(engine, running_id, "https://busy.example/", {})
    write_jsonl(store, f"runs/{running_id}/raw_activities.jsonl", "raw_activities", [{"name": "A"}])
    cleaned: list[str] = []
    swept = []

    def cleanups() -> None:
        for run_id in ids + [running_id]:
            if cleanup_run(engine, store, run_id) is not None:
                cleaned.append(run_id)

    def one_sweep() -> None:
        swept.append(sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW + timedelta(days=15)))

    threads = [threading.Thread(target=cleanups), threading.Thread(target=one_sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not swept[0].errors
    assert sorted(cleaned + swept[0].expired) == sorted(ids), "each run handled by exactly one of them"
    assert {row(engine, run_id)["retention"] for run_id in ids} <= {"cleaned", "expired"}
    assert keys(store, f"runs/{running_id}/") == [f"runs/{running_id}/raw_activities.jsonl"]
    assert row(engine, running_id)["status"] == "running"


def test_runs_left_running_by_a_dead_process_are_reconciled(engine, store) -> None:
    crashed, failed, alive, unknown_old, unknown_new = (str(uuid.uuid4()) for _ in range(5))
    for run_id in (crashed, failed, alive, unknown_old, unknown_new):
        run_rows.create_run(engine, run_id, f"https://site.example/{run_id}", {})
        # Each on a worker on another machine: its process cannot be checked from here.
        run_rows.update_run(engine, run_id, host="elsewhere.example", process=process_elsewhere())
    with engine.begin() as connection:  # its last sign of life was two days ago
        connection.execute(
            scrape_runs.update().where(scrape_runs.c.id == unknown_old).values(updated_at=NOW - timedelta(days=2))
        )
    prefect_says = {crashed: "CRASHED", failed: "FAILED", alive: "RUNNING"}

    dry = sweep(engine, store, POLICY, flow_run_state=prefect_says.get, dry_run=True, now=NOW)
    assert {item["run_id"] for item in dry.reconciled} == {crashed, failed, unknown_old}
    assert row(engine, crashed)["status"] == "running", "a dry run changes nothing"

    report = sweep(engine, store, POLICY, flow_run_state=prefect_says.get, now=NOW)
    assert {(item["run_id"], item["status"]) for item in report.reconciled} == {
        (crashed, "crashed"), (failed, "failed"), (unknown_old, "crashed"),
    }
    reconciled = row(engine, crashed)
    assert (reconciled["status"], reconciled["retention"]) == ("crashed", "kept")
    assert reconciled["expires_at"] == NOW + timedelta(days=30) and "CRASHED" in reconciled["error"]
    assert row(engine, alive)["status"] == "running" and row(engine, unknown_new)["status"] == "running"
    # The URL is free again: a new run may start.
    run_rows.create_run(engine, str(uuid.uuid4()), f"https://site.example/{crashed}", {})


def test_orphans_and_unreferenced_images_go_only_after_the_grace_period(engine, store) -> None:
    referenced_image = "images/" + "a" * 64 + ".webp"
    imported_image = "images/" + "b" * 64 + ".webp"
    orphan_image = "images/" + "c" * 64 + ".webp"
    for key in (referenced_image, imported_image, orphan_image):
        write_json(store, key, "image", {"pixels": key})
    kept = make_run(engine, store, image=referenced_image)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO activities (id, dedupe_key, name, urgency, is_public, tags, content_hash, image_uri, "
            "created_at, updated_at) VALUES ('x', 'x', 'X', 'low', true, '[]', 'h', :uri, now(), now())"
        ), {"uri": store.uri_for(imported_image)})
    ghost = str(uuid.uuid4())  # a run whose row is gone (or never was)
    orphans = [f"runs/{ghost}/final.jsonl", f"runs/{ghost}/results/final.json", f"digests/{ghost}.jsonl",
               f"runs/{kept}/.leftover.jsonl"]
    for key in orphans:
        write_json(store, key, "orphan", {})
    cleaned = make_run(engine, store)
    cleanup_run(engine, store, cleaned)
    late_result = f"runs/{cleaned}/results/final.json"  # written after cleanup by a straggling task
    write_json(store, late_result, "orphan", {})

    young = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW)
    assert young.orphans == [] and young.images == []
    before = keys(store)
    dry = sweep(engine, store, POLICY, flow_run_state=never_heard_of, dry_run=True, now=NOW + timedelta(days=2))
    assert sorted(dry.orphans) == sorted(orphans + [late_result]) and dry.images == [orphan_image]
    assert keys(store) == before, "a dry run deletes nothing"
    report = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=2))
    assert sorted(report.orphans) == sorted(orphans + [late_result]) and report.images == [orphan_image]
    left = keys(store)
    assert referenced_image in left and imported_image in left and orphan_image not in left
    assert sorted(k for k in left if k.startswith(f"runs/{kept}/")) == [
        f"runs/{kept}/final.jsonl", f"runs/{kept}/images_map.jsonl", f"runs/{kept}/raw_activities.jsonl",
        f"runs/{kept}/results/crawl.json",
    ]
    assert digest_key(cleaned) in left, "a cleaned run's digest stays until a newer run of its URL supersedes it"
    # Object by object, what is left is exactly what some row accounts for.
    assert left == sorted([
        digest_key(cleaned), digest_key(kept), referenced_image, imported_image,
        f"runs/{kept}/final.jsonl", f"runs/{kept}/images_map.jsonl", f"runs/{kept}/raw_activities.jsonl",
        f"runs/{kept}/results/crawl.json",
    ])
    print("left after the sweep:", *left, sep="\n  ")


def test_an_image_only_a_source_claim_holds_stays(engine, store) -> None:  # noqa: ANN001
    """A source's claim keeps its own image (issue 32): the row shows another source's, and is re-derived from the
    claim if that source is withdrawn, so the sweep must not take the claim's image away meanwhile."""
    shown_image, claim_image = ("images/" + letter * 64 + ".webp" for letter in "de")
    for key in (shown_image, claim_image):
        write_json(store, key, "image", {"pixels": key})
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO activities (id, dedupe_key, name, urgency, is_public, tags, content_hash, image_uri, "
            "created_at, updated_at) VALUES ('y', 'y', 'Y', 'low', true, '[]', 'h', :uri, now(), now())"
        ), {"uri": store.uri_for(shown_image)})
        connection.execute(activity_sources.insert().values(
            dedupe_key="y", source_url="https://aggregator.example/", first_party=False, run_id="r",
            first_seen_at=NOW, last_seen_at=NOW, updated_at=NOW,
            fields={"description": "theirs", "image_uri": store.uri_for(claim_image)},
        ))
    report = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW + timedelta(days=2))
    assert claim_image not in report.images
    assert {shown_image, claim_image} <= set(keys(store))


def test_superseded_digests_of_cleaned_runs_are_dropped(engine, store) -> None:
    url = "https://same.example/"
    old = make_run(engine, store, url=url)
    cleanup_run(engine, store, old)
    new = make_run(engine, store, url=url)
    cleanup_run(engine, store, new)
    report = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW)
    assert report.digests == [digest_key(old)]
    assert keys(store, "digests/") == [digest_key(new)]


def test_a_vanished_object_is_flagged_missing_not_trusted(engine, store) -> None:
    kept = make_run(engine, store)
    store.delete(f"runs/{kept}/final.jsonl")
    report = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW)
    assert [(m["run_id"], m["kind"]) for m in report.missing] == [(kept, "final_jsonl")]
    files = {f["kind"]: f for f in run_rows.list_files(engine, kept)}
    assert file_state(files["final_jsonl"], row(engine, kept)) == "missing"
    assert file_state(files["raw_activities"], row(engine, kept)) == "present"
    assert run_rows.comparable_file(engine, kept)["kind"] == "digest"
    assert sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=NOW).missing == [], "flagged once"


def test_batch_cleanup_by_age_and_status(engine, store) -> None:
    completed = make_run(engine, store)
    failed = make_run(engine, store, status="failed")
    pinned = make_run(engine, store)
    set_pinned(engine, pinned, True)
    assert cleanup_older_than(engine, store, timedelta(days=30), now=NOW + timedelta(days=1)) == []
    later = NOW + timedelta(days=31)
    assert sorted(cleanup_older_than(engine, store, timedelta(days=30), dry_run=True, now=later)) == sorted([completed, failed])
    assert keys(store, f"runs/{completed}/"), "dry run deleted nothing"
    assert cleanup_older_than(engine, store, timedelta(days=30), status="failed", now=later) == [failed]
    assert keys(store, f"runs/{failed}/") == [] and keys(store, f"runs/{completed}/")
    assert cleanup_older_than(engine, store, timedelta(days=30), now=later) == [completed]
    assert row(engine, completed)["retention"] == "cleaned" and row(engine, pinned)["retention"] == "kept"


def test_one_running_run_per_url_is_enforced_by_the_database(engine) -> None:
    url = "https://one.example/"
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(4)

    def start(run_id: str) -> None:
        barrier.wait()
        try:
            run_rows.create_run(engine, run_id, url, {})
            winners.append(run_id)
        except RunAlreadyRunningError as exc:
            losers.append(exc.running_run_id)

    threads = [threading.Thread(target=start, args=(str(uuid.uuid4()),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and losers == winners * 3
    with engine.begin() as connection:
        assert connection.execute(
            sa.select(sa.func.count()).select_from(scrape_runs).where(scrape_runs.c.url == url)
        ).scalar_one() == 1
    run_rows.finish_run(engine, winners[0], "completed")
    run_rows.create_run(engine, str(uuid.uuid4()), url, {})  # once it is over, the URL is free


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("15m", 900), ("1h", 3600), ("30d", 2_592_000), ("2w", 1_209_600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1y", "-1d", "soon", "1 h 2"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError, match="use a number with an optional unit"):
        parse_duration(text)


def test_a_local_run_whose_process_is_gone_is_crashed_even_if_prefect_still_says_running(engine, store) -> None:
    import subprocess
    import sys

    gone, alive = str(uuid.uuid4()), str(uuid.uuid4())
    for run_id in (gone, alive):
        run_rows.create_run(engine, run_id, f"https://site.example/{run_id}", {})
    # The row as another process on this machine recorded it: its `harvest scrape` was SIGKILLed since (no hook,
    # no API update), and the row still names it.
    recorded = subprocess.run(
        [sys.executable, "-c", "from harvest.liveness import this_process; print(this_process().key())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    pid = int(recorded.split("/")[2])
    run_rows.update_run(engine, gone, pid=pid, process=recorded)
    report = sweep(engine, store, POLICY, flow_run_state=lambda _: "RUNNING", now=NOW)
    assert [(r["run_id"], r["status"]) for r in report.reconciled] == [(gone, "crashed")]
    assert f"process {pid}" in report.reconciled[0]["reason"]
    assert row(engine, alive)["status"] == "running", "this test's own process is alive"
