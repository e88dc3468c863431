"""The embeddings stage: reuse known vectors, embed a few now or submit an OpenAI batch for the rest, then collect.

The batch id is the only thing that travels from submit to collect, and it is persisted, so a resumed
run polls the batch it already paid for instead of submitting a second one. Vectors are stored as a
float32 `.npy` matrix (rows in `standardized.jsonl` order, 4 bytes × dimensions per activity) plus an
`embeddings_index.jsonl` that says, per row, whether it holds a vector and, if not, why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from harvest.cost import Counter, Meter, Reservation, tokens_from_chars
from harvest.enrich.embeddings.api import embedding_text
from harvest.enrich.embeddings.batch import (
    BatchHandle,
    check_batch,
    find_run_batch,
    iter_batch_results,
    submit_batch,
    write_batch_input,
)
from harvest.enrich.embeddings.matrix import EmbeddingMatrix
from harvest.enrich.embeddings.reuse import kept_run_embeddings, reusable_embeddings
from harvest.enrich.embeddings.sync import embed_texts
from harvest.errors import BatchNotReadyError, DatabaseError, EmbeddingError, StorageError
from harvest.models import Activity, FileRef
from harvest.pipeline import StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl, store_local_file, write_jsonl
from harvest.storage.keys import run_key

WRITE_BATCH = 512  # stored vectors validated and written into the matrix at once


class SubmittedBatch(BaseModel):
    """What `collect_embeddings` needs: the prefilled matrix and, when some texts went to a batch, the batch.

    When no text went to a batch (every vector reused or embedded now), there is nothing to collect: `files`
    then holds the finished `embeddings.npy` and `embeddings_index.jsonl`, and `prefill_uri` is None.
    """

    batch_id: str | None
    input_file_id: str | None
    records: int
    model: str
    prefill_uri: str | None = Field(description="embeddings_prefill.npy: reused and synchronously embedded vectors.")
    files: list[FileRef] = Field(
        default_factory=list, description="The stored vectors when nothing is left to collect."
    )
    reserved_usd: float = Field(
        default=0.0, description="The batch's estimated cost, held against the run's budget until it is collected."
    )

    @property
    def complete(self) -> bool:
        return bool(self.files)


def _rows(store: ObjectStore, standardized: FileRef) -> tuple[dict[str, int], dict[str, str], int]:
    """Activity id → matrix row (file order) and → content hash, and the number of rows."""
    rows: dict[str, int] = {}
    hashes: dict[str, str] = {}
    count = 0
    for count, record in enumerate(iter_jsonl(store, standardized.uri), start=1):
        rows[record["id"]] = count - 1
        hashes[record["id"]] = record.get("content_hash") or ""
    return rows, hashes, count


def submit_embeddings(
    store: ObjectStore, run_id: str, standardized: FileRef, client: Any, model: str, *, dimensions: int,
    reuse: Engine | None = None, sync_below: int = 0, meter: Meter | None = None, run_started: float | None = None,
) -> tuple[StageResult, SubmittedBatch | None, StageResult | None]:
    """Fill what is already known, embed the rest now or in a batch.

    1. With `reuse`, vectors of activities already imported with the same content hash and model are copied
       from the `activities` table: an unchanged re-run sends OpenAI nothing.
    2. If fewer than `sync_below` texts are left, they are embedded now on the synchronous endpoint.
    3. Otherwise the rest goes into the batch input JSONL (kept in the run's files), uploaded as a batch.
    With a batch, the known vectors are stored as `embeddings_prefill.npy`; `collect_embeddings` completes it.
    Without one, the vectors are final here: they are stored as `embeddings.npy` + `embeddings_index.jsonl`
    and returned as the third element (what `collect_embeddings` would have returned), so nothing is
    uploaded, downloaded and uploaded again for an unchanged re-run.
    With a `meter`, the texts' estimated cost is held against the run's budget first; when it does not fit,
    nothing is sent and those activities have no embedding (a warning says so).
    With `run_started` (epoch seconds), a batch of this run created since then by an attempt that died before
    recording it is taken instead of submitting another (`find_run_batch`).
    """
    result = StageResult()
    collected: StageResult | None = None
    handle: BatchHandle | None = None
    prefill: FileRef | None = None
    with timed(result.stats), tempfile.TemporaryDirectory(prefix="harvest-") as tmp:
        rows, hashes, count = _rows(store, standardized)
        prefill_path = Path(tmp) / "embeddings_prefill.npy"
        batch_path = Path(tmp) / "embeddings_batch_input.jsonl"
        with EmbeddingMatrix(prefill_path, count, dimensions) as matrix:
            reused = _reuse_stored(matrix, reuse, model, hashes, rows, result)
            if reuse is not None and matrix.missing.any():
                left = {key: value for key, value in hashes.items() if matrix.missing[rows[key]]}
                reused += _reuse(matrix, lambda: kept_run_embeddings(reuse, store, run_id, model, left), rows,
                                 result, "kept")
            texts = _Remaining(store, standardized, rows, ~matrix.missing)
            with open(batch_path, "wb") as out:
                pending = write_batch_input(texts.counted(), model, out) if not texts.present.all() else 0
            held, over_budget = _hold(meter, pending, texts.sent_chars, sync_below, result)
            if over_budget:
                pending = 0
            synced = 0
            if 0 < pending < sync_below:
                synced = _embed_now(client, texts, model, dimensions, matrix, rows, meter, held)
            missing = matrix.missing
        if pending and not synced:
            prefill = _store_for_batch(store, run_id, prefill_path, batch_path, count, pending, result)
            handle = _submit_or_find(client, run_id, batch_path, run_started, meter, held, result)
        elif count:
            collected = StageResult()
            reason = "over the run's budget (max_cost_usd)" if over_budget else "no text to embed"
            with timed(collected.stats):
                _store_vectors(store, run_id, rows, prefill_path, missing, {}, collected, missing_reason=reason)
    result.stats.items_in = count
    result.stats.items_out = reused + synced + (pending if handle else 0)
    result.stats.details.update({"reused": reused, "embedded_now": synced, "batched": pending if handle else 0})
    if over_budget:
        result.stats.details["over_budget"] = over_budget
    if handle:  # all a resumed attempt needs to collect this batch instead of paying for another (resume.py)
        result.stats.details.update({"batch_id": handle.batch_id, "input_file_id": handle.input_file_id,
                                     "model": model, "reserved_usd": held.usd if held else 0.0})
    if count == 0:
        result.warn("no activities to embed")
        return result, None, None
    return result, SubmittedBatch(
        batch_id=handle.batch_id if handle else None, input_file_id=handle.input_file_id if handle else None,
        records=count, model=model, prefill_uri=prefill.uri if prefill else None,
        files=collected.files if collected else [], reserved_usd=held.usd if handle and held else 0.0,
    ), collected


def _reuse_stored(matrix: EmbeddingMatrix, engine: Engine | None, model: str, hashes: dict[str, str],
                  rows: dict[str, int], result: StageResult) -> int:
    """Copy the vectors of activities already imported with the same content hash and model into the matrix,
    validated and written a batch at a time; returns how many. A database error only costs the saving."""
    if engine is None:
        return 0
    return _reuse(matrix, lambda: reusable_embeddings(engine, model, hashes), rows, result, "stored")


def _reuse(matrix: EmbeddingMatrix, source: Callable[[], Iterator[tuple[str, Any]]], rows: dict[str, int],
           result: StageResult, what: str) -> int:
    """Write `source`'s (id, vector) pairs into the matrix a batch at a time, each validated; returns how many. A
    database or storage error only costs the saving (those activities are embedded)."""
    reused = 0
    try:
        stored = source()
        while batch := list(islice(stored, WRITE_BATCH)):
            refused = matrix.write_many([(rows[activity_id], vector) for activity_id, vector in batch])
            reused += len(batch) - len(refused)
            for index, problem in refused.items():  # e.g. a stored vector of another length: embedded again
                result.warn(f"{what} embedding of {batch[index][0]} not reused: {problem}")
    except (DatabaseError, StorageError) as exc:  # reuse saves money; without it, everything is embedded
        result.warn(f"{what} embeddings not reused: {exc}")
    return reused


class _Remaining:
    """The activities without a vector yet (`present` says which rows have one), read again from
    standardized.jsonl each time they are needed; `counted()` adds up the characters of their texts as the
    batch input is written (what the budget's hold is estimated from)."""

    def __init__(self, store: ObjectStore, standardized: FileRef, rows: dict[str, int], present: np.ndarray) -> None:
        self.store = store
        self.standardized = standardized
        self.rows = rows
        self.present = present
        self.sent_chars = 0

    def __iter__(self) -> Iterator[Activity]:
        for record in iter_jsonl(self.store, self.standardized.uri):
            if not self.present[self.rows[record["id"]]]:
                yield Activity.model_validate(record)

    def counted(self) -> Iterator[Activity]:
        for activity in self:
            self.sent_chars += len(embedding_text(activity))
            yield activity


def _hold(meter: Meter | None, pending: int, chars: int, sync_below: int,
          result: StageResult) -> tuple[Reservation | None, int]:
    """Hold the texts' estimated cost against the run's budget: (the hold, 0), or (None, `pending`) when it
    does not fit (nothing is sent then, and a warning says so)."""
    if not pending or meter is None:
        return None, 0
    held = meter.reserve(_estimate(pending, chars, batched=pending >= sync_below), "embeddings")
    if held is not None:
        return held, 0
    result.warn(f"budget: {pending} activities left without embeddings: their estimated cost would pass the "
                "run's max_cost_usd")
    return None, pending


def _embed_now(client: Any, texts: _Remaining, model: str, dimensions: int, matrix: EmbeddingMatrix,
               rows: dict[str, int], meter: Meter | None, held: Reservation | None) -> int:
    """Embed the remaining texts on the synchronous endpoint into the matrix, charging the tokens the answers
    report; returns how many (a repeated id is embedded once)."""
    todo = [(a.id, text) for a in texts if (text := embedding_text(a))]
    todo = list(dict(todo).items())  # a repeated id is embedded once
    tokens: list[int] = []
    try:
        vectors = embed_texts(client, [text for _, text in todo], model=model, dimensions=dimensions,
                              on_usage=tokens.append)
    finally:
        if meter is not None:
            meter.charge({Counter.embedding_requests: len(tokens), Counter.embedding_tokens: sum(tokens)}, held)
    for (activity_id, _), vector in zip(todo, vectors):
        matrix.write(rows[activity_id], vector)
    return len(todo)


def _store_for_batch(store: ObjectStore, run_id: str, prefill_path: Path, batch_path: Path, count: int,
                     pending: int, result: StageResult) -> FileRef:
    """Keep the prefilled matrix (completed by `collect_embeddings`) and the batch input with the run's files;
    returns the prefill."""
    prefill = store_local_file(
        store, run_key(run_id, "embeddings_prefill", "npy"), "embeddings_prefill", prefill_path,
        records=count, content_type="application/x-npy",
    )
    result.files.append(prefill)
    result.files.append(store_local_file(
        store, run_key(run_id, "embeddings_batch_input", "jsonl"), "embeddings_batch_input", batch_path,
        records=pending, content_type="application/x-ndjson",
    ))
    return prefill


def _submit_or_find(client: Any, run_id: str, batch_path: Path, run_started: float | None, meter: Meter | None,
                    held: Reservation | None, result: StageResult) -> BatchHandle:
    """Submit the batch, unless an earlier attempt of this run created one it never recorded (then that one is
    collected); the hold is released if neither happens."""
    try:
        if run_started is not None and (handle := find_run_batch(client, run_id, since=run_started)):
            result.stats.details["batch_found"] = 1
            result.warn(f"batch {handle.batch_id} was submitted by an earlier attempt that stopped before "
                        "recording it: collecting it instead of submitting another")
            return handle
        return submit_batch(client, batch_path, metadata={"harvest_run_id": run_id})
    except BaseException:
        if meter is not None:
            meter.release(held)
        raise


def _estimate(texts: int, chars: int, *, batched: bool) -> dict[str, int]:
    """What embedding `texts` texts of `chars` characters will likely use (tokens from the text length)."""
    tokens = tokens_from_chars(chars)
    if batched:
        return {Counter.batch_lines: texts, Counter.batch_tokens: tokens}
    return {Counter.embedding_requests: 1, Counter.embedding_tokens: tokens}


def collect_embeddings(
    store: ObjectStore, run_id: str, standardized: FileRef, client: Any, batch: SubmittedBatch, *, dimensions: int,
    meter: Meter | None = None,
) -> StageResult:
    """Raises BatchNotReadyError while the batch runs (the caller retries) and EmbeddingError when it ended badly.
    The tokens each output line reports (`response.body.usage`) are charged to `meter`, releasing the hold."""
    if batch.prefill_uri is None:
        raise EmbeddingError("this submission went to no batch: its vectors were stored when it was submitted")
    try:
        finished = check_batch(client, batch.batch_id) if batch.batch_id else None
    except BatchNotReadyError:
        raise
    except EmbeddingError:  # final (failed, or unreadable): no output to read usage from, so the hold is released
        if meter is not None:
            meter.release(Reservation(batch.reserved_usd))
        raise
    result = StageResult()
    with timed(result.stats), tempfile.TemporaryDirectory(prefix="harvest-") as tmp:
        rows, _, count = _rows(store, standardized)
        matrix_path = Path(tmp) / "embeddings.npy"
        store.get_file(store.key_for(batch.prefill_uri), matrix_path)
        with EmbeddingMatrix.reopen(matrix_path) as matrix:
            if matrix.rows != count or matrix.dimensions != dimensions:
                raise EmbeddingError(
                    f"prefilled matrix is {matrix.rows}×{matrix.dimensions}, expected {count}×{dimensions}"
                )
            billed: dict[str, int] = {Counter.batch_lines: 0, Counter.batch_tokens: 0}

            def billed_lines() -> Iterator[Any]:
                for line in iter_batch_results(client, finished, dimensions=dimensions) if finished else ():
                    billed[Counter.batch_lines] += line.tokens > 0
                    billed[Counter.batch_tokens] += line.tokens
                    yield line

            failures = matrix.write_rows(billed_lines(), rows) if finished else {}
            if meter is not None:
                meter.charge(billed, Reservation(batch.reserved_usd))
            result.stats.details.update(billed)
            missing = matrix.missing  # NaN rows: never written
        if finished is not None and finished.status != "completed":
            done = finished.request_counts.get("completed", 0)
            result.warn(f"batch {finished.batch_id} ended {finished.status} after {done} of "
                        f"{finished.request_counts.get('total', 0)} lines: kept those vectors, the rest have none")
        for key, error in failures.items():
            if key not in rows:
                result.warn(f"batch output line {key!r} not used: {error}")
        status = {rows[key]: error for key, error in failures.items() if key in rows}
        _store_vectors(
            store, run_id, rows, matrix_path, missing, status, result, missing_reason="missing from batch output"
        )
    return result


def _store_vectors(
    store: ObjectStore, run_id: str, rows: dict[str, int], matrix_path: Path, missing: np.ndarray,
    errors: dict[int, str], result: StageResult, *, missing_reason: str,
) -> None:
    """Store the finished matrix as `embeddings.npy` and its `embeddings_index.jsonl` (per row: a vector or why
    not), counting and warning into `result`."""
    count = len(missing)

    def index() -> Any:
        for activity_id, row in rows.items():
            error = errors.get(row) or (missing_reason if missing[row] else None)
            if error:
                result.stats.skipped += 1
                result.warn(f"no embedding for {activity_id}: {error}")
            else:
                result.stats.items_out += 1
            yield {"id": activity_id, "row": row, "ok": error is None, "error": error}

    index_ref = write_jsonl(store, run_key(run_id, "embeddings_index", "jsonl"), "embeddings_index", index())
    matrix_ref = store_local_file(
        store, run_key(run_id, "embeddings", "npy"), "embeddings", matrix_path,
        records=count, content_type="application/x-npy",
    )
    result.stats.items_in = count
    result.files.extend([matrix_ref, index_ref])
    result.stats.details["bytes_per_activity"] = round(matrix_ref.bytes / count, 1) if count else 0
