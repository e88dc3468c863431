"""The join of a chunked enrichment: its map's chunk parts concatenated in order, and the parts dropped; with the
helpers a batch enrichment's resume shares (the run's live files, dropping what was consumed).

It runs after the useful work is stored and recorded, and may run again: Prefect retries a failed task, and
`harvest runs resume` reruns a step whose result was not saved. Design choice: it is idempotent by reading the
run's rows first. The combined map is current when its row exists, the step's total was
folded, and no part was recorded after it (a part recorded later comes from rerun chunks, e.g. after the
chunk size changed: then it is combined again). Deleting what was consumed (parts, prefill) is tidying, not
work: a storage error there is a warning, and the rows stay live so the objects are deleted with the run's
files (and are still accounted for by the sweep until then), never a failed step that would make the run
go on without that enrichment.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from harvest.db import runs as run_rows
from harvest.errors import StorageError
from harvest.models import FileRef
from harvest.pipeline import StageStats, merge_stats
from harvest.storage import ObjectStore, concat_files
from harvest.storage.keys import part_kind, run_key


def live_files(engine: Engine, run_id: str) -> dict[str, dict[str, Any]]:
    return {row["kind"]: row for row in run_rows.list_files(engine, run_id, include_deleted=False)}


def recorded_after(row: dict[str, Any], than: dict[str, Any]) -> bool:
    return bool(row["created_at"] > than["created_at"])


def drop_files(engine: Engine, store: ObjectStore, run_id: str, rows: list[dict[str, Any]], what: str) -> list[str]:
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
    files = live_files(engine, run_id)
    part_kinds = [part_kind(kind, index) for index in range(chunks)]
    parts = [files[k] for k in part_kinds if k in files]
    combined = files.get(kind)
    steps = (run_rows.get_run(engine, run_id) or {}).get("steps") or {}
    current = combined is not None and step in steps and not any(recorded_after(p, combined) for p in parts)
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
    return ref, drop_files(engine, store, run_id, parts, f"{kind} parts")
