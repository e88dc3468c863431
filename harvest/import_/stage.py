"""The import step: the final JSONL into the `activities` table (after the run, or later from a kept run)."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from harvest.db import runs as run_rows
from harvest.enrich.embeddings.vectors import parse_final_line, parse_index_line
from harvest.errors import DatabaseError, ImportInterrupted, StorageError
from harvest.import_.activities import import_activities, import_indexed
from harvest.models import FileRef, ImportSummary
from harvest.pipeline import StageResult, timed
from harvest.retention.policy import import_lease
from harvest.storage import JsonlPicker, ObjectStore, iter_jsonl

logger = logging.getLogger("harvest.load")


def import_final_records(
    store: ObjectStore, run_id: str, final: FileRef, engine: Engine
) -> tuple[StageResult, ImportSummary]:
    """Vectors are parsed only for the rows that are written (see parse_final_line). With the run's policy index,
    the rows are judged from it and only the final lines of rows to be written are read (none on an unchanged
    re-run; see import_indexed); a run without one (from before it was written) is read whole.

    A database error part-way leaves the rows written before it: what was written is recorded on the run
    (`import_summary` with `interrupted`) before the error is raised, so the run never says nothing was imported.
    """
    result = StageResult()

    with timed(result.stats):
        try:
            index = _policy_index(store, engine, run_id, final)
            if index is None:
                summary = import_activities(engine, iter_jsonl(store, final.uri, parse=parse_final_line), run_id=run_id)
            else:
                with JsonlPicker(store, final.uri, parse=parse_final_line) as finals:
                    summary, unread = import_indexed(
                        engine, iter_jsonl(store, index.uri, parse=parse_index_line), finals.pick, run_id=run_id
                    )
                result.stats.details["skipped_by_index"] = unread
        except ImportInterrupted as exc:
            partial = exc.summary if isinstance(exc.summary, ImportSummary) else ImportSummary()
            partial.interrupted = str(exc)
            try:
                run_rows.update_run(engine, run_id, import_summary=partial.model_dump())
            except DatabaseError as again:  # the database is gone: the raised error says what happened
                logger.warning("run %s: could not record the partial import summary: %s", run_id, again)
            raise
    result.stats.items_in = final.records
    result.stats.items_out = summary.imported + summary.updated
    result.stats.skipped = summary.skipped + summary.failed
    for error in summary.errors:
        result.warn(f"import: {error}")
    return result, summary


def _policy_index(store: ObjectStore, engine: Engine, run_id: str, final: FileRef) -> FileRef | None:
    """The run's policy index (written with final.jsonl), or None when it cannot stand for the stored final JSONL:
    an older run's files without one, or a final JSONL edited after the run wrote it (kept runs are reviewed, and
    may be corrected, before their import). The final file is finished before its index, so a final object newer
    than the index, or of another size than the run recorded, was replaced since: it is read whole, every line
    judged (S3 keeps LastModified to the second: an edit of the same size within the second of the run's write
    goes unseen). A database error here is an interrupted import of 0 rows."""
    try:
        index = run_rows.files_view(engine, run_id).get("final_index")
    except DatabaseError as exc:
        raise ImportInterrupted(f"import into activities failed after 0 rows: {exc}", ImportSummary()) from exc
    if index is None or index.records != final.records:
        return None
    stored_final = store.head(store.key_for(final.uri))
    stored_index = store.head(store.key_for(index.uri))
    if stored_final is None or stored_index is None:
        return None  # reading the final JSONL says what is missing
    if stored_final.size != final.bytes or stored_final.last_modified > stored_index.last_modified:
        logger.info("run %s: %s changed since the run wrote it; importing it line by line", run_id, final.uri)
        return None
    return index


def import_kept_run(store: ObjectStore, run_id: str, engine: Engine) -> tuple[StageResult, ImportSummary]:
    """Import a finished run's final JSONL after review, its files held against the sweep meanwhile
    (harvest.retention.policy.import_lease); the summary is written onto the run."""
    with import_lease(engine, run_id) as row:
        final = run_rows.files_view(engine, run_id).get("final_jsonl")
        if final is None:
            raise StorageError(
                f"run {run_id} has no final JSONL to import (status {row['status']}, files {row['retention']})"
            )
        result, summary = import_final_records(store, run_id, final, engine)
        run_rows.update_run(engine, run_id, import_summary=summary.model_dump())
    return result, summary
