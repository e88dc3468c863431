"""The `sweep-expired` flow: retention and reconciliation in one pass (see harvest/retention/policy.py).

Deployed as `sweep-expired/nightly` on a cron schedule; `harvest sweep [--dry-run]` runs it in-process.
Safe to run twice at once: every run row it changes is locked with SKIP LOCKED.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.reconcile import crash_flow_run, flow_run_state
from flows.resources import resources
from harvest.retention.policy import SweepReport, policy_from, sweep

SHOWN = 50


def report_markdown(report: SweepReport) -> str:
    title = "Sweep (dry run: nothing deleted)" if report.dry_run else "Sweep"
    lines = [f"# {title}", "", "| what | count |", "| --- | ---: |"]
    sections: dict[str, list[Any]] = {
        "runs reconciled": report.reconciled, "runs settled (no completion hook)": report.settled,
        "runs expired": report.expired,
        "failed cleanups finished": report.cleaned,
        "superseded digests": report.digests, "orphan objects": report.orphans, "unreferenced images": report.images,
        "files flagged missing": report.missing, "errors": report.errors,
    }
    lines += [f"| {name} | {len(items)} |" for name, items in sections.items()]
    lines += ["", f"Objects deleted: {report.deleted_objects}",
              "", f"Page memory rows pruned (no crawl saw their URL lately): {report.page_memory_pruned}"]
    for name, items in sections.items():
        if items:
            lines += ["", f"## {name}", ""] + [f"- `{item}`" for item in items[:SHOWN]]
            if len(items) > SHOWN:
                lines.append(f"- … {len(items) - SHOWN} more")
    return "\n".join(lines) + "\n"


@flow(name="sweep-expired", description="Delete expired runs' files and orphans; reconcile runs whose process died.")
def sweep_expired(dry_run: bool = False) -> dict[str, Any]:
    """One retention pass. With `dry_run`, only report what would be deleted or changed."""
    res = resources()
    report = sweep(res.engine, res.store, policy_from(res.settings), flow_run_state=flow_run_state, dry_run=dry_run)
    logger = get_run_logger()
    logger.info(
        "sweep%s: %d reconciled, %d expired, %d cleanups finished, %d digests, %d orphans, %d images, %d missing; "
        "%d objects deleted; %d page memory rows pruned", " (dry run)" if dry_run else "", len(report.reconciled),
        len(report.expired), len(report.cleaned), len(report.digests), len(report.orphans), len(report.images),
        len(report.missing), report.deleted_objects, report.page_memory_pruned,
    )
    if not dry_run:  # a row declared dead on its own evidence (process gone, no heartbeat): Prefect learns it too
        for item in report.reconciled:
            try:
                crash_flow_run(item["run_id"], item["reason"])  # no-op where Prefect already says it is over
            except Exception as exc:  # noqa: BLE001 - the row is reconciled; the flow run can be retried by hand
                report.errors.append(f"run {item['run_id']}: flow run not marked crashed: {exc}")
    for error in report.errors:
        logger.warning("sweep: %s", error)
    create_markdown_artifact(report_markdown(report), key="sweep-expired-report", description="What the sweep did")
    return report.as_dict()
