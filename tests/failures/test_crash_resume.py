"""SIGKILL of the process running a flow, as a user meets it: `harvest scrape` killed during enrichment,
then `harvest sweep` and `harvest runs resume` from a terminal (subprocesses on the session's Prefect API, which,
like a user's local API with no worker, can never learn that the run died: nothing is left to report it).

The deployed variant (a worker's flow-run process killed, the worker's on_crashed hook records it) is
tests/e2e/test_deployment.py::test_cancelled_and_sigkilled_deployed_runs_keep_their_files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.failures.support import activity_rows, all_runs, file_rows, run_row, wait_for
from tests.helpers import session_prefect_api_url

HARVEST = str(Path(sys.executable).parent / "harvest")


def test_sigkill_during_enrichment_is_reconciled_then_resumed_without_recrawl_or_duplicates(
    harvest_env, s3, demo_site, openai_server, geocoder_server, tmp_path
) -> None:
    db_url, bucket = harvest_env["HARVEST_DATABASE_URL"], harvest_env["HARVEST_BUCKET"]
    # A long batch deadline: the run must still be polling when it is killed, however slow this machine is.
    env = {**os.environ, **harvest_env, "PREFECT_API_URL": session_prefect_api_url(),
           "HARVEST_BATCH_MAX_WAIT_SECONDS": "900"}

    def harvest(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HARVEST, *args], env=env, capture_output=True, text=True, timeout=300)

    openai_server.configure(polls_until_complete=1_000_000)  # the batch stays in progress: the run sits in its poll
    scraping = subprocess.Popen(
        [HARVEST, "scrape", demo_site.base_url + "/", "--max-pages", "30", "--max-extractions", "10",
         "--auto-import", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        def enriching() -> dict | None:
            if scraping.poll() is not None:
                raise AssertionError(f"harvest scrape ended early: {scraping.communicate()[1][-3000:]}")
            rows = all_runs(db_url)
            if len(rows) != 1:
                return None
            row = rows[0]
            # Every other enrichment step has stored its result, so only the embeddings poll is unfinished.
            prefix = f"harvest/runs/{row['id']}/results/"
            # A joined map's result name carries its chunk layout (images_map-<size>x<max>-v<n>.json).
            keys = {key[len(prefix):].split("-")[0].removesuffix(".json") for key in s3.keys(bucket, prefix)}
            done = {"crawl", "standardize", "images_map", "geocoded_map", "embeddings_batch"}
            polled = openai_server.stats().get("batches.retrieve", 0) >= 2
            return row if done <= keys and polled else None

        try:
            row = wait_for(enriching, 240, "the run to sit in its embeddings poll", interval=0.2)
        except AssertionError as exc:
            rows = [(r["id"], r["status"], sorted(r["steps"] or {})) for r in all_runs(db_url)]
            raise AssertionError(f"{exc}; runs {rows}; keys {s3.keys(bucket)}; OpenAI {openai_server.stats()}") from None
        assert scraping.poll() is None, scraping.communicate()[1][-3000:]
        run_id = row["id"]
        assert (row["host"], row["pid"]) == (socket.gethostname(), scraping.pid), "the row names the flow's process"
        scraping.send_signal(signal.SIGKILL)
        scraping.wait(10)
    finally:
        try:  # the process group's leftovers: no process outlives the test
            os.killpg(scraping.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        scraping.communicate(timeout=10)
    assert scraping.returncode == -signal.SIGKILL

    killed = run_row(db_url, run_id)
    assert killed["status"] == "running", "nothing could record the kill"
    pages, openai_before = demo_site.total_requests(), openai_server.stats()
    kept_files = file_rows(db_url, run_id)
    assert {"raw_activities", "standardized", "images_map", "geocoded_map", "embeddings_batch_input"} <= set(kept_files)

    # The sweep finds the run's process gone (same host, pid no longer alive) and records it as crashed.
    swept = harvest("sweep", "--json")
    assert swept.returncode == 0, swept.stderr[-3000:]
    report = json.loads(swept.stdout)
    assert report["reconciled"] == [{
        "run_id": run_id, "status": "crashed", "reason": f"its process {scraping.pid} on {socket.gethostname()} is gone",
    }], report
    assert report["orphans"] == [] and report["deleted_objects"] == 0, "a crashed run's files are evidence, kept"
    crashed = run_row(db_url, run_id)
    assert (crashed["status"], crashed["retention"]) == ("crashed", "kept")
    assert crashed["error"].startswith("reconciled: its process") and crashed["finished_at"] is not None
    assert {kind: f["deleted_at"] for kind, f in file_rows(db_url, run_id).items()} == {kind: None for kind in kept_files}

    # The batch OpenAI was still running finishes; the resumed run polls that batch, not a new one.
    openai_server.configure(polls_until_complete=1)
    resumed = harvest("runs", "resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert (summary["run_id"], summary["status"]) == (run_id, "completed")

    assert demo_site.total_requests() == pages, "no page or image fetched again: no re-crawl"
    openai_after = openai_server.stats()
    for counter in ("chat.completions", "files.create", "batches.create"):
        assert openai_after.get(counter, 0) == openai_before.get(counter, 0), f"{counter}: nothing paid for twice"
    assert openai_after["batches.lines"] == summary["activities_processed"]

    final = run_row(db_url, run_id)
    assert (final["status"], final["retention"], final["error"]) == ("completed", "cleaned", None)
    rows = activity_rows(db_url)
    assert len(rows) == len({r["id"] for r in rows}) == final["activities_processed"] == summary["activities_processed"] > 0
    assert summary["import_summary"]["imported"] == len(rows) and summary["import_summary"]["failed"] == 0
    assert all(r["run_id"] == run_id and r["embedding"] is not None for r in rows)
    assert len(all_runs(db_url)) == 1, "resumed as the same run, not a second one"
