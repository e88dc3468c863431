"""What the commands share: the checked settings, database and store, running a flow under harvest's Ctrl-C
handling, and turning a flow's final state into a result or one error line."""

from __future__ import annotations

import sys
from typing import Any

from harvest_cli import output
from harvest_cli.errors import CliError, ExitCode, Interrupted, fail

JSON_HELP = "Print one JSON document on stdout (logs go to stderr)."


def checked(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a preflight check; its CliError becomes the `error:` line and exit code."""
    try:
        return call(*args, **kwargs)
    except CliError as exc:
        fail(exc.message, exc.code)


def checked_settings() -> Any:
    from harvest_cli import preflight

    return checked(preflight.settings)


def checked_engine() -> Any:
    """The metadata database, checked (URL, driver, reachable) and migrated."""
    from harvest_cli import preflight

    return checked(preflight.database, checked_settings())


def checked_store() -> Any:
    """The object store, checked (a writable folder, a bucket that answers); a block slug is loaded by Prefect."""
    from harvest_cli import preflight

    settings = checked_settings()
    store = checked(preflight.storage, settings)
    if store is None:
        use_prefect()  # a Prefect block: loaded through the API
        from blocks.storage import resolve_store

        store = resolve_store(settings)
    return store


def route_logs_to_stderr() -> None:
    import logging

    for name in ("prefect", "harvest", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
                handler.setStream(sys.stderr)


_API: Any = None  # harvest_cli.server.Api, once use_prefect() has run


def use_prefect() -> None:
    """Point this process at a Prefect API (harvest_cli.server: a local server, started in the background if need
    be) before anything imports Prefect; call it before importing `flows`. Its start overlaps the imports."""
    global _API
    if _API is not None:
        return
    from harvest_cli import interrupt, server

    _API = checked(server.begin)
    if _API.server is not None and _API.server.mode == "temporary":
        interrupt.before_exit(_API.server.stop)  # a forced exit skips atexit


def _api_ready() -> bool:
    """Wait for the server this command uses; False when it did not come up (the command falls back)."""
    from harvest_cli import server

    use_prefect()
    if _API.server is None:
        return True
    if _API.ready(server.startup_seconds()):
        if _API.started and _API.server.mode == "background":
            _API.started = False  # said once
            sys.stderr.write(f"harvest: started a local Prefect server for this and later commands; its UI is at "
                             f"{_API.server.ui_url} (`harvest server stop` ends it)\n")
        return True
    sys.stderr.write(f"harvest: the local Prefect server did not start (its log: {_API.server.log}); using a "
                     "temporary one for this command\n")
    server.fall_back(_API)
    _API.server = None
    return False


def _call(call: Any, *args: Any, **kwargs: Any) -> Any:
    if _api_ready():
        return call(*args, **kwargs)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # Prefect may have read the address already
        return call(*args, **kwargs)


def run_flow(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow (or anything that calls Prefect's API) in this process, under harvest's Ctrl-C handling: the
    first Ctrl-C settles the run as cancelled and exits 130, a second forces (harvest_cli.interrupt). An API
    that never came up is exit 3 with what to do."""
    from harvest_cli.interrupt import guard
    from harvest_cli.prefect_defaults import STARTUP_HINT, is_startup_timeout

    with guard(checked_settings().database_url) as interrupts:
        try:
            result = _call(call, *args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted(interrupts.finish(), interrupts.say) from None
        except RuntimeError as exc:
            if interrupts.triggered:
                raise Interrupted(interrupts.finish(), interrupts.say) from None
            if is_startup_timeout(exc):
                fail(f"{exc}. {STARTUP_HINT}", ExitCode.UNAVAILABLE)
            raise
        if interrupts.triggered:  # the engine swallowed the interrupt and returned a state
            raise Interrupted(interrupts.finish(), interrupts.say)
    return result


def flow_result(state: Any, what: str, *, as_json: bool = False, run_id: str | None = None) -> Any:
    """The return value of a flow run that completed; otherwise say why on one line (and, with --json and a run
    id, print a status document on stdout) and exit 1."""
    if state.is_completed():
        return state.result()
    outcome = state.result(raise_on_failure=False)
    reason = f"{outcome.__class__.__name__}: {outcome}" if isinstance(outcome, BaseException) else state.message
    status = state.type.value.lower()
    if as_json and run_id is not None:
        output.emit_json({"run_id": run_id, "status": status, "error": reason})
    hint = (f"; its files are kept: `harvest runs show {run_id}`, then `harvest runs resume {run_id}`"
            if run_id else "")
    fail(f"{what} {status}: {reason}{hint}", ExitCode.FAILED)


def print_summary(summary: dict[str, Any]) -> None:
    """A run's summary in words and a table of its files."""
    if summary["status"] == "already_running":
        output.line(f"{summary['url']} already has a running run: {summary['run_id']} (one run per URL at a time)")
        return
    output.line(f"run {summary['run_id']}: {summary['status']}, {summary['activities_processed']:,} activities")
    output.table(["file", "records", "bytes", "where"],
                 [(kind, ref["records"], ref["bytes"], ref["uri"]) for kind, ref in summary["files"].items()],
                 empty="no files", right=("records", "bytes"))
    if summary.get("import_summary"):
        output.line(f"import: {output.import_summary(summary['import_summary'])}")
    if summary.get("cost"):
        from harvest.cost.report import cost_lines

        for text in cost_lines(summary["cost"]):
            output.line(text)
    warnings = summary.get("warnings", [])
    for warning in warnings[:20]:
        output.line(f"warning: {warning}")
    if len(warnings) > 20:
        output.line(f"... and {len(warnings) - 20} more warnings: harvest runs show {summary['run_id']}")
    if summary.get("failed_urls"):
        output.line(f"failed URLs: {len(summary['failed_urls'])} (harvest runs show {summary['run_id']})")
    for reason, entry in (summary.get("unfollowed_links") or {}).items():
        output.line(f"unfollowed links ({reason}): {entry['count']}, e.g.")
        for example in entry.get("examples", []):
            output.line(f"  {example}")
    print_quality(summary.get("quality") or {})
    output.line(f"more: harvest runs show {summary['run_id']}")


def print_quality(report: dict[str, Any]) -> None:
    """The run's content quality report (harvest.quality), a sentence per line; nothing when it is empty."""
    from harvest.quality import report_lines

    lines = report_lines(report)
    if lines:
        output.line("content quality:")
    for text in lines:
        output.line(f"  {text}")


