"""OpenAI embeddings for activities: the Batch API for runs (half the price, no rate-limit juggling), the
synchronous endpoint for small jobs, and a float32 ``.npy`` matrix to keep the vectors in.

Everything goes through the official ``openai`` SDK (its own retries handle 429/5xx), so any
OpenAI-compatible endpoint, including ``testkit.openai_server``, works by base URL. No Prefect here: the
flow decides when to submit and how long to keep polling; :func:`check_batch` only says "not yet"
(:class:`~harvest.errors.BatchNotReadyError`) or "it ended badly" (:class:`~harvest.errors.EmbeddingError`).

One activity whose vector is missing or malformed is a row with an error, never an exception: a batch of
50,000 lines must not be thrown away for one bad line.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, Literal

import numpy as np
import openai
from numpy.lib.format import (
    read_array_header_1_0,
    read_array_header_2_0,
    read_magic,
    write_array_header_1_0,
)

from harvest.errors import BatchNotReadyError, ConfigError, EmbeddingError
from harvest.models import Activity
from harvest.net.sdk_transport import deadline_http_client

logger = logging.getLogger(__name__)

EMBEDDINGS_ENDPOINT: Final = "/v1/embeddings"
# OpenAI's Batch API limits: 50,000 requests and 200 MB per input file (we stay a little under the bytes).
MAX_BATCH_LINES = 50_000
MAX_BATCH_BYTES = 190 * 1024 * 1024
# ~8,191 tokens per input; 8,000 characters is about 2,000 tokens: room for any language.
MAX_TEXT_CHARS = 8_000
# Sync endpoint: at most 2,048 inputs and 300k tokens per request; these bounds stay well inside both.
SYNC_CHUNK_INPUTS = 256
SYNC_CHUNK_CHARS = 400_000
NOT_READY_STATUSES = {"validating", "in_progress", "finalizing", "cancelling"}
FAILED_STATUSES = {"failed", "expired", "cancelled"}
PARTIAL_STATUSES = {"expired", "cancelled"}  # may end with an output file of the lines done before the end


def embedding_text(activity: Activity, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """"name | description | formattedAddress | tag1, tag2": what makes two activities similar, bounded."""
    parts = [
        activity.name,
        activity.description,
        activity.location.formattedAddress if activity.location else None,
        ", ".join(t.strip() for t in activity.tags if t and t.strip()),
    ]
    text = " | ".join(" ".join(p.split()) for p in parts if p and p.strip())
    return text[:max_chars].rstrip()


def _supports_dimensions(model: str) -> bool:
    """Only text-embedding-3 and later accept a ``dimensions`` parameter; ada-002 rejects it."""
    return not model.startswith("text-embedding-ada")


def _request_line(activity: Activity, model: str, dimensions: int | None) -> bytes | None:
    text = embedding_text(activity)
    if not text:
        return None
    body: dict[str, Any] = {"model": model, "input": text}
    if dimensions is not None and _supports_dimensions(model):
        body["dimensions"] = dimensions
    line = {"custom_id": activity.id, "method": "POST", "url": EMBEDDINGS_ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _unique_request_lines(
    activities: Iterable[Activity], model: str, dimensions: int | None
) -> Iterator[tuple[str, bytes]]:
    """(activity id, request line) per activity, lazily; a repeated id or an empty text is skipped with a
    warning (the batch would reject a duplicate custom_id)."""
    seen: set[str] = set()
    for activity in activities:
        if activity.id in seen:
            logger.warning("embeddings: activity %s appears twice; embedding it once", activity.id)
            continue
        line = _request_line(activity, model, dimensions)
        if line is None:
            logger.warning("embeddings: activity %s has no text to embed; skipped", activity.id)
            continue
        seen.add(activity.id)
        yield activity.id, line


def write_batch_input(activities: Iterable[Activity], model: str, out: BinaryIO, *,
                      dimensions: int | None = None, max_lines: int | None = None) -> int:
    """Write one Batch-API request line per activity (custom_id = activity.id); returns the lines written.

    Activities with nothing to embed or a repeated id are skipped with a warning (the batch would reject a
    duplicate custom_id). With `max_lines`, at most that many activities are consumed from the iterable, so
    calling again with the same iterator continues where the previous file stopped.
    """
    count = 0
    if max_lines is not None and max_lines <= 0:
        return count
    for _, line in _unique_request_lines(activities, model, dimensions):
        out.write(line)
        count += 1
        if max_lines is not None and count >= max_lines:
            break
    return count


@dataclass(frozen=True)
class BatchInputPart:
    """One input file of a split batch."""

    path: Path
    lines: int
    bytes: int


def split_batch_input(activities: Iterable[Activity], model: str, directory: Path, *,
                      dimensions: int | None = None, max_lines: int = MAX_BATCH_LINES,
                      max_bytes: int = MAX_BATCH_BYTES, prefix: str = "embeddings_batch_input") -> list[BatchInputPart]:
    """Write the batch input as as many files as OpenAI's per-file limits (lines and bytes) require."""
    directory.mkdir(parents=True, exist_ok=True)
    parts: list[BatchInputPart] = []
    out: BinaryIO | None = None
    lines = size = 0

    def close_part() -> None:
        nonlocal out
        if out is not None:
            out.close()
            parts.append(BatchInputPart(Path(out.name), lines, size))
            out = None

    try:
        for activity_id, line in _unique_request_lines(activities, model, dimensions):
            if len(line) > max_bytes:
                raise EmbeddingError(f"activity {activity_id}: request line of {len(line)} bytes exceeds {max_bytes}")
            if out is not None and (lines >= max_lines or size + len(line) > max_bytes):
                close_part()
            if out is None:
                out = open(directory / f"{prefix}.{len(parts):04d}.jsonl", "wb")  # noqa: SIM115 - closed in close_part
                lines = size = 0
            out.write(line)
            lines += 1
            size += len(line)
    finally:
        close_part()
    return parts


@dataclass(frozen=True)
class BatchHandle:
    """What to keep after submitting: the batch to poll and the input file to clean up."""

    batch_id: str
    input_file_id: str


@dataclass(frozen=True)
class BatchResult:
    """A completed batch: where its output and error lines are."""

    batch_id: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    request_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbeddingRow:
    """One line of a batch's output: a vector, or the reason there is none (custom_id None: unreadable line)."""

    custom_id: str | None
    vector: np.ndarray | None
    error: str | None
    tokens: int = 0  # the line's `response.body.usage.prompt_tokens`: what this line was billed for


def _api_failure(action: str, exc: openai.OpenAIError) -> EmbeddingError:
    status = getattr(exc, "status_code", None)
    detail = f"HTTP {status}: {exc}" if status else f"{type(exc).__name__}: {exc}"
    return EmbeddingError(f"{action} failed: {detail}")


def submit_batch(client: openai.OpenAI, input_path: Path, *, metadata: dict[str, str],
                 completion_window: Literal["24h"] = "24h") -> BatchHandle:
    """Upload the input JSONL (purpose "batch") and create an embeddings batch for it."""
    input_path = Path(input_path)
    try:
        size = input_path.stat().st_size
    except OSError as exc:
        raise EmbeddingError(f"batch input {input_path} cannot be read: {exc}") from exc
    if size == 0:
        raise EmbeddingError(f"batch input {input_path} is empty: nothing to embed")
    if size > 200 * 1024 * 1024:
        raise EmbeddingError(f"batch input {input_path} is {size} bytes, over OpenAI's 200 MB: use split_batch_input")
    try:
        with input_path.open("rb") as fh:
            uploaded = client.files.create(file=(input_path.name, fh), purpose="batch")
    except openai.OpenAIError as exc:
        raise _api_failure(f"uploading batch input {input_path.name}", exc) from exc
    try:
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint=EMBEDDINGS_ENDPOINT, completion_window=completion_window,
            metadata=metadata,
        )
    except openai.OpenAIError as exc:
        try:
            client.files.delete(uploaded.id)
        except openai.OpenAIError:
            logger.warning("embeddings: could not delete orphaned input file %s", uploaded.id)
        raise _api_failure(f"creating the batch for file {uploaded.id}", exc) from exc
    logger.info("embeddings: batch %s submitted for file %s (%d bytes)", batch.id, uploaded.id, size)
    return BatchHandle(batch_id=batch.id, input_file_id=uploaded.id)


def find_run_batch(client: openai.OpenAI, run_id: str, *, since: float) -> BatchHandle | None:
    """The batch an earlier attempt of run `run_id` created (its `harvest_run_id` metadata) at or after `since`
    (epoch seconds) and that has not ended badly, or None.

    For a worker killed between OpenAI creating its batch and the run row recording it: the resumed attempt
    finds the batch there instead of paying for the same lines again. Batches are listed newest first, so
    the search stops at the first one older than the run. A failed lookup returns None (the caller submits:
    a second batch costs money, a run without embeddings loses data) and logs why.
    """
    try:
        for batch in client.batches.list(limit=100):  # the SDK follows the `after` cursor page by page
            if batch.created_at < since:
                return None
            if (batch.metadata or {}).get("harvest_run_id") == run_id and batch.status not in FAILED_STATUSES:
                return BatchHandle(batch_id=batch.id, input_file_id=batch.input_file_id)
    except openai.OpenAIError as exc:
        logger.warning("embeddings: could not look for a batch this run already submitted (%s); submitting one",
                       _api_failure("listing batches", exc))
    return None


def check_batch(client: openai.OpenAI, batch_id: str) -> BatchResult:
    """The finished batch, or BatchNotReadyError while it runs, or EmbeddingError if it failed, or expired or was
    cancelled before finishing any line. An expired/cancelled batch with an output file is returned (status
    says so): its finished vectors are kept."""
    try:
        batch = client.batches.retrieve(batch_id)
    except openai.OpenAIError as exc:
        raise _api_failure(f"retrieving batch {batch_id}", exc) from exc
    counts = batch.request_counts
    request_counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed} if counts else {}
    progress = f"{request_counts.get('completed', 0)}/{request_counts.get('total', 0)} done" if counts else "no counts"
    if batch.status in NOT_READY_STATUSES:
        raise BatchNotReadyError(f"batch {batch_id} is {batch.status} ({progress})")
    if batch.status in PARTIAL_STATUSES and batch.output_file_id:
        # An expired or cancelled batch still delivers what it finished (the API's output file): paid for,
        # so kept; the rest are lines of its error file and end up as rows without a vector.
        logger.warning("embeddings: batch %s ended %s (%s); keeping the vectors it finished", batch_id,
                       batch.status, progress)
        return BatchResult(batch_id=batch.id, status=batch.status, output_file_id=batch.output_file_id,
                           error_file_id=batch.error_file_id, request_counts=request_counts)
    if batch.status in FAILED_STATUSES:
        errors = [
            (f"line {e.line}: " if e.line is not None else "") + f"{e.code or 'error'}: {e.message or ''}".strip()
            for e in ((batch.errors.data or []) if batch.errors else [])
        ]
        detail = "; ".join(errors) if errors else "no error details given"
        raise EmbeddingError(f"batch {batch_id} ended {batch.status} ({progress}): {detail}")
    if batch.status != "completed":
        raise EmbeddingError(f"batch {batch_id} has unknown status {batch.status!r}")
    return BatchResult(batch_id=batch.id, status=batch.status, output_file_id=batch.output_file_id,
                       error_file_id=batch.error_file_id, request_counts=request_counts)


def _decode_vector(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    if isinstance(embedding, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in embedding):
        return np.asarray(embedding, dtype=np.float32)
    raise ValueError(f"embedding is a {type(embedding).__name__}, not a list of floats or base64")


def _check_vector(vector: np.ndarray, dimensions: int) -> str | None:
    if vector.shape != (dimensions,):
        return f"wrong dimension {vector.size} (expected {dimensions})"
    if not np.isfinite(vector).all():
        return "vector has non-finite values"
    return None


def parse_batch_line(raw: str, *, dimensions: int, line_number: int = 0) -> EmbeddingRow:
    """One output/error file line → EmbeddingRow; never raises."""
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return EmbeddingRow(None, None, f"line {line_number}: unreadable batch output ({exc})")
    custom_id = record.get("custom_id") if isinstance(record.get("custom_id"), str) else None
    if custom_id is None:
        return EmbeddingRow(None, None, f"line {line_number}: batch output line without a custom_id")
    error = record.get("error")
    if error:
        if isinstance(error, dict):
            reason = f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
            return EmbeddingRow(custom_id, None, reason)
        return EmbeddingRow(custom_id, None, str(error))
    response = record.get("response")
    if not isinstance(response, dict):
        response = {}
    body = response.get("body")
    if not isinstance(body, dict):
        body = {}
    status = response.get("status_code")
    if status != 200:
        api_error = body.get("error")
        if not isinstance(api_error, dict):
            api_error = {}
        return EmbeddingRow(custom_id, None, f"HTTP {status}: {api_error.get('message') or 'request failed'}")
    data = body.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return EmbeddingRow(custom_id, None, "response has no embedding data")
    try:
        vector = _decode_vector(data[0].get("embedding"))
    except (ValueError, TypeError) as exc:
        return EmbeddingRow(custom_id, None, f"unreadable embedding: {exc}")
    problem = _check_vector(vector, dimensions)
    tokens = _prompt_tokens(body.get("usage"))
    return EmbeddingRow(custom_id, None, problem, tokens) if problem else EmbeddingRow(custom_id, vector, None, tokens)


def _prompt_tokens(usage: Any) -> int:
    """`usage.prompt_tokens` of an embeddings answer (a dict from a batch line, or the SDK's object); 0 if absent."""
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else getattr(usage, "prompt_tokens", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def iter_batch_results(client: openai.OpenAI, result: BatchResult, *, dimensions: int) -> Iterator[EmbeddingRow]:
    """Stream the output file, then the error file, one row per line; a bad line is a row with an error.

    Files are streamed line by line (``with_streaming_response``), so a 50,000-line output never sits in
    memory as one string. Raises EmbeddingError only when a file cannot be downloaded at all.
    """
    for file_id in (result.output_file_id, result.error_file_id):
        if not file_id:
            continue
        try:
            with client.files.with_streaming_response.content(file_id) as response:
                for number, raw in enumerate(response.iter_lines(), start=1):
                    if raw.strip():
                        yield parse_batch_line(raw, dimensions=dimensions, line_number=number)
        except openai.OpenAIError as exc:
            raise _api_failure(f"downloading batch file {file_id}", exc) from exc


def _chunks(texts: list[str], max_inputs: int, max_chars: int) -> Iterator[tuple[int, list[str]]]:
    start = 0
    while start < len(texts):
        end, chars = start, 0
        while end < len(texts) and end - start < max_inputs and (end == start or chars + len(texts[end]) <= max_chars):
            chars += len(texts[end])
            end += 1
        yield start, texts[start:end]
        start = end


def embed_texts(client: openai.OpenAI, texts: list[str], *, model: str, dimensions: int,
                chunk_size: int = SYNC_CHUNK_INPUTS, on_usage: Callable[[int], None] | None = None,
                ) -> list[np.ndarray]:
    """Vectors for `texts` (same order) from the synchronous endpoint, in chunks; for small runs and queries.
    `on_usage(prompt tokens)` hears each answer's `usage` (the run ledger counts it).

    A wrong-length vector here means the model/dimensions setting is wrong for every text, so it raises
    EmbeddingError rather than returning a partial answer.
    """
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise EmbeddingError(f"text {index} is empty: the embeddings API refuses empty input")
    vectors: list[np.ndarray] = []
    extra: dict[str, Any] = {"dimensions": dimensions} if _supports_dimensions(model) else {}
    for start, chunk in _chunks(texts, chunk_size, SYNC_CHUNK_CHARS):
        try:
            response = client.embeddings.create(input=chunk, model=model, encoding_format="base64", **extra)
        except openai.OpenAIError as exc:
            raise _api_failure(f"embedding texts {start}..{start + len(chunk) - 1}", exc) from exc
        if on_usage is not None:
            on_usage(_prompt_tokens(getattr(response, "usage", None)))
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(chunk):
            raise EmbeddingError(
                f"embeddings response for texts {start}.. has {len(data)} vectors for {len(chunk)} inputs"
            )
        for item in data:
            vector = _decode_vector(item.embedding)
            problem = _check_vector(vector, dimensions)
            if problem:
                raise EmbeddingError(f"text {start + item.index}: {problem} from model {model!r}")
            vectors.append(vector)
    return vectors


class EmbeddingMatrix:
    """An N×dimensions float32 ``.npy`` file (format 1.0, C order), written row by row with positioned writes.

    Rows are activities in file order (4·dimensions bytes each). Missing rows are flagged as NaN rows: once
    the matrix is closed, every row never written is NaN, and :meth:`write` only accepts finite vectors, so a
    row is missing exactly when its first value is NaN (:func:`missing_rows`; :attr:`missing` says the same
    without reading the file back). One file, no side mask to keep in sync. A new file is sized at once
    (sparse) and only the rows still missing at :meth:`close` are written as NaN: an unchanged re-run, whose
    rows are all reused, writes each row once instead of NaN first and the vector over it.

    The file is written with ``os.pwrite``, not through a memory map: dirty pages of a map count towards the
    process's resident memory until they are written back, so a 50,000-row matrix (300 MB) would have
    grown it by that much. Memory here is the NaN fill chunk plus one bool per row.
    """

    def __init__(self, path: Path, rows: int, dimensions: int, *, fill_chunk_rows: int = 1024) -> None:
        if rows < 0 or dimensions < 1:
            raise ValueError(f"bad matrix shape {rows}×{dimensions}")
        self.path = Path(path)
        self.rows, self.dimensions = rows, dimensions
        self._row_bytes = 4 * dimensions
        self._present = np.zeros(rows, dtype=bool)
        self._file: BinaryIO | None = open(self.path, "wb+")  # noqa: SIM115 - closed in close()
        try:
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dimensions)}
            write_array_header_1_0(self._file, header)
            self._offset = self._file.tell()
            self._file.flush()
            os.ftruncate(self._file.fileno(), self._offset + rows * self._row_bytes)
        except BaseException:
            self.close()
            raise
        self._fill_chunk_rows = max(1, fill_chunk_rows)
        self._unfilled = True  # rows never written are zeros until close() writes them as NaN
        self.written = 0

    @classmethod
    def reopen(cls, path: Path) -> EmbeddingMatrix:
        """Open a matrix written earlier (a run's prefilled vectors) to fill in more rows; NaN rows are missing."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self._file = open(self.path, "rb+")  # noqa: SIM115 - closed in close()
        try:
            shape, fortran_order, dtype = _read_array_header(self._file, read_magic(self._file))
            if len(shape) != 2 or fortran_order or dtype != np.dtype("<f4"):
                raise ValueError(f"{self.path}: not a C-order float32 matrix ({shape}, {dtype})")
            self.rows, self.dimensions = int(shape[0]), int(shape[1])
            self._row_bytes = 4 * self.dimensions
            self._offset = self._file.tell()
            # A row is present when its first value is a number: one float read per row, not the matrix.
            fd = self._file.fileno()
            firsts = [os.pread(fd, 4, self._offset + row * self._row_bytes) for row in range(self.rows)]
            self._present = ~np.isnan(np.frombuffer(b"".join(firsts), dtype="<f4")) if firsts else np.zeros(0, bool)
        except BaseException:
            self.close()
            raise
        self._fill_chunk_rows = 1024
        self._unfilled = False  # a closed matrix: its missing rows are NaN already
        self.written = int(self._present.sum())
        return self

    def write(self, row: int, vector: np.ndarray) -> None:
        """Store one activity's vector; raises ValueError for a wrong shape or non-finite values."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        vector = np.asarray(vector, dtype=np.float32)
        problem = _check_vector(vector, self.dimensions)
        if problem:
            raise ValueError(f"row {row}: {problem}")
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} outside 0..{self.rows - 1}")
        os.pwrite(self._file.fileno(), vector.astype("<f4").tobytes(), self._offset + row * self._row_bytes)
        self._present[row] = True
        self.written += 1

    def write_many(self, items: list[tuple[int, np.ndarray | list[float]]]) -> dict[int, str]:
        """`write` for several (row, vector) pairs, validated together and written in runs of consecutive rows
        (per-row checks and writes were most of an unchanged re-run's embeddings stage). Returns {index in
        `items`: why that vector was refused}; the others are written."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        refused: dict[int, str] = {}
        kept: list[tuple[int, int, np.ndarray]] = []  # (row, index in items, vector)
        for index, (row, value) in enumerate(items):
            vector = np.asarray(value, dtype="<f4")
            if vector.shape != (self.dimensions,):
                refused[index] = f"row {row}: wrong dimension {vector.size} (expected {self.dimensions})"
            elif not 0 <= row < self.rows:
                refused[index] = f"row {row} outside 0..{self.rows - 1}"
            else:
                kept.append((row, index, vector))
        if kept:
            finite = np.isfinite(np.stack([vector for _, _, vector in kept])).all(axis=1)
            for (row, index, _), ok in zip(kept, finite):
                if not ok:
                    refused[index] = f"row {row}: vector has non-finite values"
            kept = sorted((item for item, ok in zip(kept, finite) if ok), key=lambda item: item[0])
        start = 0
        for end in range(1, len(kept) + 1):  # each run of consecutive rows in one positioned write
            if end < len(kept) and kept[end][0] == kept[end - 1][0] + 1:
                continue
            run = kept[start:end]
            os.pwrite(self._file.fileno(), b"".join(vector.tobytes() for _, _, vector in run),
                      self._offset + run[0][0] * self._row_bytes)
            self._present[[row for row, _, _ in run]] = True
            self.written += len(run)
            start = end
        return refused

    @property
    def missing(self) -> np.ndarray:
        """Boolean mask of rows never written (the NaN rows of the file)."""
        return ~self._present

    def write_rows(self, results: Iterable[EmbeddingRow], row_of: Mapping[str, int]) -> dict[str, str]:
        """Write batch rows by custom_id → row; returns {custom_id or "line…": error} for every row not written."""
        failures: dict[str, str] = {}
        for number, item in enumerate(results):
            key = item.custom_id or f"unidentified line {number}"
            if item.vector is None:
                failures[key] = item.error or "no vector"
                continue
            row = row_of.get(item.custom_id) if item.custom_id is not None else None
            if row is None:
                failures[key] = "custom_id not in this run"
                continue
            try:
                self.write(row, item.vector)
            except (ValueError, IndexError) as exc:
                failures[key] = str(exc)
        return failures

    def close(self) -> None:
        """Write the rows still missing as NaN (see the class), then close the file."""
        if self._file is not None:
            try:
                if self._unfilled:
                    self._fill_missing()
            finally:
                self._file.close()
                self._file = None

    def _fill_missing(self) -> None:
        """NaN into each run of rows never written, a chunk at a time: never a whole N×D array in memory."""
        assert self._file is not None
        missing = np.flatnonzero(~self._present)
        if missing.size == 0:
            return
        nan_rows = np.full((min(missing.size, self._fill_chunk_rows), self.dimensions), np.nan, dtype="<f4").tobytes()
        breaks = np.flatnonzero(np.diff(missing) != 1) + 1  # runs of consecutive missing rows
        fd = self._file.fileno()
        for run in np.split(missing, breaks):
            for start in range(int(run[0]), int(run[-1]) + 1, self._fill_chunk_rows):
                count = min(self._fill_chunk_rows, int(run[-1]) + 1 - start)
                os.pwrite(fd, nan_rows[: count * self._row_bytes], self._offset + start * self._row_bytes)
        self._unfilled = False

    def __enter__(self) -> EmbeddingMatrix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddingStream:
    """Rows of an embeddings ``.npy`` read forward from a stream (a stored object's body), one chunk at a time.

    The final writer asks for rows in file order (the merge's order is `standardized.jsonl`'s, which is the
    matrix's), so it needs no local copy: the download overlaps the writing instead of coming before it, and
    resident memory stays one chunk. A row before the current chunk is an error (the caller is out of order).

    ``with EmbeddingStream(handle) as rows: rows.row(i)`` → a float32 vector (a copy, safe to keep).
    """

    def __init__(self, handle: IO[bytes], *, chunk_rows: int = 512, name: str = "embeddings") -> None:
        self._handle: IO[bytes] | None = handle
        self.name = name
        try:
            shape, fortran_order, dtype = _read_array_header(handle, read_magic(handle))
        except BaseException:
            self.close()
            raise
        if len(shape) != 2 or fortran_order or dtype != np.dtype("<f4"):
            self.close()
            raise ValueError(f"{name}: not a C-order float32 matrix ({shape}, {dtype}, fortran={fortran_order})")
        self.rows, self.dimensions = int(shape[0]), int(shape[1])
        self._row_bytes = 4 * self.dimensions
        self._chunk_rows = max(1, chunk_rows)
        self._start = 0  # first row of the current chunk; rows before it are gone
        self._chunk = np.empty((0, self.dimensions), dtype="<f4")

    def row(self, index: int) -> np.ndarray:
        if self._handle is None:
            raise ValueError(f"{self.name} is closed")
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} outside 0..{self.rows - 1}")
        if index < self._start:
            raise ValueError(f"{self.name}: row {index} asked after row {self._start} (rows are read forward only)")
        while index >= self._start + len(self._chunk):
            self._start += len(self._chunk)
            count = min(self._chunk_rows, self.rows - self._start)
            data = _read_exactly(self._handle, count * self._row_bytes)
            if len(data) != count * self._row_bytes:
                raise ValueError(f"{self.name} is truncated at row {self._start + len(data) // self._row_bytes}")
            self._chunk = np.frombuffer(data, dtype="<f4").reshape(count, self.dimensions)
        return self._chunk[index - self._start].copy()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> EmbeddingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_exactly(handle: IO[bytes], size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the stream (a socket may hand them over in pieces)."""
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        piece = handle.read(wanted)
        if not piece:
            break
        parts.append(piece)
        wanted -= len(piece)
    return b"".join(parts)


def _read_array_header(handle: IO[bytes], version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        return read_array_header_1_0(handle)
    if version == (2, 0):
        return read_array_header_2_0(handle)
    raise ValueError(f"unsupported .npy format version {version}")


def missing_rows(matrix: np.ndarray) -> np.ndarray:
    """Boolean mask of rows with no vector (NaN rows, see EmbeddingMatrix)."""
    if matrix.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return np.isnan(matrix[:, 0])


def make_openai_client(api_key: str, base_url: str | None = None, max_retries: int = 5,
                       timeout_s: float = 60, download_timeout_s: float = 1800) -> openai.OpenAI:
    """An SDK client whose own retries (with Retry-After) handle 429s and 5xx; base_url for compatible servers.

    Each HTTP request ends within `timeout_s` in total, body included (a file download within
    `download_timeout_s`), however slowly the answer trickles in (`harvest.net.sdk_transport`).
    """
    if not api_key or not api_key.strip():
        raise ConfigError("OPENAI_API_KEY is empty: set it, or leave it unset to skip embeddings")
    if max_retries < 0 or not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ConfigError(f"bad OpenAI client limits: max_retries={max_retries}, timeout_s={timeout_s}")
    if base_url is not None and not re.match(r"^https?://", base_url):
        raise ConfigError(f"OPENAI_BASE_URL {base_url!r} must be an http(s) URL")
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s,
                         http_client=deadline_http_client(request_s=timeout_s, download_s=download_timeout_s))
