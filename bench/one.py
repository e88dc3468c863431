"""One benchmark run (child process of bench.run): N activities through the whole flow with auto-import."""

from __future__ import annotations

import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from bench.inputs import write_input


def copy_floor(engine: sa.Engine, final_path: Path) -> float:
    """Rows/s of a plain COPY of the same final records into a scratch table: the import's floor."""
    rows = [json.loads(line) for line in open(final_path)]
    buffer = io.StringIO()
    for row in rows:
        vector = "{" + ",".join(map(str, row["embedding"] or [])) + "}"
        buffer.write("\t".join([row["id"], row["name"].replace("\t", " ").replace("\n", " "), vector]) + "\n")
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS bench_copy_floor")
        connection.exec_driver_sql("CREATE TABLE bench_copy_floor (id text, name text, embedding real[])")
        raw = connection.connection.driver_connection
        started = time.perf_counter()
        with raw.cursor() as cursor:
            with cursor.copy("COPY bench_copy_floor FROM STDIN") as copy:
                copy.write(buffer.getvalue())
        elapsed = time.perf_counter() - started
        connection.exec_driver_sql("DROP TABLE bench_copy_floor")
    return len(rows) / elapsed if elapsed else 0.0


def main() -> int:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    from flows.scrape import scrape_website
    from harvest.db.engine import get_engine, upgrade
    from harvest.models import RunConfig
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE activities, run_files, scrape_runs CASCADE")
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
    from blocks.storage import resolve_store

    row = get_run(engine, summary.run_id)
    steps = row["steps"]
    store = resolve_store(settings)
    with tempfile.TemporaryDirectory() as tmp:
        final_path = Path(tmp) / "final.jsonl"
        store.get_file(store.key_for(summary.files["final_jsonl"].uri), final_path)
        copy_rate = copy_floor(engine, final_path)
    import_seconds = steps.get("import", {}).get("seconds") or 0
    result = {
        "n": n,
        "activities": summary.activities_processed,
        "wall_s": round(wall, 2),
        "stage_wall_s": {name: stats.get("seconds") for name, stats in steps.items() if "seconds" in stats},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bytes_between_tasks": summary.bytes_between_tasks,
        "task_runs": summary.task_runs,
        "stored_bytes": {kind: ref.bytes for kind, ref in summary.files.items()},
        "embedding_bytes_per_activity": round(summary.files["embeddings"].bytes / max(1, summary.activities_processed), 1),
        "import_rows_per_s": round(summary.activities_processed / import_seconds, 1) if import_seconds else None,
        "copy_rows_per_s": round(copy_rate, 1),
        "import_summary": summary.import_summary.model_dump() if summary.import_summary else None,
    }
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
