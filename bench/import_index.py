"""The import stage through its policy index (`import_final_records`: final_index.jsonl judged, then the final
lines the policy may write), first cold (every line new) and then unchanged (every line already stored).

    python -m bench.import_index DATABASE_URL [N]      (N defaults to 10,000; 3 rounds, medians reported)

DATABASE_URL names a scratch Postgres database: it is migrated, and its runs and activities are emptied before
each round. The final files are the writer's shape (bench.import_ab's records; each vector's JSON written once,
spliced into the final line and hashed for the index line by `policy_line`), in a local folder store.
Each import runs on new connections, as a new process's would. Run one measurement at a time:
the machine is shared.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa

from bench.import_ab import final_records
from harvest.models import FileRef


def write_run_files(store: Any, run_id: str, n: int) -> tuple[FileRef, FileRef]:
    """final.jsonl and final_index.jsonl of one run, as harvest.merge.final.write_final_records writes them."""
    from harvest.merge.final import policy_line
    from harvest.storage import write_jsonl
    from harvest.storage.keys import run_key

    index: list[dict[str, Any]] = []

    def finals() -> Iterator[dict[str, Any]]:
        for record in final_records(n):
            vector = np.round(np.asarray(record["embedding"], dtype=np.float32).astype(np.float64), 8)
            text = orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY)
            record["embedding"] = orjson.Fragment(text)
            index.append(policy_line(record, text))
            yield record

    final = write_jsonl(store, run_key(run_id, "final", "jsonl"), "final_jsonl", finals())
    return final, write_jsonl(store, run_key(run_id, "final_index", "jsonl"), "final_index", index)


def register(engine: sa.Engine, run_id: str, files: tuple[FileRef, FileRef]) -> None:
    from harvest.db import runs

    runs.create_run(engine, run_id, "https://bench.invalid/", {})
    runs.finish_run(engine, run_id, "completed")
    for ref in files:
        runs.record_file(engine, run_id, ref)


def main() -> int:
    url = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    from harvest.db.engine import dispose_all, get_engine, upgrade
    from harvest.import_.stage import import_final_records
    from harvest.storage import LocalStore

    upgrade(url)
    engine = get_engine(url)
    seconds: dict[str, list[float]] = {"cold": [], "unchanged": []}
    cpu: dict[str, list[float]] = {"cold": [], "unchanged": []}  # this process's CPU: less sensitive to a busy machine
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = LocalStore(Path(tmp))
            files = {run_id: write_run_files(store, run_id, n) for run_id in ("bench-1", "bench-2")}
            for round_ in range(3):
                with engine.begin() as connection:
                    connection.exec_driver_sql("TRUNCATE activities, run_files, scrape_runs CASCADE")
                for side, run_id in (("cold", "bench-1"), ("unchanged", "bench-2")):
                    register(engine, run_id, files[run_id])
                    # Each import on new connections, as in a new process: psycopg prepares a
                    # statement run five times, and a key lookup Postgres planned while the table was empty
                    # (the start of a cold import) scans the table whole in a later import on that connection.
                    engine.dispose()
                    started, cpu_before = time.perf_counter(), time.process_time()
                    _, summary = import_final_records(store, run_id, files[run_id][0], engine)
                    seconds[side].append(time.perf_counter() - started)
                    cpu[side].append(time.process_time() - cpu_before)
                    expected = (n, 0) if side == "cold" else (0, n)
                    assert (summary.imported, summary.skipped) == expected and not summary.failed, summary
                    took = f"{seconds[side][-1]:.2f} s ({cpu[side][-1]:.2f} s CPU)"
                    print(f"round {round_ + 1} {side}: {took}", flush=True)
    finally:
        dispose_all()
    result = {"n": n, "seconds": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()},
              "median_seconds": {k: round(statistics.median(vs), 2) for k, vs in seconds.items()},
              "median_cpu_seconds": {k: round(statistics.median(vs), 2) for k, vs in cpu.items()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
