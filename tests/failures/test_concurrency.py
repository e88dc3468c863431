"""Runs at the same time in one process (threads, the ephemeral Prefect API, Postgres, moto S3): one run per
URL, and no cross-talk between runs of different URLs in files, rows or cleanup.

Cleanup racing a sweep (each file deleted once, nothing of a running run) is
tests/unit/retention/test_retention.py::test_manual_cleanup_racing_a_sweep_deletes_each_run_once_and_never_a_running_one
(and ::test_two_sweeps_at_once_handle_each_run_exactly_once); the database rule itself is
::test_one_running_run_per_url_is_enforced_by_the_database.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

import pytest
from typer.testing import CliRunner

from testkit.demo_site import DATA_PATH, build_demo_site, serve_site
from tests.failures.support import SMALL, activity_rows, all_runs, file_rows, scrape, wait_for
from tests.helpers import reset_harvest_caches


def _hold_batches(monkeypatch: pytest.MonkeyPatch, openai_server: Any) -> None:
    """Every embeddings batch stays in progress until the test releases it, and a run polls it for up to 10 min:
    the runs' 30 s of harvest_env ran out on a loaded machine before the last of four threads had submitted its
    batch (the first runs gave up on their embeddings and completed, so four never ran at once)."""
    monkeypatch.setenv("HARVEST_BATCH_MAX_WAIT_SECONDS", "600")
    reset_harvest_caches()
    openai_server.configure(polls_until_complete=1_000_000)


def _in_threads(calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[threading.Thread], list[Any]]:
    """Start one flow run per call, all released at the same instant; returns the threads and their states."""
    from prefect import get_client

    # The ephemeral API server starts on first use; start it here, so the racing threads test our rule and
    # not two threads starting Prefect's server at once (on a loaded machine one of them can time out).
    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    states: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def one(index: int, url: str, config: dict[str, Any]) -> None:
        barrier.wait()
        try:
            states[index] = scrape(url, **config)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            states[index] = exc

    threads = [threading.Thread(target=one, args=(i, url, config)) for i, (url, config) in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, states


def test_two_starts_for_the_same_url_at_once_make_one_run(harvest_env, demo_site, openai_server, monkeypatch) -> None:
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    url = demo_site.base_url + "/"
    _hold_batches(monkeypatch, openai_server)  # the winner waits in its poll until the loser is back
    threads, states = _in_threads([(url, SMALL), (url, SMALL)])
    try:
        wait_for(lambda: any(s is not None for s in states), 180, "one of the two starts to return")
    finally:
        openai_server.configure(polls_until_complete=1)
        for thread in threads:
            thread.join(300)

    assert all(not isinstance(s, BaseException) and s.is_completed() for s in states), states
    summaries = sorted((s.result() for s in states), key=lambda s: s.status)
    loser, winner = summaries
    assert (loser.status, winner.status) == ("already_running", "completed")
    assert loser.run_id == winner.run_id, "the refused start names the running run"
    assert loser.activities_processed == 0 and loser.files == {}
    flow_run_ids = {str(s.state_details.flow_run_id) for s in states}
    assert len(flow_run_ids) == 2 and winner.run_id in flow_run_ids
    [row] = all_runs(db_url)
    assert (row["id"], row["url"], row["status"]) == (winner.run_id, url, "completed")
    assert openai_server.stats()["batches.create"] == 1, "one crawl, one batch"


def _distinct_activities(count: int, skip: int) -> list[dict[str, Any]]:
    seen: set[str] = set()
    chosen = []
    for activity in json.loads(DATA_PATH.read_text("utf-8")):
        if activity.get("name") and activity["name"] not in seen:
            seen.add(activity["name"])
            chosen.append(activity)
    return chosen[skip: skip + count]


def test_four_urls_at_once_keep_their_files_rows_and_cleanup_apart(harvest_env, s3, openai_server, tmp_path,
                                                                   monkeypatch) -> None:
    from harvest_cli import app

    db_url, bucket = harvest_env["HARVEST_DATABASE_URL"], harvest_env["HARVEST_BUCKET"]
    sites, names = [], []
    for n in range(4):  # four sites with different activities, so every row can be traced to its site
        acts = _distinct_activities(5, skip=5 * n)
        data = tmp_path / f"site{n}.json"
        data.write_text(json.dumps(acts), "utf-8")
        build_demo_site(tmp_path / f"site{n}", activities_path=data)
        sites.append(serve_site(tmp_path / f"site{n}"))
        names.append({a["name"] for a in acts})
    urls = [site.base_url + "/" for site in sites]
    _hold_batches(monkeypatch, openai_server)  # every batch held until all four runs have one
    threads, states = _in_threads([(url, {"max_pages": 60, "auto_import": True, "keep_files": True}) for url in urls])
    try:
        wait_for(lambda: openai_server.stats().get("batches.create", 0) == 4
                 and sum(r["status"] == "running" for r in all_runs(db_url)) == 4, 240,
                 "four runs enriching at the same time", interval=0.1)
    finally:
        openai_server.configure(polls_until_complete=1)
        for thread in threads:
            thread.join(300)
        for site in sites:
            site.stop()

    assert all(not isinstance(s, BaseException) and s.is_completed() for s in states), states
    summaries = [s.result() for s in states]
    run_ids = [s.run_id for s in summaries]
    assert len(set(run_ids)) == 4 and all(s.status == "completed" for s in summaries)
    by_url = {row["url"]: row for row in all_runs(db_url)}
    assert {url: by_url[url]["id"] for url in urls} == dict(zip(urls, run_ids))

    # Files: every recorded file of a run is under that run's prefix (or is its digest), and every object under
    # runs/ belongs to one of the four runs and is listed by it (or is one of its Prefect step results).
    keys_by_run: dict[str, set[str]] = defaultdict(set)
    for key in s3.keys(bucket, "harvest/runs/"):
        keys_by_run[key.split("/")[2]].add(key)
    assert set(keys_by_run) == set(run_ids)
    for run_id in run_ids:
        files = file_rows(db_url, run_id)
        for kind, item in files.items():
            expected = f"digests/{run_id}.jsonl" if kind == "digest" else f"runs/{run_id}/"
            assert item["uri"].startswith(f"s3://{bucket}/harvest/{expected}"), (run_id, kind, item["uri"])
        recorded = {f["uri"].removeprefix(f"s3://{bucket}/") for k, f in files.items() if k != "digest"}
        results = {k for k in keys_by_run[run_id] if k.startswith(f"harvest/runs/{run_id}/results/")}
        assert keys_by_run[run_id] == recorded | results, run_id

    # Rows: each imported activity carries the run that wrote it, came from that run's site and is one of its names.
    rows = activity_rows(db_url)
    assert len(rows) == sum(s.activities_processed for s in summaries) == sum(s.import_summary.imported for s in summaries)
    for url, run_id, summary, expected_names in zip(urls, run_ids, summaries, names):
        mine = [r for r in rows if r["run_id"] == run_id]
        assert len(mine) == summary.activities_processed > 0, url
        assert all(r["source_url"].startswith(url) for r in mine), url
        assert {r["name"] for r in mine} <= expected_names, url

    # Cleanup of one run deletes its files only.
    victim, others = run_ids[0], run_ids[1:]
    cleaned = CliRunner().invoke(app, ["runs", "cleanup", victim])
    assert cleaned.exit_code == 0 and "deleted" in cleaned.output, cleaned.output
    assert s3.keys(bucket, f"harvest/runs/{victim}/") == []
    for run_id in others:
        assert set(s3.keys(bucket, f"harvest/runs/{run_id}/")) == keys_by_run[run_id]
        assert all(f["deleted_at"] is None for f in file_rows(db_url, run_id).values())
    assert {r["id"]: r["retention"] for r in all_runs(db_url)} == {victim: "cleaned", **{r: "kept" for r in others}}
    assert len(activity_rows(db_url)) == len(rows)
