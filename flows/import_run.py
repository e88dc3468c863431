"""The `import-run` flow: import a kept run's final JSONL after review, then apply the cleanup policy.

Same dedupe and summary as auto-import; importing twice is harmless (the second import only counts rows
as unchanged). Deployed as `import-run/manual`; `harvest runs import ID [--cleanup]` runs it in-process.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.resources import resources
from flows.tasks import record_stage
from harvest.db import runs as run_rows
from harvest.errors import ConfigError, StorageError
from harvest.models import ImportSummary
from harvest.retention import cleanup_run
from harvest.stages.load import import_final_records


@task(name="import-kept-run")
def import_kept_run(run_id: str) -> ImportSummary:
    res = resources()
    row = run_rows.get_run(res.engine, run_id)
    if row is None:
        raise ConfigError(f"no run {run_id}")
    if row["status"] == "running":
        raise ConfigError(f"run {run_id} is still running; import it once it has finished")
    final = run_rows.files_view(res.engine, run_id).get("final_jsonl")
    if final is None:
        raise StorageError(
            f"run {run_id} has no final JSONL to import (status {row['status']}, files {row['retention']})"
        )
    result, summary = import_final_records(res.store, run_id, final, res.engine)
    record_stage(res, run_id, "manual_import", result)
    run_rows.update_run(res.engine, run_id, import_summary=summary.model_dump())
    return summary


@flow(
    name="import-run", description="Import a kept run's final JSONL into activities, then optionally delete its files."
)
def import_run(run_id: str, cleanup: bool = False) -> ImportSummary:
    """Import run `run_id`; with `cleanup`, delete its files afterwards when nothing failed."""
    logger = get_run_logger()
    summary = import_kept_run(run_id)
    logger.info("run %s imported: %s", run_id, summary.model_dump(exclude={"errors"}))
    note = "files kept"
    if cleanup:
        if summary.failed:
            note = f"files kept: {summary.failed} records failed to import"
            logger.warning("run %s: %s", run_id, note)
        else:
            res = resources()
            deleted = cleanup_run(res.engine, res.store, run_id)
            note = f"files deleted ({deleted} objects)" if deleted is not None else "files were already gone"
    create_markdown_artifact(
        f"# Import of run `{run_id}`\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in summary.model_dump(exclude={"errors"}).items())
        + f"\n- cleanup: {note}\n",
        key="import-run-summary", description=f"Manual import of run {run_id}",
    )
    return summary
