"""Finishing steps of the enrichment fan-out: join a map's chunk parts, drop the embeddings prefill; and the
embeddings batch an earlier attempt submitted, so a resumed run collects it instead of submitting another.

Both run after the useful work is stored and recorded, and both may run again: Prefect retries a failed
task, and `harvest runs resume` reruns a step whose result was not saved. Design choice: each is idempotent
by reading the run's rows first. The combined map is current when its row exists, the step's total was
folded, and no part was recorded after it (a part recorded later comes from rerun chunks, e.g. after the
chunk size changed: then it is combined again). Deleting what was consumed (parts, prefill) is tidying, not
work: a storage error there is a warning, and the rows stay live so the objects are deleted with the run's
files (and are still accounted for by the sweep until then), never a failed step that would make the run
go on without its images, geocodes or embeddings.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from harvest.db import runs as run_rows
from harvest.enrich.embeddings.stage import SubmittedBatch
from harvest.errors import StorageError
from harvest.models import FileRef
from harvest.pipeline import StageStats, merge_stats
from harvest.storage import ObjectStore, concat_files
from harvest.storage.keys import part_kind, run_key


def _live_files(engine: Engine, run_id: str) -> dict[str, dict[str, Any]]:
    return {row["kind"]: row for row in run_rows.list_files(engine, run_id, include_deleted=False)}


def _recorded_after(row: dict[str, Any], than: dict[str, Any]) -> bool:
    return bool(row["created_at"] > than["created_at"])


def _drop(engine: Engine, store: ObjectStore, run_id: str, rows: list[dict[str, Any]], what: str) -> list[str]:
    """Delete consumed objects, then forget their rows; on a storage error keep the rows, return a warning."""
    if not rows:
        return []
    try:
        for row in rows:
            store.delete(store.key_for(row["uri"]))
    except StorageError as exc:
        return [f"{what} left in storage for the run's cleanup: {exc}"]
    run_rows.forget_files(engine, run_id, [row["kind"] for row in rows])
    return []


def combine_parts(
    engine: Engine, store: ObjectStore, run_id: str, kind: str, step: str, chunks: int
) -> tuple[FileRef, list[str]]:
    """Concatenate a map's chunk parts in order (so it lines up with standardized.jsonl), record the whole map
    and the step's totals, then drop the parts. Returns the map and warnings (parts that could not be dropped)."""
    files = _live_files(engine, run_id)
    part_kinds = [part_kind(kind, index) for index in range(chunks)]
    parts = [files[k] for k in part_kinds if k in files]
    combined = files.get(kind)
    steps = (run_rows.get_run(engine, run_id) or {}).get("steps") or {}
    current = combined is not None and step in steps and not any(_recorded_after(p, combined) for p in parts)
    if not current:
        missing = [k for k in part_kinds if k not in files]
        if missing:
            raise StorageError(f"run {run_id}: {kind} parts {missing} were never recorded")
        unrecorded = [f"{step}.{i}" for i in range(chunks) if f"{step}.{i}" not in steps]
        if unrecorded:
            raise StorageError(f"run {run_id}: {kind} chunk steps {unrecorded} were never recorded")
        ref = concat_files(store, run_key(run_id, kind, "jsonl"), kind, [run_rows.file_ref(p) for p in parts])
        run_rows.record_file(engine, run_id, ref)
        stats = merge_stats([StageStats.model_validate(steps[f"{step}.{i}"]) for i in range(chunks)])
        run_rows.fold_steps(engine, run_id, f"{step}.", step, stats.model_dump())
    else:
        assert combined is not None
        ref = run_rows.file_ref(combined)
    return ref, _drop(engine, store, run_id, parts, f"{kind} parts")


def collected_embeddings(engine: Engine, run_id: str) -> list[FileRef] | None:
    """The embedding files when the batch was already collected (and not resubmitted since), else None."""
    files = _live_files(engine, run_id)
    done = [files.get("embeddings"), files.get("embeddings_index")]
    if done[0] is None or done[1] is None:
        return None
    prefill = files.get("embeddings_prefill")
    if prefill is not None and _recorded_after(prefill, done[0]):
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
    prefill = _live_files(engine, run_id).get("embeddings_prefill")
    collected = collected_embeddings(engine, run_id) if prefill is None else None
    if prefill is None and collected is None:
        return None
    return SubmittedBatch(
        batch_id=str(details["batch_id"]), input_file_id=str(details["input_file_id"]),
        records=int(submit.get("items_in") or 0), model=model, prefill_uri=prefill["uri"] if prefill else None,
        files=collected or [], reserved_usd=float(details.get("reserved_usd") or 0.0),
    )


def drop_prefill(engine: Engine, store: ObjectStore, run_id: str) -> list[str]:
    """The prefill is inside embeddings.npy once collected: keep one copy of the vectors, not two."""
    prefill = _live_files(engine, run_id).get("embeddings_prefill")
    return _drop(engine, store, run_id, [prefill] if prefill else [], "embeddings prefill")
