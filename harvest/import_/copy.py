"""The Postgres write path of the import: binary COPY, new keys straight into the table, stored ones through a
staging table and the policy's upsert (harvest/import_/policy.py).

psycopg writes the COPY stream (signature, tuples, per-type binary encodings). The one hand-written piece left is
the float4[] dumper's array header: numpy lays out 1,536 elements at once, where psycopg's list dumper would box
and pack each float in Python.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.errors import UniqueViolation
from psycopg.pq import Format
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from harvest.db.engine import database_error, transaction
from harvest.db.schema import Timestamp, activities
from harvest.enrich.embeddings.vectors import parse_vector
from harvest.import_.batch import Verdicts, record_failure
from harvest.import_.policy import STAGE, ImportTable
from harvest.import_.provenance import write_claims
from harvest.models import ImportSummary

COPY_BATCH_SIZE = 500  # rows per COPY + upsert: a batch holds its rows, vectors as float32, in memory
COLUMNS = [c.name for c in activities.columns]  # the schema's; a plug-in's column is added per import (policy.py)
_FLOAT4_OID = postgres.types["float4"].oid  # 700; its array type real[] is 1021
_FLOAT4_ARRAY_OID = postgres.types["float4"].array_oid
_ARRAY_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f4")])
_INT4_RANGE = range(-(2**31), 2**31)


def embedding_array(value: Any) -> np.ndarray:
    """An embedding (list, array or still-unparsed JSON text) as a flat float32 array; raises ValueError or
    TypeError for anything that is not a flat list of numbers, so a bad vector fails its row before the COPY."""
    value = parse_vector(value)
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise TypeError(f"embedding is a {type(value).__name__}, not a list of numbers")
    values = np.asarray(value, dtype=np.float32)  # refuses strings and nested lists with ValueError
    if values.ndim != 1:
        raise ValueError("embedding is not a flat list of numbers")
    return values


class Float4ArrayBinaryDumper(Dumper):
    """psycopg binary dumper: a 1-D float32 ndarray as a Postgres real[] (no per-float Python work).

    Registered by oid on the COPY's cursor, so `set_types([... "float4[]" ...])` picks it for the
    embedding column; `embedding_array` has already made the value a flat float32 array.
    """

    format = Format.BINARY
    oid = _FLOAT4_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        size = int(obj.size)
        if size == 0:  # an empty array: no dimensions
            return struct.pack("!iii", 0, 0, _FLOAT4_OID)
        elements = np.empty(size, dtype=_ARRAY_ELEMENT)  # each element: its length (4), then the value
        elements["length"] = 4
        elements["value"] = obj
        # header: 1 dimension, no NULLs, element type, then the dimension's length and lower bound (1)
        return struct.pack("!iiiii", 1, 0, _FLOAT4_OID, size, 1) + elements.tobytes()


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _float8(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number, got bool")
    return float(value)


def _int4(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"expected an integer, got {value!r}")
    number = int(value)
    if number not in _INT4_RANGE:
        raise OverflowError(f"{number} is out of range for an integer column")
    return number


def _bool(value: Any) -> bool:
    return bool(value)


def _json_as_is(text: str) -> str:
    return text  # the JSON text `_jsonb` has already dumped: psycopg adds the jsonb version byte


def _jsonb(value: Any) -> Jsonb:
    # Dumped here rather than by psycopg during the COPY: a value json cannot dump fails its row alone.
    return Jsonb(json.dumps(value, ensure_ascii=False, separators=(",", ":")), dumps=_json_as_is)


Converter = Callable[[Any], Any]


def _in_zone(naive: datetime, zone: ZoneInfo) -> datetime:
    """A naive time read as Postgres reads it in a session of this zone: a time a fall-back transition makes
    ambiguous is the later instant (Python's fold=1); a time in a spring-forward gap takes the offset before
    the gap (Python's fold=0)."""
    later = naive.replace(tzinfo=zone, fold=1)
    exists = later.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive  # False inside a gap
    return later if exists else naive.replace(tzinfo=zone, fold=0)


def converters(session_zone: ZoneInfo, table: sa.Table = activities) -> list[tuple[str, str, Converter]]:
    """Per column of `table` (in its order): the column, the Postgres type psycopg dumps it as, and the check that
    turns a row's value into exactly the Python type that dumper takes. Design choice: every value is checked and
    converted before the COPY starts, because psycopg appends a row to its buffer as it dumps it; a value
    that fails there would leave half a row in the stream. After these, dumping cannot fail."""

    def timestamptz(value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        return value if value.tzinfo else _in_zone(value, session_zone)

    by_column: list[tuple[str, str, Converter]] = []
    for column in table.columns:
        kind = column.type.dialect_impl(postgresql.dialect())
        if isinstance(kind, postgresql.ARRAY):
            by_column.append((column.name, "float4[]", embedding_array))
        elif isinstance(kind, postgresql.JSONB):
            by_column.append((column.name, "jsonb", _jsonb))
        elif isinstance(kind, (Timestamp, sa.DateTime)):
            by_column.append((column.name, "timestamptz", timestamptz))
        elif isinstance(kind, sa.Boolean):
            by_column.append((column.name, "bool", _bool))
        elif isinstance(kind, sa.Integer):
            by_column.append((column.name, "int4", _int4))
        elif isinstance(kind, sa.Float):
            by_column.append((column.name, "float8", _float8))
        elif isinstance(kind, sa.String):  # varchar(n) has text's binary format; its length is checked by Postgres
            by_column.append((column.name, "text", _text))
        else:  # pragma: no cover - a new column type needs a converter
            raise TypeError(f"no COPY type for activities.{column.name} ({kind!r})")
    return by_column


def copy_row(row: dict[str, Any], converters: list[tuple[str, str, Converter]]) -> tuple[Any, ...]:
    """One row as the tuple `copy.write_row` takes, every value checked (raises on a value that cannot be copied)."""
    return tuple(None if (value := row[name]) is None else convert(value) for name, _, convert in converters)


def copy_writer(engine: Engine, table: ImportTable) -> Callable[[Engine, ImportSummary, Verdicts], None]:
    """The Postgres path: write a batch with _copy_batch (same counts as the portable path: new keys are
    imported, changed content updated, the rest skipped), converting values for this database's time zone."""
    with transaction(engine) as connection:
        zone = ZoneInfo(str(connection.exec_driver_sql("SELECT current_setting('TimeZone')").scalar_one()))
    by_column = converters(zone, table.table)

    def write(engine: Engine, summary: ImportSummary, verdicts: Verdicts) -> None:
        inserted, updated, unchanged = _copy_batch(
            engine, table, by_column, summary, [row for _, row in verdicts.new], [row for _, row in verdicts.changed],
            verdicts,
        )
        summary.imported += inserted
        summary.updated += updated
        summary.skipped += unchanged

    return write


def _checked_rows(
    rows: Iterable[dict[str, Any]], converters: list[tuple[str, str, Converter]], summary: ImportSummary,
    kept: list[tuple[Any, ...]], failed: set[str],
) -> Iterator[tuple[Any, ...]]:
    """Each row converted for the COPY just before it is written, so Python's work on the next row overlaps
    Postgres's on the last; a row that cannot be converted is a counted failure and nothing of it is written
    (its key goes to `failed`: its claim is not written either).
    Every row yielded is also appended to `kept`, for a batch that has to be written a second way."""
    for row in rows:
        try:
            values = copy_row(row, converters)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            record_failure(summary, row, exc)  # this row only: nothing of it reached the COPY
            failed.add(row["dedupe_key"])
            continue
        kept.append(values)
        yield values


def _copy_batch(
    engine: Engine, table: ImportTable, converters: list[tuple[str, str, Converter]], summary: ImportSummary,
    new: list[dict[str, Any]], known: list[dict[str, Any]], verdicts: Verdicts,
) -> tuple[int, int, int]:
    """Write one batch; returns (inserted, updated, unchanged).

    Design choice: rows whose key the table did not hold at the lookup are COPYed straight into `activities`
    (no staging table, no second write of each 6 kB vector, no upsert): most of an import's rows on a first run.
    If another import stored one of those keys since, the unique index refuses the whole COPY (nothing of it is
    kept) and those rows join the known ones, which go through the staging table and the policy's upsert.
    The batch's claims (harvest/import_/provenance.py) are one more statement in the first transaction that
    commits: after the COPY (which says which rows failed), or before the upsert (whose precedence reads them).
    """
    types = [kind for _, kind, _ in converters]
    failed: set[str] = set()
    try:
        inserted = 0
        claimed = False
        staged: list[tuple[Any, ...]] = list(_checked_rows(known, converters, summary, [], failed)) if known else []
        if new:
            copied: list[tuple[Any, ...]] = []
            pending = _checked_rows(new, converters, summary, copied, failed)
            try:
                with transaction(engine) as connection:
                    _copy_into(connection, "activities", table.columns, types, pending)
                    # Claims on the keys just COPYed cannot exist yet (a claim needs its row): COPYed too.
                    fresh = {row["dedupe_key"] for row in new}
                    claims = verdicts.without_failed(failed)
                    _copy_claims(connection, [claim for claim in claims if claim["dedupe_key"] in fresh])
                    write_claims(connection, [claim for claim in claims if claim["dedupe_key"] not in fresh],
                                 verdicts.touch)
                inserted, claimed = len(copied), True
            except UniqueViolation:
                staged = copied + list(pending) + staged  # the rows not yet converted are converted now
        if not staged:
            if not claimed and verdicts.claimed:
                with transaction(engine) as connection:
                    write_claims(connection, verdicts.without_failed(failed), verdicts.touch)
            return inserted, 0, 0
        with transaction(engine) as connection:
            if not claimed:
                write_claims(connection, verdicts.without_failed(failed), verdicts.touch)
            connection.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {STAGE} (LIKE activities INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            _copy_into(connection, STAGE, table.columns, types, staged)
            with cast(Any, connection.connection.driver_connection).cursor() as cursor:
                cursor.execute(table.staged_upsert_sql)
                flags = [row[0] for row in cursor.fetchall()]
    except psycopg.Error as exc:  # raised by the driver cursor, outside SQLAlchemy's wrapping
        raise database_error(exc) from exc
    upserted = sum(1 for flag in flags if flag)
    return inserted + upserted, len(flags) - upserted, len(staged) - len(flags)


_CLAIM_COLUMNS = ("dedupe_key", "source_url", "first_party", "run_id", "first_seen_at", "last_seen_at", "fields",
                  "updated_at")
_CLAIM_TYPES = ("text", "text", "bool", "text", "timestamptz", "timestamptz", "jsonb", "timestamptz")


def _copy_claims(connection: sa.Connection, claims: list[dict[str, Any]]) -> None:
    """New claims (harvest/import_/provenance.py) by binary COPY: no ON CONFLICT to evaluate, no per-row
    parameters in Python."""
    if not claims:
        return
    driver = cast(Any, connection.connection.driver_connection)
    with driver.cursor() as cursor:
        with cursor.copy(f"COPY activity_sources ({', '.join(_CLAIM_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_CLAIM_TYPES))
            for claim in claims:
                copy.write_row(tuple(
                    _jsonb(claim[name]) if name == "fields" else claim[name] for name in _CLAIM_COLUMNS
                ))


def _copy_into(
    connection: sa.Connection, table: str, columns: list[str], types: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """A binary COPY of converted rows into `table` (every column of `activities`), through psycopg's writer."""
    driver = cast(Any, connection.connection.driver_connection)  # psycopg's, on Postgres
    with driver.cursor() as cursor:
        # on this cursor only: the float4[] oid is dumped from numpy arrays
        cursor.adapters.register_dumper(np.ndarray, Float4ArrayBinaryDumper)
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)  # dumpers chosen by column type, not by each value's Python type
            for row in rows:
                copy.write_row(row)
