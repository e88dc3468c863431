"""The embedded defaults, what `make demo` and a first-time user run: SQLite and a local folder under
HARVEST_HOME, no HARVEST_DATABASE_URL, no HARVEST_STORAGE_URL. The installed `harvest scrape` runs a whole
flow in a subprocess against the demo site and the local OpenAI/geocoder stand-ins; the test then reads what
it left behind with sqlite3 and the file system, not through harvest."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from tests.helpers import SEEDED_HOME_SERVER_SETTINGS, TEST_OPENAI_KEY

HARVEST = str(Path(sys.executable).parent / "harvest")


def _path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(url2pathname(urlsplit(uri).path))


def test_a_whole_scrape_on_sqlite_and_a_local_folder_through_the_cli(
    demo_site, openai_server, geocoder_server, tmp_path
) -> None:
    home = tmp_path / "harvest-home"
    env = {k: v for k, v in os.environ.items()  # nothing but the defaults: a new home's server migrates it
           if not k.startswith(("HARVEST_", "OPENAI_", "AWS_", "GOOGLE_")) and k not in SEEDED_HOME_SERVER_SETTINGS}
    env.update({
        "HARVEST_HOME": str(home),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "OPENAI_API_KEY": TEST_OPENAI_KEY,
        "OPENAI_BASE_URL": openai_server.base_url,
        "HARVEST_GEOCODER": "nominatim",
        "HARVEST_GEOCODER_URL": geocoder_server.base_url,
        "HARVEST_GEOCODER_RATE_PER_SECOND": "200",
        "HARVEST_ALLOW_PRIVATE_NETWORKS": "true",
        "HARVEST_BATCH_POLL_SECONDS": "0.2",
        "HARVEST_BATCH_POLL_MAX_SECONDS": "0.5",
        "HARVEST_EMBEDDINGS_SYNC_BELOW": "0",  # the batch path, the one with polling and files
        "HARVEST_PREFECT_SERVER": "temporary",  # Prefect's API for this command only: nothing outlives the test
    })
    for server in (openai_server, geocoder_server):
        server.reset()
    done = subprocess.run(
        [HARVEST, "scrape", demo_site.base_url + "/", "--max-pages", "25", "--max-extractions", "8",
         "--config", json.dumps({"auto_import": True, "keep_files": True}), "--json"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    run_id, processed = summary["run_id"], summary["activities_processed"]
    assert summary["status"] == "completed" and processed > 0
    assert summary["import_summary"]["imported"] == processed and summary["import_summary"]["failed"] == 0

    # The database is the SQLite file under HARVEST_HOME, holding the run, its files and the activities.
    database = home / "harvest.db"
    assert database.is_file()
    connection = sqlite3.connect(database)
    connection.row_factory = sqlite3.Row
    try:
        [run] = connection.execute("SELECT * FROM scrape_runs").fetchall()
        files = connection.execute("SELECT * FROM run_files WHERE run_id = ? AND deleted_at IS NULL",
                                   (run_id,)).fetchall()
        rows = connection.execute("SELECT * FROM activities").fetchall()
    finally:
        connection.close()
    assert (run["id"], run["status"], run["retention"]) == (run_id, "completed", "kept")
    assert run["activities_processed"] == processed and run["expires_at"] is not None
    assert json.loads(run["import_summary"])["imported"] == processed
    assert len(rows) == processed
    assert all(row["embedding"] is not None and len(json.loads(row["embedding"])) == 1536 for row in rows)
    assert sum(1 for row in rows if row["latitude"] is not None) > len(rows) // 2
    assert all(row["source_url"].startswith(demo_site.base_url) for row in rows)

    # The files are in the local folder under HARVEST_HOME, each matching its row byte for byte.
    storage = home / "storage"
    by_kind = {row["kind"]: row for row in files}
    assert {"raw_activities", "standardized", "merged", "final_jsonl", "embeddings"} <= set(by_kind)
    for row in files:
        path = _path(row["uri"])
        assert path.is_relative_to(storage) and path.is_file(), row["uri"]
        assert (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()) == (row["bytes"], row["sha256"])
    final = [json.loads(line) for line in _path(by_kind["final_jsonl"]["uri"]).read_text().splitlines()]
    assert len(final) == processed and {r["name"] for r in final} == {row["name"] for row in rows}
    images = [r["image"]["uri"] for r in final if r.get("image") and r["image"].get("uri")]
    assert images and all(_path(uri).is_file() and _path(uri).suffix == ".webp" for uri in images)
