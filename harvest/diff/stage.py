"""The diff step: what changed since the previous run of the same URL, from the two runs' digests."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from harvest.db.runs import comparable_file, previous_comparable_run
from harvest.diff.compare import digest_lines, write_diff
from harvest.models import FileRef
from harvest.pipeline import StageResult, timed
from harvest.storage import ObjectStore
from harvest.storage.keys import run_key


def diff_with_previous_run(store: ObjectStore, engine: Engine, run_id: str, url: str, final: FileRef) -> StageResult:
    """Writes `runs/<run_id>/diff.jsonl` from this run's digest (written with the final records) and the
    previous run's; details carry the counts and the previous run's id (empty when this is the URL's first
    run, in which case everything is `added`)."""
    result = StageResult()
    with timed(result.stats):
        mine = comparable_file(engine, run_id) or {"kind": final.kind, "uri": final.uri}
        previous_id = previous_comparable_run(engine, run_id, url)
        previous_file: dict[str, Any] | None = comparable_file(engine, previous_id) if previous_id else None
        old = digest_lines(store, previous_file) if previous_file else None
        ref, counts = write_diff(store, run_key(run_id, "diff", "jsonl"), old, digest_lines(store, mine))
    result.files.append(ref)
    result.stats.items_in = final.records
    result.stats.items_out = ref.records
    result.stats.details = {**counts.as_dict(), "previous_run_id": previous_id or ""}
    return result
