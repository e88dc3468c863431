"""`python -m bench.dask_processes N OUT`: one cold run of the flow over N activities with the task runner the
environment names (HARVEST_TASK_RUNNER, HARVEST_DASK_PROCESSES), for the bench's `dask` entry.

Writes the wall time and the sha256 of the run's standardized, final and digest files: two runs over the
same input in the same bucket produce byte-identical files when their output is the same (images and
digests are keyed by content, not by run).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from bench.inputs import write_input


def main() -> int:
    n, out = int(sys.argv[1]), Path(sys.argv[-1])
    from flows.scrape import scrape_website
    from harvest.db.engine import get_engine, upgrade
    from harvest.models import RunConfig
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    with engine.begin() as connection:  # cold, like bench.one's first run: nothing reused from an earlier run
        connection.exec_driver_sql(
            "TRUNCATE activities, run_files, scrape_runs, geocode_cache, image_cache, llm_answers CASCADE"
        )
    with tempfile.TemporaryDirectory() as tmp:
        source = write_input(Path(tmp) / "raw.jsonl", n)
        started = time.perf_counter()
        state = scrape_website(
            url="https://bench.invalid/", config=RunConfig(auto_import=True, keep_files=True, max_extractions=n),
            from_raw=str(source), return_state=True,
        )
        wall = time.perf_counter() - started
    summary = state.result()
    from harvest.db.runs import get_run

    row = get_run(engine, summary.run_id) or {}
    steps = row.get("steps") or {}
    enrichment = sorted({
        process for step in ("geocode", "embeddings_submit") for process in steps.get(step, {}).get("processes", [])
    })
    result = {
        "n": n,
        "task_runner": settings.task_runner,
        "dask_processes": settings.dask_processes,
        "activities": summary.activities_processed,
        "wall_s": round(wall, 2),
        "sha256": {kind: summary.files[kind].sha256 for kind in ("standardized", "final_jsonl", "digest")},
        "enrichment_processes": enrichment,
        "flow_process_pid": row.get("pid"),
    }
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
