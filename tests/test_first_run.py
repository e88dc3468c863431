"""A new user's first `harvest scrape URL` (issue 11): the installed console script, a brand-new HOME (so a
fresh PREFECT_HOME and an ephemeral Prefect database that does not exist yet), and no Prefect variable at all,
none of those conftest sets for the other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import scrape_runs

HARVEST = str(Path(sys.executable).parent / "harvest")


def test_first_scrape_on_a_fresh_machine_with_no_prefect_settings(harvest_env, demo_site, tmp_path) -> None:
    home = tmp_path / "new-user"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        # Only what points harvest at this machine's test services; local storage, so no cloud credentials.
        "HARVEST_DATABASE_URL": harvest_env["HARVEST_DATABASE_URL"],
        "HARVEST_STORAGE_URL": (tmp_path / "store").as_uri(),
        "HARVEST_GEOCODER": "nominatim",
        "HARVEST_GEOCODER_URL": harvest_env["HARVEST_GEOCODER_URL"],
        "HARVEST_GEOCODER_RATE_PER_SECOND": "200",
        "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",
    }
    assert not [name for name in env if name.startswith("PREFECT_")]
    started = time.monotonic()
    try:
        done = subprocess.run(
            [HARVEST, "scrape", demo_site.base_url + "/", "--max-pages", "25", "--max-extractions", "8", "--json"],
            env=env, capture_output=True, text=True, timeout=900,
        )
        seconds = time.monotonic() - started
        status = subprocess.run([HARVEST, "server", "status", "--json"], env=env, capture_output=True, text=True)
    finally:  # the first run left a local Prefect server running for later commands
        stopped = subprocess.run([HARVEST, "server", "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Timed out while attempting to connect" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed"
    assert summary["activities_processed"] == summary["files"]["final_jsonl"]["records"] > 0
    final = Path(summary["files"]["final_jsonl"]["uri"].removeprefix("file://"))
    records = [json.loads(line) for line in final.read_text("utf-8").splitlines() if line.strip()]
    assert len(records) == summary["activities_processed"] and all(record["name"] for record in records)
    with get_engine(harvest_env["HARVEST_DATABASE_URL"]).begin() as connection:
        row = connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == summary["run_id"])).mappings().one()
    assert row["status"] == "completed"
    assert (home / ".prefect" / "prefect.db").is_file()  # Prefect's database was created by this run, from nothing
    assert json.loads(status.stdout)["running"] is True, status.stdout + status.stderr
    assert "its UI is at http://127.0.0.1:" in done.stderr, "the UI's address is said once"
    assert "stopped the local Prefect server" in stopped.stdout, stopped.stdout + stopped.stderr
    print(f"first run on a fresh home: {seconds:.1f}s")  # the measured cold start, shown with -s
