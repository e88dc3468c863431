"""Stage 5b: store this run's digest and what changed since the previous run of the same URL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from harvest.db.runs import comparable_file, previous_comparable_run
from harvest.diff import digest_lines, write_diff, write_digest
from harvest.models import FileRef
from harvest.stages.common import StageResult, run_key, timed
from harvest.storage import ObjectStore, iter_jsonl


def diff_with_previous_run(store: ObjectStore, engine: Engine, run_id: str, url: str, final: FileRef) -> StageResult:
    """Writes `digests/<run_id>.jsonl` and `runs/<run_id>/diff.jsonl`; details carry the counts and the
    previous run's id (empty when this is the URL's first run, in which case everything is `added`)."""
    result = StageResult()
    with timed(result.stats):
        digest = write_digest(store, run_id, iter_jsonl(store, final.uri))
        previous_id = previous_comparable_run(engine, run_id, url)
        previous_file: dict[str, Any] | None = comparable_file(engine, previous_id) if previous_id else None
        old = digest_lines(store, previous_file) if previous_file else None
        ref, counts = write_diff(store, run_key(run_id, "diff", "jsonl"), old, digest_lines(store, digest))
    result.files += [digest, ref]
    result.stats.items_in = digest.records
    result.stats.items_out = ref.records
    result.stats.details = {**counts.as_dict(), "previous_run_id": previous_id or ""}
    return result
