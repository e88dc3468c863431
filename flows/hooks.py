"""Flow state hooks: decide what happens to a run's files once the run is over.

- Completed with auto-import and an import without failures → delete the run's files (objects and
  Prefect result records under `runs/<id>/`; never the content-addressed images, and not the digest the
  next run diffs against), retention `cleaned`.
- Completed otherwise → keep everything for review, retention `kept` until `expires_at`
  (HARVEST_RETENTION_DAYS), then the sweep deletes it unless the run is pinned.
- Failed / crashed / cancelled → record the status and error, keep every file for debugging until
  `expires_at` (HARVEST_FAILED_RETENTION_DAYS).

Hooks run outside the run context, where `get_run_logger()` raises; their lines still belong to the run: they log
through Prefect's `flow_run_logger` for the flow run they are given, and harvest's own lines meanwhile (the
cleanup's) are sent to that flow run too (flows/run_logs.py), so the UI shows them in the run's logs. Hooks must
never raise into Prefect: a failed cleanup is a warning that leaves the rows for a later sweep, never a failed run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from prefect.logging.loggers import flow_run_logger

from flows.resources import resources
from flows.run_logs import harvest_logs_to_run
from flows.sources import after_source_run
from harvest.db import runs as run_rows
from harvest.db.engine import utcnow
from harvest.models import RunConfig
from harvest.retention.policy import cleanup_run, policy_from

Hook = TypeVar("Hook", bound=Callable[..., None])


def _attached(hook: Hook) -> Hook:
    """`hook` with harvest's log lines sent to the flow run it is called for, whatever process runs it (the flow's,
    the worker's after a crash, the settle-run flow's)."""

    @wraps(hook)
    def run(flow: Any, flow_run: Any, state: Any) -> None:
        with harvest_logs_to_run(getattr(flow_run, "id", None)):
            hook(flow, flow_run, state)

    return cast(Hook, run)


def _log(flow: Any, flow_run: Any) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose lines are attached to `flow_run` (its id, name, flow and deployment) in Prefect's API."""
    return flow_run_logger(flow_run=flow_run, flow=flow)


def _config(flow_run: Any) -> RunConfig:
    raw = (flow_run.parameters or {}).get("config") or {}
    return raw if isinstance(raw, RunConfig) else RunConfig.model_validate(raw)


@_attached
def on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    run_id, logger = str(flow_run.id), _log(flow, flow_run)
    try:
        res = resources()
        row = run_rows.get_run(res.engine, run_id)
        if row is None or row["status"] != "completed":
            return  # validation refused the run before it had a row, or the flow did not mark it done
        config = _config(flow_run)
        summary = row.get("import_summary") or {}
        imported_cleanly = config.auto_import and summary and not summary.get("failed")
        if not imported_cleanly or config.keep_files:
            expires = policy_from(res.settings).expires_at("completed", utcnow())
            run_rows.update_run(res.engine, run_id, retention="kept", expires_at=expires)
            return
        try:
            deleted = cleanup_run(res.engine, res.store, run_id)
            if deleted is None:  # pinned while it ran: pinned means keep, until unpinned and expired
                expires = policy_from(res.settings).expires_at("completed", utcnow())
                run_rows.update_run(res.engine, run_id, retention="kept", expires_at=expires)
                return
        except Exception as exc:  # noqa: BLE001 - cleanup must never flip a completed run
            logger.warning("run %s: cleanup failed, files left for a later sweep: %s", run_id, exc)
            run_rows.update_run(res.engine, run_id, retention="cleanup_failed")
            run_rows.add_warnings(res.engine, run_id, [f"cleanup: failed, left for a sweep: {exc}"])
            return
        logger.info("run %s: imported; deleted %s stored objects", run_id, deleted)
    except Exception:  # noqa: BLE001
        logger.exception("run %s: completion hook failed", run_id)


def _mark_ended(status: str, flow: Any, flow_run: Any, state: Any) -> None:
    run_id, logger = str(flow_run.id), _log(flow, flow_run)
    try:
        error = state.message or status
        outcome = state.result(raise_on_failure=False) if status == "failed" else None
        if isinstance(outcome, BaseException):
            error = f"{outcome.__class__.__name__}: {outcome}"
        res = resources()
        row = run_rows.get_run(res.engine, run_id)
        if row is None:
            return
        if row["status"] == "cancelled" and status != "cancelled":
            return  # stopped by its user (Ctrl-C, settled by `harvest`): what the engine made of it after that
        expires = policy_from(res.settings).expires_at(status, utcnow())
        run_rows.finish_run(res.engine, run_id, status, retention="kept", error=error, expires_at=expires)
        logger.warning("run %s %s: %s (files kept for debugging)", run_id, status, error)
        after_source_run(res.engine, res.settings, run_id)  # a source failing N times in a row: its alarm
    except Exception:  # noqa: BLE001 - a dead database must not hide the original failure
        logger.exception("run %s: could not record status %s", run_id, status)


@_attached
def on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    _mark_ended("failed", flow, flow_run, state)


# What Prefect's engine says of a flow run a KeyboardInterrupt (Ctrl-C) stopped (prefect.states.
# exception_to_crashed_state); the state's data is the exception itself only in the process that raised it.
INTERRUPTED_MESSAGE = "Execution was aborted by an interrupt signal."


@_attached
def on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """Crashed, unless its user stopped it with Ctrl-C: that run is cancelled (issue 28), files kept as for any."""
    interrupted = isinstance(getattr(state, "data", None), KeyboardInterrupt) or state.message == INTERRUPTED_MESSAGE
    _mark_ended("cancelled" if interrupted else "crashed", flow, flow_run, state)


@_attached
def on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    _mark_ended("cancelled", flow, flow_run, state)
