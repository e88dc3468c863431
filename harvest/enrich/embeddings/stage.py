"""The embeddings stage: reuse known vectors, embed a few now or submit an OpenAI batch for the rest, then collect.

The batch id is the only thing that travels from submit to collect, and it is persisted, so a resumed
run polls the batch it already paid for instead of submitting a second one. Vectors are stored as a
float32 `.npy` matrix (rows in `standardized.jsonl` order, 4 bytes × dimensions per activity) plus an
`embeddings_index.jsonl` that says, per row, whether it holds a vector and, if not, why.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator
from sqlalchemy.engine import Engine

from harvest.cost import Counter, Meter, Reservation, tokens_from_chars
from harvest.enrich.embeddings.api import embedding_text
from harvest.enrich.embeddings.batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_REQUESTS,
    PARTIAL_STATUSES,
    BatchHandle,
    BatchResult,
    check_batch,
    input_digest,
    input_lines,
    iter_batch_results,
    request_line,
    run_batches,
    submit_batch,
    write_batch_parts,
)
from harvest.enrich.embeddings.matrix import EmbeddingMatrix
from harvest.enrich.embeddings.reuse import kept_run_embeddings, reusable_embeddings
from harvest.enrich.embeddings.sync import embed_texts
from harvest.errors import BatchNotReadyError, DatabaseError, EmbeddingError, StorageError
from harvest.models import Activity, FileRef
from harvest.pipeline import StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl, store_local_file, write_jsonl
from harvest.storage.keys import part_kind, run_key

WRITE_BATCH = 512  # stored vectors validated and written into the matrix at once
logger = logging.getLogger(__name__)


class BatchPart(BaseModel):
    """One batch of a run's embeddings: OpenAI takes at most 50,000 requests and 200 MB per batch, so a large run
    submits several, polled together."""

    batch_id: str
    input_file_id: str
    lines: int = 0


class SubmittedBatch(BaseModel):
    """What `collect_embeddings` needs: the prefilled matrix and, when some texts went to batches, the batches.

    When no text went to a batch (every vector reused or embedded now), there is nothing to collect: `files`
    then holds the finished `embeddings.npy` and `embeddings_index.jsonl`, and `prefill_uri` is None.
    `batch_id`/`input_file_id` are the first part's (what a result stored before parts holds); `parts` all of them.
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
    parts: list[BatchPart] = Field(default_factory=list, description="Every batch of the submission, in order.")
    dimensions: int | None = Field(default=None, description="The vector length the batches were asked for.")

    @model_validator(mode="after")
    def _one_part_at_least(self) -> SubmittedBatch:
        if not self.parts and self.batch_id and self.input_file_id:  # a result stored before parts
            self.parts = [BatchPart(batch_id=self.batch_id, input_file_id=self.input_file_id)]
        return self

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
    max_requests: int = MAX_BATCH_REQUESTS, max_bytes: int = MAX_BATCH_BYTES,
) -> tuple[StageResult, SubmittedBatch | None, StageResult | None]:
    """Fill what is already known, embed the rest now or in a batch.

    1. With `reuse`, vectors of activities already imported with the same content hash and model are copied
       from the `activities` table: an unchanged re-run sends OpenAI nothing.
    2. If fewer than `sync_below` texts are left, they are embedded now on the synchronous endpoint.
    3. Otherwise the rest goes into batch input JSONL files of at most `max_requests` lines and `max_bytes` bytes
       each (OpenAI's per-batch limits; kept in the run's files), each uploaded as a batch, all polled together.
    With a batch, the known vectors are stored as `embeddings_prefill.npy`; `collect_embeddings` completes it.
    Without one, the vectors are final here: they are stored as `embeddings.npy` + `embeddings_index.jsonl`
    and returned as the third element (what `collect_embeddings` would have returned), so nothing is
    uploaded, downloaded and uploaded again for an unchanged re-run.
    With a `meter`, the texts' estimated cost is held against the run's budget first; when it does not fit,
    nothing is sent and those activities have no embedding (a warning says so).
    With `run_started` (epoch seconds), the batches of this run created since then by an attempt that died before
    recording them are checked against this attempt's input (`_adopt`): one whose input file is exactly a part's
    is collected instead of submitting that part again; the finished lines of an expired or cancelled one (its
    output file) are kept when their request is this attempt's, and not sent again.
    """
    result = StageResult()
    collected: StageResult | None = None
    handles: list[BatchPart] = []
    prefill: FileRef | None = None
    with timed(result.stats), tempfile.TemporaryDirectory(prefix="harvest-") as tmp:
        rows, hashes, count = _rows(store, standardized)
        prefill_path = Path(tmp) / "embeddings_prefill.npy"
        with EmbeddingMatrix(prefill_path, count, dimensions) as matrix:
            reused = _reuse_stored(matrix, reuse, model, hashes, rows, result)
            if reuse is not None and matrix.missing.any():
                left = {key: value for key, value in hashes.items() if matrix.missing[rows[key]]}
                reused += _reuse(matrix, lambda: kept_run_embeddings(reuse, store, run_id, model, left), rows,
                                 result, "kept")
            texts = _Remaining(store, standardized, rows, ~matrix.missing)
            parts = (write_batch_parts(texts.counted(), model, Path(tmp), dimensions=dimensions,
                                       max_requests=max_requests, max_bytes=max_bytes)
                     if not texts.present.all() else [])
            pending = sum(lines for _, lines in parts)
            held, over_budget = _hold(meter, pending, texts.sent_chars, sync_below, result)
            if over_budget:
                pending = 0
            synced = kept = 0
            earlier: list[Any] = []
            if 0 < pending < sync_below:
                synced = _embed_now(client, texts, model, dimensions, matrix, rows, meter, held)
            elif pending and run_started is not None:  # going to batches: what an earlier attempt left at OpenAI
                earlier = run_batches(client, run_id, since=run_started)
                kept = _keep_finished(client, earlier, store, standardized, matrix, rows, model, dimensions, meter,
                                      result)
                if kept:  # only the lines still missing are sent (the hold, made for more, is settled on collection)
                    texts = _Remaining(store, standardized, rows, ~matrix.missing)
                    parts = (write_batch_parts(texts, model, Path(tmp), dimensions=dimensions,
                                               max_requests=max_requests, max_bytes=max_bytes)
                             if not texts.present.all() else [])
                    pending = sum(lines for _, lines in parts)
                    if not pending and meter is not None:
                        meter.release(held)
            missing = matrix.missing
        if pending and not synced:
            prefill = _store_for_batch(store, run_id, prefill_path, parts, count, pending, result)
            handles = _submit_or_adopt(client, run_id, parts, earlier, meter, held, result, max_bytes=max_bytes)
        elif count:
            collected = StageResult()
            reason = "over the run's budget (max_cost_usd)" if over_budget else "no text to embed"
            with timed(collected.stats):
                _store_vectors(store, run_id, rows, prefill_path, missing, {}, collected, missing_reason=reason)
    result.stats.items_in = count
    result.stats.items_out = reused + kept + synced + (pending if handles else 0)
    result.stats.details.update({"reused": reused, "embedded_now": synced, "batched": pending if handles else 0})
    if kept:
        result.stats.details["kept_from_earlier_batches"] = kept
    if over_budget:
        result.stats.details["over_budget"] = over_budget
    if handles:  # all a resumed attempt needs to collect these batches instead of paying again (resume.py)
        result.stats.details.update({
            "batch_id": handles[0].batch_id, "input_file_id": handles[0].input_file_id, "model": model,
            "dimensions": dimensions, "reserved_usd": held.usd if held else 0.0,
        })
        if handles:  # every part, in order (details hold scalars): resume.py reads them back
            result.stats.details.update({
                "batch_ids": ",".join(part.batch_id for part in handles),
                "input_file_ids": ",".join(part.input_file_id for part in handles),
                "part_lines": ",".join(str(part.lines) for part in handles),
            })
    if count == 0:
        result.warn("no activities to embed")
        return result, None, None
    return result, SubmittedBatch(
        batch_id=handles[0].batch_id if handles else None, input_file_id=handles[0].input_file_id if handles else None,
        records=count, model=model, prefill_uri=prefill.uri if prefill else None,
        files=collected.files if collected else [], reserved_usd=held.usd if handles and held else 0.0,
        parts=handles, dimensions=dimensions,
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


def _store_for_batch(store: ObjectStore, run_id: str, prefill_path: Path, parts: list[tuple[Path, int]], count: int,
                     pending: int, result: StageResult) -> FileRef:
    """Keep the prefilled matrix (completed by `collect_embeddings`) and the batch inputs with the run's files
    (`embeddings_batch_input`, then `embeddings_batch_input.part-0001`…); returns the prefill."""
    prefill = store_local_file(
        store, run_key(run_id, "embeddings_prefill", "npy"), "embeddings_prefill", prefill_path,
        records=count, content_type="application/x-npy",
    )
    result.files.append(prefill)
    for index, (path, lines) in enumerate(parts):
        kind = "embeddings_batch_input" if index == 0 else part_kind("embeddings_batch_input", index)
        result.files.append(store_local_file(
            store, run_key(run_id, kind, "jsonl"), kind, path, records=lines, content_type="application/x-ndjson",
        ))
    return prefill


def _keep_finished(client: Any, earlier: list[Any], store: ObjectStore, standardized: FileRef, matrix: EmbeddingMatrix,
                   rows: dict[str, int], model: str, dimensions: int, meter: Meter | None, result: StageResult) -> int:
    """Write into the matrix the lines an earlier attempt's expired or cancelled batch finished (its output file),
    for the activities still without a vector whose request is exactly this attempt's (same text, model and
    dimensions); they were paid for, so they are charged and not sent again. Returns how many."""
    ended = [b for b in earlier if b.status in PARTIAL_STATUSES and b.output_file_id]
    if not ended or not matrix.missing.any():
        return 0
    mine: dict[str, bytes] = {}
    missing = matrix.missing
    for record in iter_jsonl(store, standardized.uri):
        if missing[rows[record["id"]]] and (ask := request_line(Activity.model_validate(record), model, dimensions)):
            mine[record["id"]] = ask
    kept = 0
    for batch in ended:
        try:
            asked = input_lines(client, batch.input_file_id)
            same = {key for key, ask in asked.items() if mine.get(key) == ask}
            billed: dict[str, int] = {Counter.batch_lines: 0, Counter.batch_tokens: 0}
            finished = BatchResult(batch_id=batch.id, status=batch.status, output_file_id=batch.output_file_id,
                                   error_file_id=None)
            for line in iter_batch_results(client, finished, dimensions=dimensions):
                billed[Counter.batch_lines] += line.tokens > 0
                billed[Counter.batch_tokens] += line.tokens
                if line.custom_id in same and line.vector is not None and matrix.missing[rows[line.custom_id]]:
                    matrix.write(rows[line.custom_id], line.vector)
                    mine.pop(line.custom_id, None)
                    kept += 1
        except EmbeddingError as exc:  # what cannot be read is sent again: paid twice, never lost
            result.warn(f"the lines batch {batch.id} finished before it ended {batch.status} were not read: {exc}")
            continue
        if meter is not None:  # paid when the batch ran; its hold went with the attempt that submitted it
            meter.charge(billed)
        result.warn(f"batch {batch.id} of an earlier attempt ended {batch.status}: kept the {len(same)} line(s) of "
                    "this attempt's input it finished; only the rest are sent again")
    return kept


def _submit_or_adopt(client: Any, run_id: str, parts: list[tuple[Path, int]], earlier: list[Any], meter: Meter | None,
                     held: Reservation | None, result: StageResult, *, max_bytes: int) -> list[BatchPart]:
    """Submit each part, unless an earlier attempt of this run created a batch for exactly that input (the same
    bytes: ids, texts, model and dimensions) that has not ended badly: that batch is collected instead. A batch
    of this run found for any other input is not adopted (its lines would not be this attempt's). The hold is
    released if a part can be neither submitted nor adopted."""
    live = [b for b in earlier if b.status not in ("failed", "expired", "cancelled")]
    digests: dict[str, str] = {}  # a found batch's input sha256, by batch id
    handles: list[BatchPart] = []
    try:
        for index, (path, lines) in enumerate(parts):
            digest = input_digest(path)
            found = next((b for b in live if _input_digest_of(client, b, digests) == digest), None)
            if found is not None:
                live.remove(found)
                result.stats.details["batch_found"] = int(result.stats.details.get("batch_found", 0)) + 1
                result.warn(f"batch {found.id} was submitted by an earlier attempt that stopped before recording "
                            "it: collecting it instead of submitting another")
                handles.append(BatchPart(batch_id=found.id, input_file_id=found.input_file_id, lines=lines))
                continue
            metadata = {"harvest_run_id": run_id, "harvest_part": str(index), "harvest_input_sha256": digest}
            handle: BatchHandle = submit_batch(client, path, metadata=metadata, max_bytes=max_bytes)
            handles.append(BatchPart(batch_id=handle.batch_id, input_file_id=handle.input_file_id, lines=lines))
    except BaseException:
        if meter is not None:
            meter.release(held)
        raise
    for batch in live:
        result.warn(f"batch {batch.id} of an earlier attempt was not collected: its input is not this attempt's "
                    "(other lines, model or dimensions)")
    return handles


def _input_digest_of(client: Any, batch: Any, digests: dict[str, str]) -> str:
    """The sha256 of a found batch's input: from its metadata when harvest wrote it, else from the file itself."""
    if batch.id not in digests:
        recorded = (batch.metadata or {}).get("harvest_input_sha256")
        if recorded:
            digests[batch.id] = str(recorded)
        else:
            try:
                data = client.files.content(batch.input_file_id).content
                digests[batch.id] = hashlib.sha256(data).hexdigest()
            except Exception as exc:  # noqa: BLE001 - an input that cannot be read is not adopted
                logger.warning("embeddings: input of batch %s not read (%s); not adopting it", batch.id, exc)
                digests[batch.id] = ""
    return digests[batch.id]


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
        ended, bad = _check_parts(client, batch.parts)
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
                for finished in ended:
                    for line in iter_batch_results(client, finished, dimensions=dimensions):
                        billed[Counter.batch_lines] += line.tokens > 0
                        billed[Counter.batch_tokens] += line.tokens
                        yield line

            failures = matrix.write_rows(billed_lines(), rows) if ended else {}
            if meter is not None:
                meter.charge(billed, Reservation(batch.reserved_usd))
            result.stats.details.update(billed)
            if len(batch.parts) > 1:
                result.stats.details["batches"] = len(batch.parts)
            missing = matrix.missing  # NaN rows: never written
        for finished in ended:
            if finished.status != "completed":
                done = finished.request_counts.get("completed", 0)
                result.warn(f"batch {finished.batch_id} ended {finished.status} after {done} of "
                            f"{finished.request_counts.get('total', 0)} lines: kept those vectors, the rest have none")
        for problem in bad:
            result.warn(f"{problem}: its lines have no vector; the other batches' are kept")
        for key, error in failures.items():
            if key not in rows:
                result.warn(f"batch output line {key!r} not used: {error}")
        status = {rows[key]: error for key, error in failures.items() if key in rows}
        _store_vectors(
            store, run_id, rows, matrix_path, missing, status, result, missing_reason="missing from batch output"
        )
    return result


def _check_parts(client: Any, parts: list[BatchPart]) -> tuple[list[BatchResult], list[str]]:
    """The ended parts and why the others ended badly; BatchNotReadyError while any part runs (its progress the
    sum over the parts), EmbeddingError when every part ended badly or a status cannot be read."""
    ended: list[BatchResult] = []
    bad: list[str] = []
    waiting: list[BatchNotReadyError] = []
    for part in parts:
        try:
            ended.append(check_batch(client, part.batch_id))
        except BatchNotReadyError as exc:
            waiting.append(exc)
        except EmbeddingError as exc:
            if not str(exc).startswith(f"batch {part.batch_id} "):  # the API could not be asked: not an outcome
                raise
            bad.append(str(exc))
    if waiting:
        if len(parts) == 1:
            raise waiting[0]
        done = sum(e.done or 0 for e in waiting) + sum(r.request_counts.get("completed", 0) for r in ended)
        total = sum(e.total or 0 for e in waiting) + sum(r.request_counts.get("total", 0) for r in ended)
        raise BatchNotReadyError(f"{len(waiting)} of {len(parts)} batches still running ({done}/{total} done); "
                                 f"e.g. {waiting[0]}", done=done, total=total)
    if parts and not ended:
        raise EmbeddingError("; ".join(bad))
    return ended, bad


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
