"""Stage 6: import the final JSONL into the `activities` table."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from harvest.db.activities import import_activities, parse_final_line
from harvest.models import FileRef, ImportSummary
from harvest.stages.common import StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl


def import_final_records(
    store: ObjectStore, run_id: str, final: FileRef, engine: Engine
) -> tuple[StageResult, ImportSummary]:
    """Vectors are parsed only for the rows that are written (see parse_final_line)."""
    result = StageResult()

    with timed(result.stats):
        summary = import_activities(engine, iter_jsonl(store, final.uri, parse=parse_final_line), run_id=run_id)
    result.stats.items_in = final.records
    result.stats.items_out = summary.imported + summary.updated
    result.stats.skipped = summary.skipped + summary.failed
    for error in summary.errors:
        result.warn(f"import: {error}")
    return result, summary
