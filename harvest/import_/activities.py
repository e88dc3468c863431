"""Import final activity records into the `activities` table: batched, deduped, re-runnable.

Dedupe follows the activity's identity: one row per normalized name + place (the address, else the page's
coordinates: `harvest.standardize.standardizer.identity_key`); the stable activity id is a hash of exactly that,
and `dedupe_key` keeps the readable form, unique in the database. Two activities standardize keeps apart (two
coordinate-only places) are two rows (issue 27 item 1: the key was name + address, and the second place was
skipped or overwrote the first).
Importing the same run twice creates no duplicates: unchanged rows are counted as skipped. Which row wins a key
is the upsert policy (harvest/import_/policy.py); how a record becomes a row, harvest/import_/rows.py.

Each batch's keys are looked up first and its rows judged by the policy (see Verdicts). On Postgres, rows of keys
the table does not hold are one binary `COPY` (written by psycopg) straight into `activities`; rows of stored keys
(and new ones another import stored meanwhile, which the unique index refuses) are one `COPY` into a temporary
staging table and one `INSERT ... SELECT ... ON CONFLICT (dedupe_key) DO UPDATE ... WHERE <the policy>
RETURNING`, which says per written row whether it was inserted or updated; rows not returned were unchanged
(harvest/import_/copy.py). The portable path (SQLite) upserts with the same ON CONFLICT clause.

Through a run's policy index (import_indexed), the batches are judged from the index records and each row to be
written takes its vector from its final record: a row is built and its key looked up once (see Verdicts).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from harvest.db.engine import transaction, utcnow
from harvest.db.schema import activity_sources, one_of, scrape_runs
from harvest.enrich.embeddings.vectors import DeferredVector, embedding_hash
from harvest.enrich.registry import enrichments as registered
from harvest.errors import DatabaseError, ImportInterrupted, StorageError
from harvest.import_.batch import Verdicts, record_failure
from harvest.import_.copy import COPY_BATCH_SIZE, copy_writer
from harvest.import_.policy import ImportTable, import_table
from harvest.import_.provenance import (
    Rank,
    Touch,
    claim_fields,
    claim_row,
    claims_on,
    is_first_party,
    outranks,
    source_of,
    write_claims,
)
from harvest.import_.rows import record_to_row
from harvest.models import ImportSummary

T = TypeVar("T")


def _batches(records: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def run_started_at(engine: Engine, run_id: str) -> datetime:
    """When the importing run started (its rows' recency), or now for records of no known run."""
    return run_source(engine, run_id)[0]


def run_source(engine: Engine, run_id: str) -> tuple[datetime, str | None]:
    """When the importing run started (its rows' recency) and its source (its start URL as the run row records it,
    harvest/import_/provenance.py); now and None for records of no known run (they record no claim)."""
    with transaction(engine) as connection:
        row = connection.execute(
            sa.select(scrape_runs.c.started_at, scrape_runs.c.url).where(scrape_runs.c.id == run_id)
        ).first()
    return (row.started_at, source_of(row.url)) if row is not None else (utcnow(), None)


def _stored_rows(
    engine: Engine, keys: list[str], table: ImportTable, source: str | None
) -> tuple[dict[str, Any], dict[str, list[Rank]]]:
    """The policy columns of the stored rows with these dedupe keys, and (with a source) the claims on them, by key:
    in the same query, this source's own claim and whether another source claims the row; the other claims are
    read only for the rows that have some (one more query, usually none: most activities have one source)."""
    if not keys:
        return {}, {}
    columns: list[Any] = [table.table.c[name] for name in table.policy_columns]
    if source is not None:
        claim, key = activity_sources.c, table.table.c.dedupe_key
        mine = (claim.dedupe_key == key, claim.source_url == source)
        columns += [
            sa.select(claim.first_party).where(*mine).scalar_subquery().label("my_first_party"),
            sa.select(claim.last_seen_at).where(*mine).scalar_subquery().label("my_last_seen"),
            sa.exists().where(claim.dedupe_key == key, claim.source_url != source).label("contested"),
        ]
    with transaction(engine) as connection:
        found = connection.execute(
            sa.select(*columns).where(one_of(table.table.c.dedupe_key, keys, engine.dialect.name))
        ).mappings().all()
        contested = [row["dedupe_key"] for row in found if source is not None and row["contested"]]
        ranks = claims_on(connection, contested) if contested else {}
    if source is not None:
        for row in found:
            if not row["contested"] and row["my_last_seen"] is not None:
                ranks[row["dedupe_key"]] = [Rank(bool(row["my_first_party"]), row["my_last_seen"], source)]
    return {row["dedupe_key"]: row for row in found}, ranks


def _upsert(
    engine: Engine, rows: list[dict[str, Any]], verdicts: Verdicts, failed: set[str], table: ImportTable
) -> None:
    """One transaction: the batch's claims first (the policy's precedence reads them), then its rows."""
    if not rows and not verdicts.claimed:
        return
    dialect = engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    with transaction(engine) as connection:
        write_claims(connection, verdicts.without_failed(failed), verdicts.touch)
        if rows:
            connection.execute(table.on_conflict(insert(table.table)), rows)


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


def _judged_batches(
    engine: Engine, records: Iterable[Any], summary: ImportSummary, table: ImportTable, *, run_id: str,
    batch_size: int,
) -> Iterator[Verdicts]:
    """The records' rows a batch at a time, judged with one key lookup per batch. A malformed record is a
    counted failure; of a key repeated within a batch the last copy is kept (the others are skipped). With a
    source (a run the database knows), each row's claim goes with the verdicts, and a stored row that another
    source's claim outranks (or that a later run of this source wrote) is not written (counted skipped)."""
    now = utcnow()
    started, source = run_source(engine, run_id)
    enrichments = registered()
    for batch in _batches(enumerate(records), batch_size):
        rows: dict[str, tuple[int, dict[str, Any]]] = {}  # dedupe_key -> (record number, row)
        first_party: dict[str, bool] = {}  # dedupe_key -> whether its source is first-party for it
        fields = claim_fields(table.columns)
        for number, record in batch:
            try:
                row = record_to_row(record, run_id, now, started, enrichments, source=source)
                if source is not None:
                    first_party[row["dedupe_key"]] = is_first_party(source, record)
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
                record_failure(summary, record, exc)
                continue
            if row["dedupe_key"] in rows:
                summary.skipped += 1  # the same activity twice in one file
            rows[row["dedupe_key"]] = (number, row)
        stored, ranks = _stored_rows(engine, list(rows), table, source)
        verdicts = Verdicts()
        touched: list[str] = []
        for key, numbered in rows.items():
            mine = None if source is None else Rank(first_party[key], started, source)
            if key not in stored:
                verdicts.new.append(numbered)
            elif mine is not None and _outranked(mine, ranks.get(key, ())):
                verdicts.unchanged += 1
            elif table.writes(stored[key], numbered[1]):
                verdicts.changed.append(numbered)
            else:
                verdicts.unchanged += 1
                if mine is not None and _confirms(mine, stored[key], ranks.get(key, ())):
                    touched.append(key)
                    continue
            if source is not None:
                verdicts.claims.append(claim_row(numbered[1], first_party[key], source, started, now, fields))
        if source is not None and touched:
            verdicts.touch = Touch(source, run_id, started, now, touched)
        summary.skipped += verdicts.unchanged
        yield verdicts


def _outranked(mine: Rank, ranks: Iterable[Rank]) -> bool:
    """Whether another source's stored claim takes precedence over this one, or a later run of this source
    claimed the activity (the write's `not_outranked`, in Python)."""
    return any(
        rank.last_seen_at > mine.last_seen_at if rank.source_url == mine.source_url else outranks(rank, mine)
        for rank in ranks
    )


def _confirms(mine: Rank, stored: Any, ranks: Iterable[Rank]) -> bool:
    """An unchanged row that shows this source's values and whose stored claim judges the same (first party or
    not): the claim holds what the new one would, so confirming it (last seen, run) is enough."""
    return stored["source"] == mine.source_url and any(
        rank.source_url == mine.source_url and rank.first_party == mine.first_party for rank in ranks
    )


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
    table = import_table(registered())
    try:
        write = copy_writer(engine, table) if method == "copy" else _upsert_writer(table)
        size = max(batch_size, COPY_BATCH_SIZE) if method == "copy" else batch_size
        for verdicts in _judged_batches(engine, records, summary, table, run_id=run_id, batch_size=size):
            unchanged += verdicts.unchanged
            if finals is not None and (verdicts.new or verdicts.changed):
                _take_vectors(verdicts, finals)
            write(engine, summary, verdicts)
    except DatabaseError as exc:
        raise _interrupted(summary, exc) from exc
    return summary, unchanged


def _upsert_writer(table: ImportTable) -> Callable[[Engine, ImportSummary, Verdicts], None]:
    """The portable path: upsert a batch's new and changed rows (counted once the batch is written)."""

    def write(engine: Engine, summary: ImportSummary, verdicts: Verdicts) -> None:
        to_write = []
        failed: set[str] = set()
        counts = {"imported": 0, "updated": 0}
        for counter, rows in (("imported", verdicts.new), ("updated", verdicts.changed)):
            for _, row in rows:
                try:
                    _parse_deferred(row)
                except ValueError as exc:
                    record_failure(summary, row, exc)
                    failed.add(row["dedupe_key"])
                    continue
                counts[counter] += 1
                to_write.append(row)
        _upsert(engine, to_write, verdicts, failed, table)
        summary.imported += counts["imported"]
        summary.updated += counts["updated"]

    return write


def _parse_deferred(row: dict[str, Any]) -> None:
    """Parse the row's values held unparsed (a final line's vector): this row is written."""
    for name, value in row.items():
        if isinstance(value, DeferredVector):
            row[name] = value.parse()


def _interrupted(summary: ImportSummary, exc: DatabaseError) -> ImportInterrupted:
    """A database error part way: the import stops, and says how far it got (the caller records that)."""
    done = summary.imported + summary.updated
    return ImportInterrupted(f"import into activities failed after {done} rows: {exc}", summary)
