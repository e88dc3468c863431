"""Stage 3c/3d: submit an OpenAI embeddings batch for every activity, then collect its vectors.

The batch id is the only thing that travels from submit to collect, and it is persisted, so a resumed
run polls the batch it already paid for instead of submitting a second one. Vectors are stored as a
float32 `.npy` matrix (rows in `standardized.jsonl` order, 4 bytes × dimensions per activity) plus an
`embeddings_index.jsonl` that says, per row, whether it holds a vector and, if not, why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harvest.embeddings import (
    EmbeddingMatrix,
    check_batch,
    iter_batch_results,
    submit_batch,
    write_batch_input,
)

from harvest.models import Activity, FileRef
from harvest.stages.common import StageResult, run_key, timed
from harvest.storage import ObjectStore, iter_jsonl, store_local_file, write_jsonl


class SubmittedBatch(BaseModel):
    """What `collect_embeddings` needs to find the batch again."""

    batch_id: str
    input_file_id: str
    records: int
    model: str


def submit_embeddings(
    store: ObjectStore, run_id: str, standardized: FileRef, client: Any, model: str
) -> tuple[StageResult, SubmittedBatch | None]:
    """Write the batch input JSONL (kept in the run's files for review), upload it and create the batch."""
    result = StageResult()
    with timed(result.stats), tempfile.TemporaryDirectory(prefix="harvest-") as tmp:
        path = Path(tmp) / "embeddings_batch_input.jsonl"
        with open(path, "wb") as out:
            activities = (Activity.model_validate(r) for r in iter_jsonl(store, standardized.uri))
            count = write_batch_input(activities, model, out)
        result.stats.items_in = count
        if count == 0:
            result.warn("no activities to embed")
            return result, None
        ref = store_local_file(
            store, run_key(run_id, "embeddings_batch_input", "jsonl"), "embeddings_batch_input", path,
            records=count, content_type="application/x-ndjson",
        )
        result.files.append(ref)
        handle = submit_batch(client, path, metadata={"harvest_run_id": run_id})
    result.stats.items_out = count
    result.stats.details["batch_id"] = handle.batch_id
    return result, SubmittedBatch(batch_id=handle.batch_id, input_file_id=handle.input_file_id, records=count, model=model)


def collect_embeddings(
    store: ObjectStore, run_id: str, standardized: FileRef, client: Any, batch: SubmittedBatch, *, dimensions: int
) -> StageResult:
    """Raises BatchNotReadyError while the batch runs (the caller retries) and EmbeddingError when it ended badly."""
    finished = check_batch(client, batch.batch_id)
    result = StageResult()
    with timed(result.stats), tempfile.TemporaryDirectory(prefix="harvest-") as tmp:
        rows: dict[str, int] = {}
        for row, record in enumerate(iter_jsonl(store, standardized.uri)):
            rows[record["id"]] = row
        count = len(rows)
        matrix_path = Path(tmp) / "embeddings.npy"
        with EmbeddingMatrix(matrix_path, count, dimensions) as matrix:
            failures = matrix.write_rows(iter_batch_results(client, finished, dimensions=dimensions), rows)
            missing = matrix.missing  # NaN rows: never written
        for key, error in failures.items():
            if key not in rows:
                result.warn(f"batch output line {key!r} not used: {error}")
        status = {rows[key]: error for key, error in failures.items() if key in rows}

        def index() -> Any:
            for activity_id, row in rows.items():
                error = status.get(row) or ("missing from batch output" if missing[row] else None)
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
    return result


