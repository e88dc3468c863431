"""A/B of the Postgres COPY import: the hand-written binary encoder it had (kept below as the reference) against
the import as it is (`import_activities`: psycopg's COPY with the float4[] dumper, new keys straight into the table),
on the same N final records; plus the COPY-only floor of bench.one. The old side is the import as it was before
issue 13: every row through a staging table and the upsert.

    python -m bench.import_ab [N] [OUT.json]      (N defaults to 10,000; rounds interleaved, 3 each)

Both import into an empty `activities` table of a scratch database (created and dropped here) from the same
final JSONL file, read as the import stage reads it (`parse_final_line`, vectors parsed only when written).
After each import the stored rows are fingerprinted (every column but the write timestamps): old and new must
store the same rows. The machine is shared: rounds alternate which side goes first, and medians are reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import sqlalchemy as sa

from bench.inputs import varied_activities
from bench.one import copy_floor

DIMENSIONS = 1536
BASE_URL = "postgresql+psycopg://harvest:harvest@127.0.0.1:5432/postgres"


def final_records(count: int) -> Iterator[dict[str, Any]]:
    """Final records shaped as the flow writes them (location with coordinates, image, tags, a 1,536-float
    vector as the embeddings API returns it), built from bench.inputs' varied fixture activities."""
    rng = np.random.default_rng(13)
    for index, raw in enumerate(varied_activities(count)):
        location = raw.get("location") or {}
        yield {
            "id": hashlib.sha256(f"{raw['name']}|{index}".encode()).hexdigest()[:32],
            "name": raw["name"], "description": raw.get("description"), "urgency": "medium", "is_public": True,
            "location": {
                "name": location.get("name"),
                "formatted_address": f"{index}/{location.get('formattedAddress') or 'Rd'}",  # one row per record
                "street_address": location.get("street_address"), "city": location.get("city"),
                "country_code": location.get("country_code"), "latitude": -37.8 + random.Random(index).random(),
                "longitude": 145.0, "place_id": f"place-{index}",
            },
            "start_date": "2024-05-01T10:00:00+10:00" if index % 2 else None, "end_date": "2024-06-01",
            "tags": ["park", "playground", f"t{index % 7}"],
            "embedding": [float(x) for x in rng.standard_normal(DIMENSIONS, dtype=np.float32)],
            "image": {"uri": f"s3://bench/images/{index}.webp", "width": 640, "height": 480},
            "source_url": f"https://bench.invalid/a/{index}",
            "content_hash": hashlib.sha256(str(index).encode()).hexdigest(),
        }


# --- the reference: the hand-written binary COPY encoder the import had before psycopg's COPY ---------------

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_NULL = struct.pack("!i", -1)
_FLOAT4_OID = 700
_ARRAY_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f4")])


def _old_encoders(session_zone: ZoneInfo) -> dict[str, Callable[[Any], bytes]]:
    from sqlalchemy.dialects import postgresql

    from harvest.db.schema import Timestamp, activities
    from harvest.enrich.embeddings.vectors import parse_vector as _vector

    def text(value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {type(value).__name__}")
        return value.encode("utf-8")

    def float8(value: Any) -> bytes:
        if isinstance(value, bool):
            raise TypeError("expected a number, got bool")
        return struct.pack("!d", float(value))

    def int4(value: Any) -> bytes:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected an integer, got {value!r}")
        return struct.pack("!i", int(value))

    def boolean(value: Any) -> bytes:
        return b"\x01" if value else b"\x00"

    def jsonb(value: Any) -> bytes:
        return b"\x01" + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def float4_array(value: Any) -> bytes:
        value = _vector(value)
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise TypeError(f"embedding is a {type(value).__name__}, not a list of numbers")
        values = np.asarray(value, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError("embedding is not a flat list of numbers")
        if values.size == 0:
            return struct.pack("!iii", 0, 0, _FLOAT4_OID)
        elements = np.empty(values.size, dtype=_ARRAY_ELEMENT)
        elements["length"] = 4
        elements["value"] = values
        return struct.pack("!iiiii", 1, 0, _FLOAT4_OID, values.size, 1) + elements.tobytes()

    def timestamptz(value: datetime) -> bytes:
        if value.tzinfo is None:
            value = value.replace(tzinfo=session_zone)
        delta = value - _PG_EPOCH
        return struct.pack("!q", (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)

    by_type: dict[str, Callable[[Any], bytes]] = {}
    for column in activities.columns:
        kind = column.type.dialect_impl(postgresql.dialect())
        if isinstance(kind, postgresql.ARRAY):
            by_type[column.name] = float4_array
        elif isinstance(kind, postgresql.JSONB):
            by_type[column.name] = jsonb
        elif isinstance(kind, (Timestamp, sa.DateTime)):
            by_type[column.name] = timestamptz
        elif isinstance(kind, sa.Boolean):
            by_type[column.name] = boolean
        elif isinstance(kind, sa.Integer):
            by_type[column.name] = int4
        elif isinstance(kind, sa.Float):
            by_type[column.name] = float8
        else:
            by_type[column.name] = text
    return by_type


def _old_encode_row(row: dict[str, Any], encoders: dict[str, Callable[[Any], bytes]]) -> bytes:
    from harvest.import_.copy import COLUMNS

    parts = [struct.pack("!h", len(COLUMNS))]
    for name in COLUMNS:
        value = row[name]
        if value is None:
            parts.append(_NULL)
        else:
            data = encoders[name](value)
            parts.append(struct.pack("!i", len(data)))
            parts.append(data)
    return b"".join(parts)


def old_import_copy(engine: sa.Engine, records: Iterable[dict[str, Any]], *, run_id: str, batch_size: int = 500) -> Any:
    """The COPY import as it was (its loop, with the unchanged policy helpers of harvest.import_)."""
    from harvest.db.engine import transaction, utcnow
    from harvest.enrich.registry import enrichments
    from harvest.import_.activities import _stored_rows, run_started_at
    from harvest.import_.batch import record_failure as _record_failure
    from harvest.import_.copy import COLUMNS
    from harvest.import_.policy import STAGE as _STAGE
    from harvest.import_.policy import import_table
    from harvest.import_.rows import record_to_row

    table = import_table(enrichments())
    _UPSERT_SQL, _writes = table.staged_upsert_sql, table.writes
    from harvest.models import ImportSummary

    summary = ImportSummary()
    now = utcnow()
    with transaction(engine) as connection:
        zone = ZoneInfo(str(connection.exec_driver_sql("SELECT current_setting('TimeZone')").scalar_one()))
    encoders = _old_encoders(zone)
    started = run_started_at(engine, run_id)
    iterator = iter(records)
    while True:
        rows: dict[str, dict[str, Any]] = {}
        consumed = 0
        for record in islice(iterator, batch_size):
            consumed += 1
            try:
                row = record_to_row(record, run_id, now, started)
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
                _record_failure(summary, record, exc)
                continue
            if row["dedupe_key"] in rows:
                summary.skipped += 1
            rows[row["dedupe_key"]] = row
        stored, _ = _stored_rows(engine, list(rows), table, None)  # the old import knew no claims
        unchanged = {key for key, row in rows.items() if not _writes(stored.get(key), row)}
        summary.skipped += len(unchanged)
        encoded: list[bytes] = []
        for key, row in rows.items():
            if key in unchanged:
                continue
            try:
                encoded.append(_old_encode_row(row, encoders))
            except (ValueError, TypeError, AttributeError, OverflowError, struct.error) as exc:
                _record_failure(summary, row, exc)
        if encoded:
            with transaction(engine) as connection:
                connection.exec_driver_sql(
                    f"CREATE TEMPORARY TABLE {_STAGE} (LIKE activities INCLUDING DEFAULTS) ON COMMIT DROP"
                )
                driver = cast(Any, connection.connection.driver_connection)
                with driver.cursor() as cursor:
                    with cursor.copy(f"COPY {_STAGE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.write(_COPY_HEADER)
                        for data in encoded:
                            copy.write(data)
                        copy.write(_COPY_TRAILER)
                    cursor.execute(_UPSERT_SQL)
                    flags = [row[0] for row in cursor.fetchall()]
            inserted = sum(1 for flag in flags if flag)
            summary.imported += inserted
            summary.updated += len(flags) - inserted
        if consumed < batch_size:
            return summary


# --- the A/B --------------------------------------------------------------------------------------------

def _read(path: Path) -> Iterator[dict[str, Any]]:
    from harvest.enrich.embeddings.vectors import parse_final_line

    with open(path, "rb") as lines:
        for line in lines:
            yield parse_final_line(line)


def fingerprint(engine: sa.Engine) -> str:
    """sha256 over every stored row as Postgres prints it, without the write timestamps and run time."""
    from harvest.import_.copy import COLUMNS

    # `source` too: the reference never heard of sources (the new side records the run's, and its claims)
    compared = [c for c in COLUMNS if c not in ("created_at", "updated_at", "run_started_at", "source")]
    digest = hashlib.sha256()
    with engine.begin() as connection:
        for (text,) in connection.exec_driver_sql(
            f"SELECT ROW({', '.join(compared)})::text FROM activities ORDER BY dedupe_key"
        ):
            digest.update(text.encode() + b"\n")
    return digest.hexdigest()


def _backend_cpu(engine: sa.Engine) -> float:
    """CPU seconds (user + system) so far of every Postgres backend connected to this scratch database (Linux
    /proc; the benchmark runs beside its Postgres). Backends that ended meanwhile are not counted."""
    with engine.begin() as connection:
        pids = connection.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        ).scalars().all()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    return total


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    from harvest.db.engine import dispose_all, get_engine, upgrade
    from harvest.import_.activities import import_activities

    name = f"harvest_import_ab_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(BASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(BASE_URL).set(database=name).render_as_string(hide_password=False)
    sides: dict[str, Callable[..., Any]] = {
        "old": old_import_copy,
        "new": lambda engine, records, run_id: import_activities(engine, records, run_id=run_id, method="copy"),
    }
    rates: dict[str, list[float]] = {"old": [], "new": [], "copy_rows_per_s": [], "copy_only_rows_per_s": []}
    prints: dict[str, set[str]] = {"old": set(), "new": set()}
    cpu: dict[str, list[float]] = {"old": [], "new": []}  # CPU seconds: this process and its Postgres backends
    try:
        upgrade(url)
        engine = get_engine(url)
        # A run row, as an import has: the new side records each row's claim by its source (issue 32)
        from harvest.db import runs

        runs.create_run(engine, "bench-ab", "https://bench.invalid/", {})
        runs.finish_run(engine, "bench-ab", "completed")
        with tempfile.TemporaryDirectory() as tmp:
            final_path = Path(tmp) / "final.jsonl"
            with open(final_path, "wb") as handle:
                for record in final_records(n):
                    handle.write(orjson.dumps(record) + b"\n")
            for round_ in range(3):
                for side in (("old", "new") if round_ % 2 == 0 else ("new", "old")):
                    with engine.begin() as connection:
                        connection.exec_driver_sql("TRUNCATE activities CASCADE")  # and their claims
                    backends_before = _backend_cpu(engine)
                    cpu_before = time.process_time()
                    started = time.perf_counter()
                    summary = sides[side](engine, _read(final_path), run_id="bench-ab")
                    seconds = time.perf_counter() - started
                    cpu[side].append(time.process_time() - cpu_before + _backend_cpu(engine) - backends_before)
                    assert (summary.imported, summary.failed) == (n, 0), summary
                    rates[side].append(n / seconds)
                    prints[side].add(fingerprint(engine))
                    print(f"round {round_ + 1} {side}: {n / seconds:,.0f} rows/s", flush=True)
                floor = copy_floor(engine, final_path, Path(tmp))
                for key, value in floor.items():
                    rates[key].append(value)
                print(f"round {round_ + 1} floor: {floor}", flush=True)
    finally:
        dispose_all()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    median = {key: round(statistics.median(values), 1) for key, values in rates.items()}
    result = {
        "n": n, "rows_per_s": {key: [round(v, 1) for v in values] for key, values in rates.items()},
        "median_rows_per_s": median,
        "new_over_old": round(median["new"] / median["old"], 3),
        "new_over_copy_only_floor": round(median["new"] / median["copy_only_rows_per_s"], 3),
        "new_over_plain_load_floor": round(median["new"] / median["copy_rows_per_s"], 3),
        "same_rows": len(prints["old"] | prints["new"]) == 1,
        # less sensitive to a shared machine than rows/s: the CPU both processes spent per 1,000 rows
        "median_cpu_ms_per_1000_rows": {
            side: round(statistics.median(values) / n * 1e6, 1) for side, values in cpu.items()
        },
    }
    print(json.dumps(result, indent=2))
    if out:
        out.write_text(json.dumps(result))
    return 0 if result["same_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
