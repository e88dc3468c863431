"""One benchmark run (child process of bench.run): N activities through the whole flow with auto-import."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import sqlalchemy as sa

from bench.inputs import write_input
from bench.rss import RssSampler, peak_rss_mb, retained_report


def psycopg_connection(connection: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's: the floor speaks psycopg's COPY directly, so it needs Postgres
    through psycopg (an invalidated pool connection has no driver connection; another driver has no COPY)."""
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        kind = f"{type(driver).__module__}.{type(driver).__qualname__}"
        raise RuntimeError(f"the COPY floor needs a live psycopg connection to Postgres, not {kind}")
    return driver


def copy_floor(engine: sa.Engine, final_path: Path, workdir: Path) -> dict[str, float]:
    """The import's floor: the same final records, every `activities` column, in a plain binary COPY into a
    scratch table with no index or constraint (no dedupe, no upsert).

    `copy_rows_per_s` times the whole plain load of the file: read each line, parse it, build the row, COPY it
    through psycopg with the import's own column types and dumpers (what any import of final.jsonl must do at
    least). `copy_only_rows_per_s` times the COPY statement alone, streaming from a local file the binary
    rows Postgres itself wrote (`COPY ... TO STDOUT`) from that first load. Both stream: memory stays flat.
    """
    from harvest.db.engine import utcnow
    from harvest.import_.copy import COLUMNS, Float4ArrayBinaryDumper, converters, copy_row
    from harvest.import_.rows import record_to_row

    now = utcnow()
    with engine.begin() as connection:
        zone = ZoneInfo(str(connection.exec_driver_sql("SELECT current_setting('TimeZone')").scalar_one()))
    by_column = converters(zone)
    copy_in = f"COPY bench_copy_floor ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    copy_out = f"COPY bench_copy_floor ({', '.join(COLUMNS)}) TO STDOUT (FORMAT BINARY)"

    def scratch(connection: sa.Connection) -> None:
        connection.exec_driver_sql("DROP TABLE IF EXISTS bench_copy_floor")
        connection.exec_driver_sql("CREATE TABLE bench_copy_floor (LIKE activities)")

    rows = 0
    with engine.begin() as connection:
        scratch(connection)
        raw = psycopg_connection(connection)
        started = time.perf_counter()
        with raw.cursor() as cursor, open(final_path, "rb") as lines:
            cursor.adapters.register_dumper(np.ndarray, Float4ArrayBinaryDumper)
            with cursor.copy(copy_in) as copy:
                copy.set_types([kind for _, kind, _ in by_column])
                for line in lines:
                    copy.write_row(copy_row(record_to_row(json.loads(line), "bench", now), by_column))
                    rows += 1
    load_seconds = time.perf_counter() - started  # after the commit

    encoded = workdir / "copy.bin"
    with engine.begin() as connection, open(encoded, "wb") as out:
        raw = psycopg_connection(connection)
        with raw.cursor() as cursor, cursor.copy(copy_out) as copy:
            for chunk in copy:
                out.write(chunk)
    with engine.begin() as connection:
        scratch(connection)
        raw = psycopg_connection(connection)
        started = time.perf_counter()
        with raw.cursor() as cursor, cursor.copy(copy_in) as copy, open(encoded, "rb") as data:
            while chunk := data.read(1 << 20):
                copy.write(chunk)
    copy_seconds = time.perf_counter() - started
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE bench_copy_floor")
    return {
        "copy_rows_per_s": round(rows / load_seconds, 1) if load_seconds else 0.0,
        "copy_only_rows_per_s": round(rows / copy_seconds, 1) if copy_seconds else 0.0,
    }


def main() -> int:
    n, out = int(sys.argv[1]), Path(sys.argv[-1])  # python -m bench.one N [--rerun] OUT
    rerun = "--rerun" in sys.argv[2:-1]  # a second run over the same input: keep what the first one stored
    from flows.scrape import scrape_website
    from harvest.db.engine import get_engine, upgrade
    from harvest.models import RunConfig
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    engine = get_engine(settings.database_url)
    if not rerun:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "TRUNCATE activities, run_files, scrape_runs, geocode_cache, image_cache, llm_answers, page_cache "
                "CASCADE"
            )  # a first run starts cold: nothing cached from an earlier bench
    with tempfile.TemporaryDirectory() as tmp:
        source = write_input(Path(tmp) / "raw.jsonl", n)
        trace = float(os.environ.get("BENCH_TRACE_MB") or 0) or None
        with RssSampler(trace_growth_mb=trace) as sampler:
            started = time.perf_counter()
            state = scrape_website(
                url="https://bench.invalid/", config=RunConfig(auto_import=True, keep_files=True, max_extractions=n),
                from_raw=str(source), return_state=True,
            )
            wall = time.perf_counter() - started
        peak_rss = peak_rss_mb()  # the flow's; the floor below is not counted
    if os.environ.get("BENCH_RSS_TIMELINE"):
        retained_report(os.environ["BENCH_RSS_TIMELINE"])
    summary = state.result()
    from blocks.storage import resolve_store
    from harvest.db.runs import get_run

    row = get_run(engine, summary.run_id)
    if row is None:
        raise RuntimeError(f"the flow finished run {summary.run_id} but scrape_runs has no row for it")
    steps = row["steps"]
    store = resolve_store(settings)
    floor: dict[str, float] = {}
    if not rerun:
        with tempfile.TemporaryDirectory() as tmp:
            final_path = Path(tmp) / "final.jsonl"
            store.get_file(store.key_for(summary.files["final_jsonl"].uri), final_path)
            floor = copy_floor(engine, final_path, Path(tmp))
    import_seconds = steps.get("import", {}).get("seconds") or 0
    per_1000 = 1000 / max(1, summary.activities_processed)
    google = summary.cost.get("usage", {}).get("geocode_requests_nominatim", 0) * settings.prices().unit_prices()[
        "geocode_requests_google"]  # what the same geocoder requests would cost at Google's price
    result = {
        "n": n,
        "activities": summary.activities_processed,
        "wall_s": round(wall, 2),
        "stage_wall_s": {name: stats.get("seconds") for name, stats in steps.items() if "seconds" in stats},
        "peak_rss_mb": round(peak_rss, 1),
        "peak_rss_mb_by_stage": sampler.report(),
        "bytes_between_tasks": summary.bytes_between_tasks,
        "task_runs": summary.task_runs,
        "stored_bytes": {kind: ref.bytes for kind, ref in summary.files.items()},
        "embedding_bytes_per_activity": round(
            summary.files["embeddings"].bytes / max(1, summary.activities_processed), 1
        ),
        "import_rows_per_s": round(summary.activities_processed / import_seconds, 1) if import_seconds else None,
        **floor,
        "import_summary": summary.import_summary.model_dump() if summary.import_summary else None,
        "cost_usd": summary.cost.get("cost_usd", 0.0),
        "cost_usd_per_1000_activities": round(summary.cost.get("cost_usd", 0.0) * per_1000, 6),
        "cost_usd_per_1000_activities_with_google": round((summary.cost.get("cost_usd", 0.0) + google) * per_1000, 6),
        "cost_usage": summary.cost.get("usage", {}),
    }
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
