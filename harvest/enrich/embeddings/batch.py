"""OpenAI's Batch API for a run's embeddings (half the price, no rate-limit juggling): the input file, the
submission, the status, and the output read back line by line.

Everything goes through the official ``openai`` SDK (its own retries handle 429/5xx), so any
OpenAI-compatible endpoint, including ``testkit.openai_server``, works by base URL. No Prefect here: the
flow decides when to submit and how long to keep polling; :func:`check_batch` only says "not yet"
(:class:`~harvest.errors.BatchNotReadyError`) or "it ended badly" (:class:`~harvest.errors.EmbeddingError`).

One activity whose vector is missing or malformed is a row with an error, never an exception: a batch of
50,000 lines must not be thrown away for one bad line. The synchronous endpoint is in sync.py, the matrix the
vectors are kept in in matrix.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from harvest.enrich.embeddings.api import (
    EMBEDDINGS_ENDPOINT,
    api_failure,
    check_vector,
    decode_vector,
    embedding_text,
    prompt_tokens,
    supports_dimensions,
)
from harvest.errors import BatchNotReadyError, EmbeddingError
from harvest.models import Activity

if TYPE_CHECKING:  # openai costs ~0.5 s to import: only where a call is made (issue 32)
    import openai

logger = logging.getLogger(__name__)

# OpenAI's Batch API limits per batch: 50,000 requests (for /v1/embeddings also 50,000 inputs, one per line here)
# and an input file of 200 MB, taken as 200,000,000 bytes (the stricter reading). The stage splits its lines into
# parts under both (HARVEST_BATCH_MAX_REQUESTS, HARVEST_BATCH_MAX_BYTES).
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200_000_000
NOT_READY_STATUSES = {"validating", "in_progress", "finalizing", "cancelling"}
FAILED_STATUSES = {"failed", "expired", "cancelled"}
PARTIAL_STATUSES = {"expired", "cancelled"}  # may end with an output file of the lines done before the end


def _request_line(activity: Activity, model: str, dimensions: int | None) -> bytes | None:
    text = embedding_text(activity)
    if not text:
        return None
    body: dict[str, Any] = {"model": model, "input": text}
    if dimensions is not None and supports_dimensions(model):
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


def write_batch_parts(
    activities: Iterable[Activity], model: str, directory: Path, *, dimensions: int | None,
    max_requests: int = MAX_BATCH_REQUESTS, max_bytes: int = MAX_BATCH_BYTES,
) -> list[tuple[Path, int]]:
    """Write the request lines into as many input files as OpenAI's per-batch limits need (at most `max_requests`
    lines and `max_bytes` bytes each), in order; returns (path, lines) per part.

    A line is never split: one longer than `max_bytes` on its own would be refused, so it is skipped with a
    warning (an embedding text is at most MAX_TEXT_CHARS, far below the real limit)."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("max_requests and max_bytes must be positive")
    parts: list[tuple[Path, int]] = []
    out: BinaryIO | None = None
    lines = size = 0
    try:
        for activity_id, line in _unique_request_lines(activities, model, dimensions):
            if len(line) > max_bytes:
                logger.warning("embeddings: the request line of %s is over the batch limit of %d bytes; skipped",
                               activity_id, max_bytes)
                continue
            if out is None or lines >= max_requests or size + len(line) > max_bytes:
                if out is not None:
                    out.close()
                    parts[-1] = (parts[-1][0], lines)
                path = directory / f"embeddings_batch_input.part-{len(parts):04d}.jsonl"
                out, lines, size = path.open("wb"), 0, 0
                parts.append((path, 0))
            out.write(line)
            lines += 1
            size += len(line)
    finally:
        if out is not None:
            out.close()
            parts[-1] = (parts[-1][0], lines)
    return parts


def input_digest(path: Path) -> str:
    """sha256 of a batch input file: what says a batch found at OpenAI was made for exactly these lines (ids,
    texts, model, dimensions)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def submit_batch(client: openai.OpenAI, input_path: Path, *, metadata: dict[str, str],
                 completion_window: Literal["24h"] = "24h", max_bytes: int = MAX_BATCH_BYTES) -> BatchHandle:
    """Upload the input JSONL (purpose "batch") and create an embeddings batch for it."""
    import openai

    input_path = Path(input_path)
    try:
        size = input_path.stat().st_size
    except OSError as exc:
        raise EmbeddingError(f"batch input {input_path} cannot be read: {exc}") from exc
    if size == 0:
        raise EmbeddingError(f"batch input {input_path} is empty: nothing to embed")
    if size > max_bytes:
        raise EmbeddingError(f"batch input {input_path} is {size} bytes, over the batch limit of {max_bytes}")
    try:
        with input_path.open("rb") as fh:
            uploaded = client.files.create(file=(input_path.name, fh), purpose="batch")
    except openai.OpenAIError as exc:
        raise api_failure(f"uploading batch input {input_path.name}", exc) from exc
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
        raise api_failure(f"creating the batch for file {uploaded.id}", exc) from exc
    logger.info("embeddings: batch %s submitted for file %s (%d bytes)", batch.id, uploaded.id, size)
    return BatchHandle(batch_id=batch.id, input_file_id=uploaded.id)


def run_batches(client: openai.OpenAI, run_id: str, *, since: float) -> list[Any]:
    """Every batch (the SDK's objects) of run `run_id` (its `harvest_run_id` metadata) created at or after `since`
    (epoch seconds), newest first, whatever its status; [] when the lookup fails (logged: the caller submits, a
    second batch costs money, a run without embeddings loses data)."""
    import openai

    found: list[Any] = []
    try:
        for batch in client.batches.list(limit=100):  # the SDK follows the `after` cursor page by page
            if batch.created_at < since:
                break
            if (batch.metadata or {}).get("harvest_run_id") == run_id:
                found.append(batch)
    except openai.OpenAIError as exc:
        logger.warning("embeddings: could not look for batches this run already submitted (%s); submitting",
                       api_failure("listing batches", exc))
        return []
    return found


def input_lines(client: openai.OpenAI, file_id: str) -> dict[str, bytes]:
    """custom_id → request line (with its newline) of an uploaded batch input file: what an earlier attempt
    asked for, compared line by line with what this attempt would ask for."""
    import openai

    try:
        data = client.files.content(file_id).content
    except openai.OpenAIError as exc:
        raise api_failure(f"downloading batch input {file_id}", exc) from exc
    found: dict[str, bytes] = {}
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        custom_id = record.get("custom_id") if isinstance(record, dict) else None
        if isinstance(custom_id, str):
            found[custom_id] = line + b"\n"
    return found


def request_line(activity: Activity, model: str, dimensions: int | None) -> bytes | None:
    """The request line this activity is sent as (None: nothing to embed)."""
    return _request_line(activity, model, dimensions)


def check_batch(client: openai.OpenAI, batch_id: str) -> BatchResult:
    """The finished batch, or BatchNotReadyError while it runs, or EmbeddingError if it failed, or expired or was
    cancelled before finishing any line. An expired/cancelled batch with an output file is returned (status
    says so): its finished vectors are kept."""
    import openai

    try:
        batch = client.batches.retrieve(batch_id)
    except openai.OpenAIError as exc:
        raise api_failure(f"retrieving batch {batch_id}", exc) from exc
    counts = batch.request_counts
    request_counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed} if counts else {}
    progress = f"{request_counts.get('completed', 0)}/{request_counts.get('total', 0)} done" if counts else "no counts"
    if batch.status in NOT_READY_STATUSES:
        raise BatchNotReadyError(f"batch {batch_id} is {batch.status} ({progress})",
                                 done=request_counts.get("completed"), total=request_counts.get("total"))
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
        vector = decode_vector(data[0].get("embedding"))
    except (ValueError, TypeError) as exc:
        return EmbeddingRow(custom_id, None, f"unreadable embedding: {exc}")
    problem = check_vector(vector, dimensions)
    tokens = prompt_tokens(body.get("usage"))
    return EmbeddingRow(custom_id, None, problem, tokens) if problem else EmbeddingRow(custom_id, vector, None, tokens)


def iter_batch_results(client: openai.OpenAI, result: BatchResult, *, dimensions: int) -> Iterator[EmbeddingRow]:
    """Stream the output file, then the error file, one row per line; a bad line is a row with an error.

    Files are streamed line by line (``with_streaming_response``), so a 50,000-line output never sits in
    memory as one string. Raises EmbeddingError only when a file cannot be downloaded at all.
    """
    import openai

    for file_id in (result.output_file_id, result.error_file_id):
        if not file_id:
            continue
        try:
            with client.files.with_streaming_response.content(file_id) as response:
                for number, raw in enumerate(response.iter_lines(), start=1):
                    if raw.strip():
                        yield parse_batch_line(raw, dimensions=dimensions, line_number=number)
        except openai.OpenAIError as exc:
            raise api_failure(f"downloading batch file {file_id}", exc) from exc


