"""Import final activity records into the `activities` table: batched upserts, deduped, re-runnable.

Dedupe follows the original design: one row per normalized name + formatted address (the stable
activity id is a hash of exactly that, and `dedupe_key` keeps the readable form, unique in the database).
Importing the same run twice creates no duplicates: unchanged rows are counted as skipped.

The upsert policy (one rule, built once by `_on_conflict` for both paths, and mirrored by `_writes` for the
rows skipped before they are sent). Design choice: enrichment is a best effort that can fail per run, content
is not, so they are merged differently. (1) Recency: every row carries the start time of the run that wrote
it (`run_started_at`); a run that started earlier never overwrites it (an old kept run imported late, a
resumed run that failed before its import). (2) Enrichment groups (image: uri/width/height; place:
latitude/longitude/place_id; vector: embedding/embedding_hash) are taken from the new row only when the new
row has them: a NULL from a run whose image, geocode or embedding step failed never replaces a stored value
(the stored image stays referenced, so the sweep keeps it). The cost: an image a site really removed stays
until another image replaces it. (3) A row is written when its content hash changed, or when, content
unchanged, the run brings an enrichment group that differs from the stored one (a geocode that now succeeds,
a new embedding model: `embedding_hash`, a sha256 of the vector's JSON, says so without parsing it).

On Postgres each batch's keys are looked up first. Rows of keys the table does not hold are one binary `COPY`
(written by psycopg) straight into `activities`; rows of stored keys (and new ones another import stored
meanwhile, which the unique index refuses) are one `COPY` into a temporary staging table and one
`INSERT ... SELECT ... ON CONFLICT (dedupe_key) DO UPDATE ... WHERE <the policy> RETURNING`, which says per
written row whether it was inserted or updated; rows not returned were unchanged. The portable path (SQLite)
looks the keys up first and then upserts with the same ON CONFLICT clause.

Through a run's policy index (import_indexed), the batches are judged from the index records and each row to be
written takes its vector from its final record: a row is built and its key looked up once (see Verdicts).
"""
from __future__ import annotations

import hashlib
import json
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import psycopg
import sqlalchemy as sa
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.errors import UniqueViolation
from psycopg.pq import Format
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from harvest.db.engine import database_error, transaction, utcnow
from harvest.db.schema import Timestamp, activities, one_of, scrape_runs
from harvest.errors import DatabaseError, ImportInterrupted, StorageError
from harvest.extract.text import normalize_key as dedupe_text
from harvest.models import ImportSummary

MAX_ERRORS = 50
T = TypeVar("T")
UPDATABLE = [c.name for c in activities.columns if c.name not in ("id", "created_at")]
# Enrichment groups: each is taken whole from the new row when its key column is not NULL, else kept.
ENRICHMENT_GROUPS: dict[str, tuple[str, ...]] = {
    "image_uri": ("image_uri", "image_width", "image_height"),
    "latitude": ("latitude", "longitude", "place_id"),
    "embedding_hash": ("embedding_hash", "embedding"),
}
_GROUP_OF = {column: key for key, group in ENRICHMENT_GROUPS.items() for column in group}
# What the pre-check reads of a stored row to apply the policy without sending the new one.
_POLICY_COLUMNS = ["dedupe_key", "content_hash", "run_started_at",
                   *(c for group in ENRICHMENT_GROUPS.values() for c in group if c != "embedding")]


def _batches(records: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class DeferredVector(ABC):
    """A final record's vector the import holds without its floats: parsed only for a row that is written, and
    hashed (`embedding_hash`) without parsing. Parsing 1,536 floats is most of the cost of reading a final line,
    and a row the policy does not write never needs them."""

    __slots__ = ()

    @abstractmethod
    def parse(self) -> Any:
        """The vector's values; raises ValueError when they cannot be had."""

    @abstractmethod
    def sha256(self) -> str:
        """The sha256 (hex) of the vector's JSON text as written in final.jsonl."""


class UnparsedVector(DeferredVector):
    """A vector still as its JSON text (from a final line, see parse_final_line)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def parse(self) -> Any:
        try:
            return orjson.loads(self.text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"embedding is not JSON: {exc}") from exc

    def sha256(self) -> str:
        return hashlib.sha256(self.text).hexdigest()


_EMBEDDING_KEY = b'"embedding":['


class HashedVector(DeferredVector):
    """A vector known only by its sha256 (a line of the import's policy index, written with final.jsonl):
    enough to apply the policy; the import takes the vector itself from final.jsonl before writing."""

    __slots__ = ("digest",)

    def __init__(self, digest: str) -> None:
        self.digest = digest

    def parse(self) -> Any:
        raise ValueError("this vector is known only by its hash (policy index); read it from final.jsonl")

    def sha256(self) -> str:
        return self.digest


def parse_index_line(line: bytes) -> dict[str, Any]:
    """One line of `final_index.jsonl` (harvest.merge.stage.policy_line) as a final record whose embedding
    is a HashedVector."""
    record = orjson.loads(line)
    digest = record.pop("embedding_sha256", None) if isinstance(record, dict) else None
    if isinstance(record, dict) and digest:
        record["embedding"] = HashedVector(str(digest))
    return record


def parse_final_line(line: bytes) -> dict[str, Any]:
    """One line of final JSONL as a record whose `embedding` is left unparsed (an UnparsedVector).

    Inside a JSON string every quote is escaped, so the bytes `"embedding":[` can only be a key. If they are
    not the top-level key, or the line is unusual in any way, the whole line is parsed as usual.
    """
    start = line.find(_EMBEDDING_KEY)
    if start >= 0:
        opening = start + len(_EMBEDDING_KEY) - 1
        closing = line.find(b"]", opening)
        if closing > 0:
            try:
                record = orjson.loads(line[:opening] + b"null" + line[closing + 1:])
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict) and "embedding" in record and record["embedding"] is None:
                record["embedding"] = UnparsedVector(line[opening:closing + 1])
                return record
    return orjson.loads(line)


def _vector(value: Any) -> Any:
    return value.parse() if isinstance(value, DeferredVector) else value


def embedding_hash(value: Any) -> str | None:
    """sha256 of a vector's JSON text (as written in the final line, or dumped when already parsed)."""
    if value is None:
        return None
    if isinstance(value, DeferredVector):
        return value.sha256()
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)).hexdigest()


def record_to_row(
    record: dict[str, Any], run_id: str, now: datetime, run_started_at: datetime | None = None
) -> dict[str, Any]:
    """Map one final JSONL record to an `activities` row; raises ValueError/KeyError on a malformed one."""
    name = (record.get("name") or "").strip()
    if not name or not record.get("id"):
        raise ValueError("record has no name or id")
    location = record.get("location") or {}
    image = record.get("image") or {}
    address = location.get("formatted_address") or ""
    return {
        "id": record["id"],
        "dedupe_key": f"{dedupe_text(name)}|{dedupe_text(address)}",
        "name": name,
        "description": record.get("description"),
        "urgency": record.get("urgency") or "medium",
        "is_public": bool(record.get("is_public", True)),
        "location_name": location.get("name"),
        "formatted_address": address or None,
        "street_address": location.get("street_address"),
        "city": location.get("city"),
        "state_province": location.get("state_province"),
        "postal_code": location.get("postal_code"),
        "country_code": location.get("country_code"),
        "latitude": location.get("latitude"),
        "longitude": location.get("longitude"),
        "place_id": location.get("place_id"),
        "start_date": _parse_time(record.get("start_date")),
        "end_date": _parse_time(record.get("end_date")),
        "occurrences": [list(pair) for pair in record.get("occurrences") or []],
        "tags": list(record.get("tags") or []),
        "embedding": record.get("embedding"),
        "embedding_hash": embedding_hash(record.get("embedding")),
        "image_uri": image.get("uri"),
        "image_width": image.get("width"),
        "image_height": image.get("height"),
        "source_url": record.get("source_url"),
        "content_hash": record.get("content_hash") or "",
        "run_id": run_id,
        "run_started_at": run_started_at or now,
        "created_at": now,
        "updated_at": now,
    }


def _on_conflict(statement: Any) -> Any:
    """The upsert policy (module docstring) as one ON CONFLICT clause, for either dialect's INSERT."""
    new = statement.excluded
    stored = activities.c

    def value(name: str) -> Any:
        if name in _GROUP_OF:  # an enrichment column: the new group only when the new row has it
            return sa.case((new[_GROUP_OF[name]].is_(None), stored[name]), else_=new[name])
        return new[name]

    better_enrichment = [
        sa.and_(new[key].is_not(None), sa.or_(*(stored[c].is_distinct_from(new[c]) for c in group if c != "embedding")))
        for key, group in ENRICHMENT_GROUPS.items()
    ]
    return statement.on_conflict_do_update(
        index_elements=[stored.dedupe_key],
        set_={name: value(name) for name in UPDATABLE},
        where=sa.and_(
            sa.or_(stored.run_started_at.is_(None), stored.run_started_at <= new.run_started_at),
            sa.or_(stored.content_hash.is_distinct_from(new.content_hash), *better_enrichment),
        ),
    )


def _writes(stored: Any, row: dict[str, Any]) -> bool:
    """The policy's WHERE in Python, for the rows looked up before a batch is sent (skipped without work)."""
    if stored is None:
        return True
    if stored["run_started_at"] is not None and stored["run_started_at"] > row["run_started_at"]:
        return False  # a newer run wrote this row
    if stored["content_hash"] != row["content_hash"]:
        return True
    return any(
        row[key] is not None and any(stored[c] != row[c] for c in group if c != "embedding")
        for key, group in ENRICHMENT_GROUPS.items()
    )


def _stored_rows(engine: Engine, keys: list[str]) -> dict[str, Any]:
    """The policy columns of the stored rows with these dedupe keys."""
    if not keys:
        return {}
    columns = [activities.c[name] for name in _POLICY_COLUMNS]
    with transaction(engine) as connection:
        found = connection.execute(
            sa.select(*columns).where(one_of(activities.c.dedupe_key, keys, engine.dialect.name))
        ).mappings().all()
    return {row["dedupe_key"]: row for row in found}


def run_started_at(engine: Engine, run_id: str) -> datetime:
    """When the importing run started (its rows' recency), or now for records of no known run."""
    with transaction(engine) as connection:
        started = connection.execute(sa.select(scrape_runs.c.started_at).where(scrape_runs.c.id == run_id)).scalar()
    return started if started is not None else utcnow()


def _upsert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    dialect = engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    with transaction(engine) as connection:
        connection.execute(_on_conflict(insert(activities)), rows)


def import_activities(
    engine: Engine, records: Iterable[dict[str, Any]], *, run_id: str, batch_size: int = 500,
    method: str | None = None,
) -> ImportSummary:
    """Upsert records in batches; return {imported, updated, skipped, failed, errors}.

    A malformed record is counted as failed with its reason and the rest go on; a database error
    fails the import (the caller keeps the run's files so it can be retried). `method`: "copy" (Postgres
    only, its default) or "upsert" (the portable path, the default elsewhere).
    """
    summary, _ = _import(engine, records, None, run_id=run_id, batch_size=batch_size, method=method)
    return summary


FinalRecords = Callable[[list[int]], list[Any]]


def import_indexed(
    engine: Engine, index: Iterable[dict[str, Any]], finals: FinalRecords, *, run_id: str,
    batch_size: int = 500, method: str | None = None,
) -> tuple[ImportSummary, int]:
    """import_activities through a final JSONL's policy index (its records without their vectors, in order, as
    parse_index_line makes them): each batch of index records is judged by the policy, and only the final
    records of the rows it writes are read, for their vectors (`finals`: the final records with these
    numbers, ascending, as parse_final_line makes them). An unchanged re-import reads none. Each row is built and
    its key looked up once. Returns the summary (the same as import_activities of the final records) and how
    many records were judged unchanged from the index alone. Raises StorageError when a final record is not the
    one its index record describes."""
    return _import(engine, index, finals, run_id=run_id, batch_size=batch_size, method=method)


@dataclass
class Verdicts:
    """One batch's rows judged by the upsert policy against the table as one key lookup found it: rows of keys
    the table did not hold (`new`) and stored rows the policy would write (`changed`), each with its record's
    number; `unchanged` rows were counted skipped and are not sent.

    A verdict picks how a row is written and spares the work of rows that would not be; it does not decide
    the write. `new` rows are COPYed into the table, which the unique index refuses if another import stored
    one of their keys since (they then go through the upsert); `changed` rows go through the upsert, whose
    ON CONFLICT ... WHERE applies the policy again to the row stored at write time. The portable path upserts
    both with that clause and counts them by the verdict (SQLite's upsert does not say which rows it inserted)."""

    new: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    changed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    unchanged: int = 0


def _judged_batches(
    engine: Engine, records: Iterable[Any], summary: ImportSummary, *, run_id: str, batch_size: int,
) -> Iterator[Verdicts]:
    """The records' rows a batch at a time, judged with one key lookup per batch. A malformed record is a
    counted failure; of a key repeated within a batch the last copy is kept (the others are skipped)."""
    now = utcnow()
    started = run_started_at(engine, run_id)
    for batch in _batches(enumerate(records), batch_size):
        rows: dict[str, tuple[int, dict[str, Any]]] = {}  # dedupe_key -> (record number, row)
        for number, record in batch:
            try:
                row = record_to_row(record, run_id, now, started)
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
                _record_failure(summary, record, exc)
                continue
            if row["dedupe_key"] in rows:
                summary.skipped += 1  # the same activity twice in one file
            rows[row["dedupe_key"]] = (number, row)
        stored = _stored_rows(engine, list(rows))
        verdicts = Verdicts()
        for key, numbered in rows.items():
            if key not in stored:
                verdicts.new.append(numbered)
            elif _writes(stored[key], numbered[1]):
                verdicts.changed.append(numbered)
            else:
                verdicts.unchanged += 1
        summary.skipped += verdicts.unchanged
        yield verdicts


def _take_vectors(verdicts: Verdicts, finals: FinalRecords) -> None:
    """Give the rows to be written (built from index records) their vectors, read from their final records."""
    numbered = sorted(verdicts.new + verdicts.changed, key=lambda pair: pair[0])
    records = finals([number for number, _ in numbered])
    for (number, row), record in zip(numbered, records, strict=True):
        vector = record.get("embedding") if isinstance(record, dict) else None
        if (not isinstance(record, dict) or record.get("id") != row["id"]
                or (record.get("content_hash") or "") != row["content_hash"]
                or embedding_hash(vector) != row["embedding_hash"]):
            raise StorageError(
                f"final record {number} is not the one its policy index line describes (index: id {row['id']}, "
                f"content {row['content_hash']}, vector {row['embedding_hash']})"
            )
        row["embedding"] = vector


def _import(
    engine: Engine, records: Iterable[Any], finals: FinalRecords | None, *, run_id: str, batch_size: int,
    method: str | None,
) -> tuple[ImportSummary, int]:
    """Judge and write batch after batch (see Verdicts); returns the summary and the rows judged unchanged.
    With `finals`, the records are index records and the written rows take their vectors from `finals`."""
    method = method or ("copy" if engine.dialect.name == "postgresql" else "upsert")
    if method == "copy" and engine.dialect.name != "postgresql":
        raise ValueError("the COPY import needs Postgres")
    if method not in ("copy", "upsert"):
        raise ValueError(f"unknown import method {method!r}")
    summary = ImportSummary()
    unchanged = 0
    try:
        write = _copy_writer(engine) if method == "copy" else _upsert_batch
        size = max(batch_size, COPY_BATCH_SIZE) if method == "copy" else batch_size
        for verdicts in _judged_batches(engine, records, summary, run_id=run_id, batch_size=size):
            unchanged += verdicts.unchanged
            if finals is not None and (verdicts.new or verdicts.changed):
                _take_vectors(verdicts, finals)
            write(engine, summary, verdicts)
    except DatabaseError as exc:
        raise _interrupted(summary, exc) from exc
    return summary, unchanged


def _record_failure(summary: ImportSummary, record: Any, exc: Exception) -> None:
    summary.failed += 1
    if len(summary.errors) < MAX_ERRORS:
        label = (record.get("id") or record.get("name") or "?") if isinstance(record, dict) else "?"
        summary.errors.append(f"{label}: {exc}")


def _upsert_batch(engine: Engine, summary: ImportSummary, verdicts: Verdicts) -> None:
    """The portable path: upsert a batch's new and changed rows (counted once the batch is written)."""
    to_write = []
    counts = {"imported": 0, "updated": 0}
    for counter, rows in (("imported", verdicts.new), ("updated", verdicts.changed)):
        for _, row in rows:
            try:
                row["embedding"] = _vector(row["embedding"])
            except ValueError as exc:
                _record_failure(summary, row, exc)
                continue
            counts[counter] += 1
            to_write.append(row)
    if to_write:
        _upsert(engine, to_write)
    summary.imported += counts["imported"]
    summary.updated += counts["updated"]


def _interrupted(summary: ImportSummary, exc: DatabaseError) -> ImportInterrupted:
    """A database error part way: the import stops, and says how far it got (the caller records that)."""
    done = summary.imported + summary.updated
    return ImportInterrupted(f"import into activities failed after {done} rows: {exc}", summary)


# --- Postgres: binary COPY, new keys straight into the table, stored ones through a staging table ---------
# psycopg writes the COPY stream (signature, tuples, per-type binary encodings). The one hand-written piece
# left is the float4[] dumper's array header: numpy lays out 1,536 elements at once, where psycopg's list
# dumper would box and pack each float in Python.

COPY_BATCH_SIZE = 500  # rows per COPY + upsert: a batch holds its rows, vectors as float32, in memory
COLUMNS = [c.name for c in activities.columns]
_FLOAT4_OID = postgres.types["float4"].oid  # 700; its array type real[] is 1021
_FLOAT4_ARRAY_OID = postgres.types["float4"].array_oid
_ARRAY_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f4")])
_INT4_RANGE = range(-(2**31), 2**31)


def embedding_array(value: Any) -> np.ndarray:
    """An embedding (list, array or still-unparsed JSON text) as a flat float32 array; raises ValueError or
    TypeError for anything that is not a flat list of numbers, so a bad vector fails its row before the COPY."""
    value = _vector(value)
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


def _converters(session_zone: ZoneInfo) -> list[tuple[str, Converter]]:
    """Per column (in COLUMNS order): the Postgres type psycopg dumps it as, and the check that turns a row's
    value into exactly the Python type that dumper takes. Design choice: every value is checked and
    converted before the COPY starts, because psycopg appends a row to its buffer as it dumps it; a value
    that fails there would leave half a row in the stream. After these, dumping cannot fail."""

    def timestamptz(value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        return value if value.tzinfo else _in_zone(value, session_zone)

    by_column: list[tuple[str, Converter]] = []
    for column in activities.columns:
        kind = column.type.dialect_impl(postgresql.dialect())
        if isinstance(kind, postgresql.ARRAY):
            by_column.append(("float4[]", embedding_array))
        elif isinstance(kind, postgresql.JSONB):
            by_column.append(("jsonb", _jsonb))
        elif isinstance(kind, (Timestamp, sa.DateTime)):
            by_column.append(("timestamptz", timestamptz))
        elif isinstance(kind, sa.Boolean):
            by_column.append(("bool", _bool))
        elif isinstance(kind, sa.Integer):
            by_column.append(("int4", _int4))
        elif isinstance(kind, sa.Float):
            by_column.append(("float8", _float8))
        elif isinstance(kind, sa.String):  # varchar(n) has text's binary format; its length is checked by Postgres
            by_column.append(("text", _text))
        else:  # pragma: no cover - a new column type needs a converter
            raise TypeError(f"no COPY type for activities.{column.name} ({kind!r})")
    return by_column


def _copy_row(row: dict[str, Any], converters: list[tuple[str, Converter]]) -> tuple[Any, ...]:
    """One row as the tuple `copy.write_row` takes, every value checked (raises on a value that cannot be copied)."""
    return tuple(None if (value := row[name]) is None else convert(value)
                 for name, (_, convert) in zip(COLUMNS, converters, strict=True))


_STAGE = "harvest_import_stage"
_STAGE_TABLE = sa.table(_STAGE, *(sa.column(name) for name in COLUMNS))
# The same policy as the portable path, compiled once: INSERT ... SELECT from the staging table.
_UPSERT_SQL = str(
    _on_conflict(postgresql.insert(activities).from_select(COLUMNS, sa.select(*_STAGE_TABLE.c)))
    .returning(sa.literal_column("(xmax = 0)").label("inserted"))
    .compile(dialect=postgresql.psycopg.dialect())
)


def _copy_writer(engine: Engine) -> Callable[[Engine, ImportSummary, Verdicts], None]:
    """The Postgres path: write a batch with _copy_batch (same counts as the portable path: new keys are
    imported, changed content updated, the rest skipped), converting values for this database's time zone."""
    with transaction(engine) as connection:
        zone = ZoneInfo(str(connection.exec_driver_sql("SELECT current_setting('TimeZone')").scalar_one()))
    converters = _converters(zone)

    def write(engine: Engine, summary: ImportSummary, verdicts: Verdicts) -> None:
        inserted, updated, unchanged = _copy_batch(
            engine, converters, summary, [row for _, row in verdicts.new], [row for _, row in verdicts.changed]
        )
        summary.imported += inserted
        summary.updated += updated
        summary.skipped += unchanged

    return write


def _checked_rows(
    rows: Iterable[dict[str, Any]], converters: list[tuple[str, Converter]], summary: ImportSummary,
    kept: list[tuple[Any, ...]],
) -> Iterator[tuple[Any, ...]]:
    """Each row converted for the COPY just before it is written, so Python's work on the next row overlaps
    Postgres's on the last; a row that cannot be converted is a counted failure and nothing of it is written.
    Every row yielded is also appended to `kept`, for a batch that has to be written a second way."""
    for row in rows:
        try:
            values = _copy_row(row, converters)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            _record_failure(summary, row, exc)  # this row only: nothing of it reached the COPY
            continue
        kept.append(values)
        yield values


def _copy_batch(
    engine: Engine, converters: list[tuple[str, Converter]], summary: ImportSummary,
    new: list[dict[str, Any]], known: list[dict[str, Any]],
) -> tuple[int, int, int]:
    """Write one batch; returns (inserted, updated, unchanged).

    Design choice: rows whose key the table did not hold at the lookup are COPYed straight into `activities`
    (no staging table, no second write of each 6 kB vector, no upsert): most of an import's rows on a first run.
    If another import stored one of those keys since, the unique index refuses the whole COPY (nothing of it is
    kept) and those rows join the known ones, which go through the staging table and the policy's upsert.
    """
    types = [kind for kind, _ in converters]
    try:
        inserted = 0
        staged: list[tuple[Any, ...]] = []
        if new:
            copied: list[tuple[Any, ...]] = []
            pending = _checked_rows(new, converters, summary, copied)
            try:
                with transaction(engine) as connection:
                    _copy_into(connection, "activities", types, pending)
                inserted = len(copied)
            except UniqueViolation:
                staged = copied + list(pending)  # the rows not yet converted are converted now
        staged += [] if not known else list(_checked_rows(known, converters, summary, []))
        if not staged:
            return inserted, 0, 0
        with transaction(engine) as connection:
            connection.exec_driver_sql(
                f"CREATE TEMPORARY TABLE {_STAGE} (LIKE activities INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            _copy_into(connection, _STAGE, types, staged)
            with cast(Any, connection.connection.driver_connection).cursor() as cursor:
                cursor.execute(_UPSERT_SQL)
                flags = [row[0] for row in cursor.fetchall()]
    except psycopg.Error as exc:  # raised by the driver cursor, outside SQLAlchemy's wrapping
        raise database_error(exc) from exc
    upserted = sum(1 for flag in flags if flag)
    return inserted + upserted, len(flags) - upserted, len(staged) - len(flags)


def _copy_into(connection: sa.Connection, table: str, types: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """A binary COPY of converted rows into `table` (every column of `activities`), through psycopg's writer."""
    driver = cast(Any, connection.connection.driver_connection)  # psycopg's, on Postgres
    with driver.cursor() as cursor:
        # on this cursor only: the float4[] oid is dumped from numpy arrays
        cursor.adapters.register_dumper(np.ndarray, Float4ArrayBinaryDumper)
        with cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)  # dumpers chosen by column type, not by each value's Python type
            for row in rows:
                copy.write_row(row)
