"""A resumed run's embeddings: the batch an earlier attempt submitted, so it is collected instead of submitted
(and paid for) again, the vectors an earlier attempt collected, and the prefill dropped once it is inside the
finished matrix. Each reads the run's rows first, so it is idempotent (harvest/enrich/join.py says why)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from harvest.db import runs as run_rows
from harvest.enrich.embeddings.stage import BatchPart, SubmittedBatch
from harvest.enrich.join import drop_files, live_files, recorded_after
from harvest.models import FileRef
from harvest.storage import ObjectStore


def collected_embeddings(engine: Engine, run_id: str) -> list[FileRef] | None:
    """The embedding files when the batch was already collected (and not resubmitted since), else None."""
    files = live_files(engine, run_id)
    done = [files.get("embeddings"), files.get("embeddings_index")]
    if done[0] is None or done[1] is None:
        return None
    prefill = files.get("embeddings_prefill")
    if prefill is not None and recorded_after(prefill, done[0]):
        return None
    return [run_rows.file_ref(done[0]), run_rows.file_ref(done[1])]


def submitted_batch(engine: Engine, run_id: str, model: str) -> SubmittedBatch | None:
    """The batch an earlier attempt of this run submitted and recorded, with its prefill still stored, or None.

    A worker killed after the submission was recorded but before Prefect stored the task's result left the
    batch running at OpenAI (paid for, its hold kept by reconciliation: harvest/cost/stages.py); submitting
    again would pay for every line twice. A batch already collected comes back complete (its files), and one
    for another model (the setting changed in between) is not reused."""
    steps = (run_rows.get_run(engine, run_id) or {}).get("steps") or {}
    submit = steps.get("embeddings_submit") or {}
    details = submit.get("details") or {}
    if not details.get("batch_id") or not details.get("input_file_id") or details.get("model") != model:
        return None
    prefill = live_files(engine, run_id).get("embeddings_prefill")
    collected = collected_embeddings(engine, run_id) if prefill is None else None
    if prefill is None and collected is None:
        return None
    return SubmittedBatch(
        batch_id=str(details["batch_id"]), input_file_id=str(details["input_file_id"]),
        records=int(submit.get("items_in") or 0), model=model, prefill_uri=prefill["uri"] if prefill else None,
        files=collected or [], reserved_usd=float(details.get("reserved_usd") or 0.0), parts=_parts(details),
        dimensions=int(details["dimensions"]) if details.get("dimensions") else None,
    )


def _parts(details: dict[str, Any]) -> list[BatchPart]:
    """Every batch of a recorded submission (one: only `batch_id`)."""
    if not details.get("batch_ids"):
        return []
    ids = str(details["batch_ids"]).split(",")
    files = str(details.get("input_file_ids") or "").split(",")
    lines = [int(n) for n in str(details.get("part_lines") or "").split(",") if n]
    return [BatchPart(batch_id=batch_id, input_file_id=files[i] if i < len(files) else "",
                      lines=lines[i] if i < len(lines) else 0) for i, batch_id in enumerate(ids)]


def drop_prefill(engine: Engine, store: ObjectStore, run_id: str) -> list[str]:
    """The prefill is inside embeddings.npy once collected: keep one copy of the vectors, not two."""
    prefill = live_files(engine, run_id).get("embeddings_prefill")
    return drop_files(engine, store, run_id, [prefill] if prefill else [], "embeddings prefill")
