"""`harvest runs resume ID` on a run whose process was SIGKILLed (issue 11): the run is still marked running, and
resume reconciles it itself (same host, pid dead) and finishes it, with no `harvest sweep` first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.failures.support import activity_rows, all_runs, run_row, wait_for
from tests.helpers import session_prefect_api_url

HARVEST = str(Path(sys.executable).parent / "harvest")


def test_resume_reconciles_a_run_whose_process_was_killed_then_finishes_it(
    harvest_env, s3, demo_site, openai_server, geocoder_server, tmp_path
) -> None:
    db_url, bucket = harvest_env["HARVEST_DATABASE_URL"], harvest_env["HARVEST_BUCKET"]
    env = {**os.environ, **harvest_env, "PREFECT_API_URL": session_prefect_api_url(),
           "HARVEST_BATCH_MAX_WAIT_SECONDS": "900"}
    openai_server.configure(polls_until_complete=1_000_000)  # the run sits in its embeddings poll until killed
    scraping = subprocess.Popen(
        [HARVEST, "scrape", demo_site.base_url + "/", "--max-pages", "30", "--max-extractions", "10",
         "--auto-import", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        def polling() -> dict | None:
            if scraping.poll() is not None:
                raise AssertionError(f"harvest scrape ended early: {scraping.communicate()[1][-3000:]}")
            rows = all_runs(db_url)
            if len(rows) != 1:
                return None
            keys = set(s3.keys(bucket, f"harvest/runs/{rows[0]['id']}/results/"))
            batch = f"harvest/runs/{rows[0]['id']}/results/embeddings_batch.json"
            return rows[0] if batch in keys and openai_server.stats().get("batches.retrieve", 0) >= 2 else None

        row = wait_for(polling, 240, "the run to sit in its embeddings poll", interval=0.2)
        run_id = row["id"]
        scraping.send_signal(signal.SIGKILL)
        scraping.wait(10)
    finally:
        try:  # the CLI's local Prefect API server dies with its process group
            os.killpg(scraping.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        scraping.communicate(timeout=10)
    assert run_row(db_url, run_id)["status"] == "running", "nothing could record the kill"

    openai_server.configure(polls_until_complete=1)
    resumed = subprocess.run([HARVEST, "runs", "resume", run_id, "--json"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run {run_id} was left running by a process that is gone: marked crashed" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["run_id"], summary["status"]) == (run_id, "completed")
    final = run_row(db_url, run_id)
    assert final["status"] == "completed" and final["error"] is None
    assert len(activity_rows(db_url)) == summary["activities_processed"] > 0
    assert len(all_runs(db_url)) == 1, "resumed as the same run"
