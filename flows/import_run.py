"""The `import-run` flow: import a kept run's final JSONL after review, then apply the cleanup policy.

Same dedupe and summary as auto-import; importing twice is harmless (the second import only counts rows
as unchanged). Deployed as `import-run/manual`; `harvest runs import ID [--cleanup]` runs it in-process.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.resources import resources
from flows.run_logs import harvest_logs_to_task
from flows.tasks import record_stage
from harvest.import_.stage import import_kept_run as import_kept_files
from harvest.models import ImportSummary
from harvest.retention.policy import cleanup_run


@task(name="manual_import")
@harvest_logs_to_task
def import_kept_run(run_id: str) -> ImportSummary:
    """Import under a lease the sweep respects (an expiry cannot delete the file being read)."""
    res = resources()
    result, summary = import_kept_files(res.store, run_id, res.engine)
    record_stage(res, run_id, "manual_import", result)
    return summary


@flow(
    name="import-run", description="Import a kept run's final JSONL into activities, then optionally delete its files."
)
def import_run(run_id: str, cleanup: bool = False) -> ImportSummary:
    """Import run `run_id`; with `cleanup`, delete its files afterwards when nothing failed."""
    logger = get_run_logger()
    summary = import_kept_run(run_id)
    logger.info("run %s imported: %s", run_id, summary.model_dump(exclude={"errors"}, exclude_none=True))
    note = "files kept"
    if cleanup:
        if summary.failed:
            note = f"files kept: {summary.failed} records failed to import"
            logger.warning("run %s: %s", run_id, note)
        else:
            res = resources()
            deleted = cleanup_run(res.engine, res.store, run_id)
            kept = "files kept (pinned, or already gone)"
            note = f"files deleted ({deleted} objects)" if deleted is not None else kept
    create_markdown_artifact(
        f"# Import of run `{run_id}`\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in summary.model_dump(exclude={"errors"}, exclude_none=True).items())
        + f"\n- cleanup: {note}\n",
        key="import-run-summary", description=f"Manual import of run {run_id}",
    )
    return summary
