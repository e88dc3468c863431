"""`harvest`: run scrapes in-process and operate on their records from a terminal.

Every command checks what it can before Prefect starts (harvest_cli.preflight): a bad URL, setting, database,
storage or run id is one `error:` line and an exit code (harvest_cli.errors), in about a second. Flows are imported
inside the commands that run them, so `harvest runs list` never pays for Prefect's flow machinery. With `--json`,
stdout carries exactly one JSON document and logs go to stderr, so scripts can pipe it.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any, Literal

import typer

from harvest_cli import output, server
from harvest_cli.common import (
    JSON_HELP,
    checked,
    checked_engine,
    checked_settings,
    checked_store,
    flow_result,
    print_summary,
    route_logs_to_stderr,
    run_flow,
    use_prefect,
)
from harvest_cli.errors import CliError, ExitCode, Interrupted, debugging, fail, say_error, validation_message
from harvest_cli.runs import runs_app
from harvest_cli.sources import sources_app

app = typer.Typer(
    help="Turn a family-activities website into clean, enriched activity records.",
    no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
blocks_app = typer.Typer(help="Prefect blocks built from the environment.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(sources_app, name="sources")
app.add_typer(db_app, name="db")
app.add_typer(blocks_app, name="blocks")
server_app = typer.Typer(help="The local Prefect server harvest keeps running for its commands.", no_args_is_help=True)
app.add_typer(server_app, name="server")
automations_app = typer.Typer(help="Prefect automations: zombie runs, crashed runs, notifications.",
                              no_args_is_help=True)
app.add_typer(automations_app, name="automations")

Render = Literal["auto", "browser", "http"]
# The log level Prefect gets for each verbosity, unless PREFECT_LOGGING_LEVEL is set and no flag was given.
QUIET_LEVEL = "CRITICAL"  # at a terminal, or -q: the live line, the summary and harvest's own error line


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        def of(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        python = ".".join(str(part) for part in sys.version_info[:3])
        output.line(f"harvest {of('harvest')} (prefect {of('prefect')}, python {python})")
        raise typer.Exit()


@app.callback()
def options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print harvest's version (and Prefect's and Python's) and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="Show Prefect's log lines (-v: info; -vv: debug, and tracebacks for errors)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the result and errors, even when piped."),
    debug: bool = typer.Option(False, "--debug", help="Tracebacks for errors, and Prefect's debug log lines."),
) -> None:
    """Turn a family-activities website into clean, enriched activity records.

    Exit codes: 0 done; 1 the run failed; 2 bad input or a refused request; 3 a service harvest needs (database,
    storage, Prefect's API) is unavailable; 130 interrupted (Ctrl-C)."""
    if debug or verbose >= 2:
        os.environ["HARVEST_CLI_DEBUG"] = "1"
    level = None
    if debug or verbose >= 2:
        level = "DEBUG"
    elif verbose == 1:
        level = "INFO"
    elif quiet:
        level = QUIET_LEVEL
    if level is not None:
        os.environ["PREFECT_LOGGING_LEVEL"] = level  # a flag wins over the environment
    elif "PREFECT_LOGGING_LEVEL" not in os.environ and sys.stderr.isatty():
        os.environ["PREFECT_LOGGING_LEVEL"] = QUIET_LEVEL  # a person at a terminal: the live line and the summary
    if os.environ.get("PREFECT_LOGGING_LEVEL") == QUIET_LEVEL:
        import logging

        # harvest's own warnings are in the summary: without a handler of its own Python's last-resort handler
        # printed them on stderr before Prefect was up. A run's log in Prefect still gets them (its own handler).
        logging.getLogger("harvest").addHandler(logging.NullHandler())


# ---- scrape ---------------------------------------------------------------------------------------------------

_FLAGS = {"max_pages": "--max-pages", "max_depth": "--max-depth", "max_extractions": "--max-extractions",
          "max_crawl_seconds": "--max-crawl-seconds", "max_cost_usd": "--max-cost-usd", "render": "--render",
          "auto_import": "--auto-import"}


@app.command()
def scrape(
    url: str = typer.Argument(..., help="Start URL (http or https)."),
    max_pages: int | None = typer.Option(None, help="Stop after this many pages."),
    max_depth: int | None = typer.Option(None, help="How many links deep to follow."),
    max_extractions: int | None = typer.Option(None, help="Stop after this many raw activities."),
    max_crawl_seconds: float | None = typer.Option(
        None, help="Stop crawling after this many seconds and go on with the pages found (default 1800)."
    ),
    auto_import: bool = typer.Option(False, "--auto-import", help="Import into activities and delete the run's files."),
    render: Annotated[
        Render | None, typer.Option(help="auto (HTTP first, Chromium when needed), browser or http.")
    ] = None,
    config_json: str | None = typer.Option(None, "--config", help="Full run config as JSON (flags override it)."),
    from_raw: str | None = typer.Option(
        None, "--from-raw", help="Start from stored raw activities (a run's raw_activities URI or a JSONL path)."
    ),
    max_cost_usd: float | None = typer.Option(
        None, "--max-cost-usd", help="Budget in USD: no paid call that would pass it (0: no paid call at all)."
    ),
    estimate: bool = typer.Option(
        False, "--estimate", help="Crawl without any paid call and print what a full run would spend."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the scrape-website flow in this process and print its summary (or, with --estimate, its price)."""
    from harvest_cli import preflight

    overrides = {"max_pages": max_pages, "max_depth": max_depth, "max_extractions": max_extractions,
                 "render": render, "max_crawl_seconds": max_crawl_seconds, "max_cost_usd": max_cost_usd,
                 "auto_import": True if auto_import else None}
    request = _start_request(url, config_json, {key: value for key, value in overrides.items() if value is not None})
    settings = checked_settings()
    if not from_raw:
        checked(preflight.start_url, request.url, settings)
    engine = checked_engine()
    store = checked(preflight.storage, settings)
    if from_raw:
        checked(preflight.raw_source, from_raw, store)
    if as_json:
        route_logs_to_stderr()
    if estimate:
        _estimate(request.url, request.config, as_json)
        return
    early = not from_raw and _crawl_early(request.url, request.config, settings, engine)
    use_prefect()  # before Prefect is imported; a server it starts comes up while flows are imported
    from harvest_cli.live import live_progress, wanted

    try:
        with live_progress(wanted(as_json)):  # a live line on stderr only for a person at a terminal
            from flows.scrape import scrape_website

            state = run_flow(scrape_website, url=request.url, config=request.config, from_raw=from_raw,
                             return_state=True)
    finally:
        if early:
            from harvest.crawl.stage import drop_early_crawls

            drop_early_crawls()  # the flow ended before its crawl (another run of the URL was running, …)
    run_id = str(state.state_details.flow_run_id)
    summary = flow_result(state, f"run {run_id}", as_json=as_json, run_id=run_id).model_dump(mode="json")
    if as_json:
        output.emit_json(summary)
    else:
        print_summary(summary)


def _crawl_early(url: str, config: Any, settings: Any, engine: Any) -> bool:
    """Start the run's crawl now, while Prefect starts and the flow is set up (1-10 s); the crawl stage adopts it
    (harvest.crawl.stage.start_crawl_early). Not when another run of the URL is running (the flow will say
    so and crawl nothing), nor when the OpenAI key comes from a Prefect block (whether there is one decides the
    page memory's version, and only Prefect can say)."""
    from harvest.crawl.page_cache import PageCache
    from harvest.crawl.stage import extraction_version_for, start_crawl_early
    from harvest.db.runs import running_run_for

    if not settings.has_openai and settings.openai_api_key_block:
        return False
    if running_run_for(engine, url) is not None:
        return False
    version = extraction_version_for(settings.extraction_model if settings.has_openai else None)
    # Its run does not exist yet: the memory holds what it sees until the run adopts the crawl (and owns it).
    memory = (PageCache(engine, version, render=config.render, wait_for_owner=True)
              if settings.crawl_revalidate else None)
    start_crawl_early(url, config, settings, memory)
    return True


def _start_request(url: str, config_json: str | None, flags: dict[str, Any]) -> Any:
    """The validated URL and run config; each problem named as the user wrote it (exit 2)."""
    import json

    from pydantic import ValidationError

    from harvest.errors import ConfigError
    from harvest.models import RunConfig, StartRequest
    from harvest.urls import validate_start_url

    try:
        validate_start_url(url)
    except ConfigError as exc:
        fail(str(exc))
    try:
        base = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError as exc:
        fail(f"--config is not JSON: {exc}")
    if not isinstance(base, dict):
        fail("--config must be a JSON object of run config fields (see docs/configuration.md)")
    names = {field: f"{field} ({flag})" for field, flag in _FLAGS.items() if field in flags}
    names.update({field: f"{field} (--config)" for field in base if field not in flags})
    try:
        return StartRequest(url=url, config=RunConfig.model_validate({**base, **flags}))
    except ValidationError as exc:
        fail(f"invalid run config: {validation_message(exc, names)}")


def _counted(usage: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(usage.items()))


def _estimate(url: str, config: Any, as_json: bool) -> None:
    """The dry run: crawl without paid calls and print what a full run would spend."""
    from harvest.cost.report import usd
    from harvest.errors import HarvestError
    from harvest.estimate import estimate_run

    settings = checked_settings()
    try:
        result = estimate_run(url, config, settings, checked_engine())
    except HarvestError as exc:
        fail(f"estimate of {url} failed: {exc}", ExitCode.FAILED)
    if as_json:
        output.emit_json(result.model_dump(mode="json"))
        return
    output.line(f"estimate for {url}: {usd(result.cost_usd)} ({result.pages_fetched} pages, "
                f"{result.activities} activities from structured data, {result.llm_pages} page(s) for the LLM)")
    output.table(
        ["stage", "cost", "counted"],
        [(stage, usd(entry["cost_usd"]), _counted(entry["usage"]))
         for stage, entry in result.stages.items()],
        empty="no stage would cost anything", right=("cost",),
    )
    for note in result.notes:
        output.line(f"note: {note}")


# ---- sweep, db, blocks ----------------------------------------------------------------------------------------

SWEEP_ROWS = [  # (report key, what it counts, the verb for a dry run)
    ("reconciled", "runs reconciled (their process died)", "would reconcile"),
    ("settled", "runs settled (their completion hook never ran)", "would settle"),
    ("expired", "runs expired (files deleted)", "would expire"),
    ("cleaned", "failed cleanups finished", "would finish"),
    ("digests", "superseded digests deleted", "would delete"),
    ("orphans", "orphan objects deleted", "would delete"),
    ("images", "unreferenced images deleted", "would delete"),
    ("missing", "files flagged missing", "would flag"),
    ("errors", "errors", "errors"),
]


@app.command()
def sweep(
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would change; change nothing."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete expired runs' files, orphans, unreferenced images and stale page memory; reconcile runs whose
    process died."""
    checked_engine()
    checked_store()
    if as_json:
        route_logs_to_stderr()
    use_prefect()
    from flows.sweep import sweep_expired

    report = flow_result(run_flow(sweep_expired, dry_run=dry_run, return_state=True), "sweep")
    if as_json:
        output.emit_json(report)
        return
    output.line("sweep (dry run: nothing changed)" if dry_run else "sweep")
    output.table(["what", "count"], [(what, len(report.get(key) or [])) for key, what, _ in SWEEP_ROWS],
                 empty="", right=("count",))
    for key, what, verb in SWEEP_ROWS:
        for item in (report.get(key) or [])[:20]:
            shown = item if isinstance(item, str) else ", ".join(f"{k} {v}" for k, v in item.items())
            output.line(f"  {verb if dry_run else what.split(' (')[0]}: {shown}")
    output.line(f"objects deleted: {report['deleted_objects']}")
    output.line(f"page memory rows {'to prune' if dry_run else 'pruned'}: {report['page_memory_pruned']}")


@db_app.command("upgrade")
def db_upgrade(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Apply database migrations (Alembic) to HARVEST_DATABASE_URL."""
    from sqlalchemy.engine import make_url

    engine = checked_engine()  # checks the URL and the server, then migrates
    with engine.connect() as connection:
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    where = make_url(checked_settings().database_url).render_as_string(hide_password=True)
    if as_json:
        output.emit_json({"database": where, "revision": revision})
        return
    output.line(f"database {where} is at the latest revision ({revision})")


LOCAL_HELP = ("Without PREFECT_API_URL: register into the Prefect API harvest's own commands use on this machine "
              "(PREFECT_HOME's database), which no worker elsewhere sees.")


def _need_workers_api(command: str, local: bool) -> None:
    """What is registered is for workers: without --local, refuse a Prefect API only this machine's commands use."""
    if not local and not (os.environ.get("PREFECT_API_URL") or server.profile_api_url()):
        fail(f"{command} needs the Prefect server your workers use: set PREFECT_API_URL (e.g. "
             "http://127.0.0.1:4200/api); --local registers into this machine's own Prefect database instead")


@blocks_app.command("register")
def blocks_register(
    local: bool = typer.Option(False, "--local", help=LOCAL_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create or update harvest's AWS credentials, S3 bucket and API-key Secret blocks from the environment."""
    from pydantic import ValidationError

    checked_settings()
    _need_workers_api("blocks register", local)
    use_prefect()
    from blocks.register import register_blocks

    try:
        registered = run_flow(register_blocks)
    except ValidationError as exc:
        fail(f"invalid settings: {validation_message(exc)}")
    if as_json:
        output.emit_json([{"block": item.slug, "action": item.action, "note": item.note} for item in registered])
        return
    for item in registered:
        output.line(item.line())



@automations_app.command("register")
def automations_register(
    zombie_after: float | None = typer.Option(
        None, "--zombie-after", help="Seconds without an event after a heartbeat before a run is marked Crashed "
        "(default: 3 × PREFECT_FLOWS_HEARTBEAT_FREQUENCY, at least 90)."
    ),
    local: bool = typer.Option(False, "--local", help=LOCAL_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create or update the automations that crash zombie runs, settle crashed runs and notify on failures."""
    from pydantic import ValidationError

    from harvest.errors import HarvestError

    checked_settings()
    _need_workers_api("automations register", local)
    use_prefect()
    from blocks.automations import register_automations

    try:
        registered = run_flow(register_automations, zombie_after=zombie_after)
    except ValidationError as exc:
        fail(f"invalid settings: {validation_message(exc)}")
    except HarvestError as exc:
        fail(str(exc))
    if as_json:
        output.emit_json([{"automation": item.slug, "action": item.action, "note": item.note} for item in registered])
        return
    for item in registered:
        output.line(item.line())

# ---- the local Prefect server ---------------------------------------------------------------------------------


def _server_document(local: Any, running: bool) -> dict[str, Any]:
    document: dict[str, Any] = {"running": running, "mode": server.mode(), "record": str(server.record_path())}
    if os.environ.get("PREFECT_API_URL"):
        document["prefect_api_url"] = os.environ["PREFECT_API_URL"]  # what commands use instead
    if local is not None:
        document.update({"pid": local.pid, "api_url": local.api_url, "ui_url": local.ui_url,
                         "prefect_home": local.prefect_home, "prefect_version": local.prefect_version,
                         "log": local.log, "started_at": local.started_at})
    return document


def _say_server(document: dict[str, Any]) -> None:
    if document["running"]:
        output.line(f"running: pid {document['pid']}, UI {document['ui_url']}, API {document['api_url']}")
        output.fields([("PREFECT_HOME", document["prefect_home"]), ("log", document["log"])])
    else:
        output.line("not running: the next command that needs Prefect starts it"
                    if document["mode"] == "background" else f"not running (HARVEST_PREFECT_SERVER={document['mode']})")
    if document.get("prefect_api_url"):
        output.line(f"note: PREFECT_API_URL is set, so harvest's commands use {document['prefect_api_url']}")


@server_app.command("status")
def server_status(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Whether harvest's local Prefect server runs, and where (its UI, API, database and log)."""
    local = server.recorded()
    running = local is not None and server.reusable(local) and local.healthy()
    document = _server_document(local if running else None, running)
    if as_json:
        output.emit_json(document)
    else:
        _say_server(document)


@server_app.command("start")
def server_start(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Start the local Prefect server now (commands otherwise start it when they first need it)."""
    if os.environ.get("PREFECT_API_URL"):
        fail(f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): harvest's commands use that server, "
             "not a local one; unset it first")
    os.environ[server.MODE_VARIABLE] = "background"
    api = checked(server.begin)
    if api.server is None or not api.server.wait_healthy(server.startup_seconds()):
        log = api.server.log if api.server is not None else server.log_path()
        fail(f"the local Prefect server did not start; its log: {log}", ExitCode.UNAVAILABLE)
    document = _server_document(api.server, True)
    if as_json:
        output.emit_json(document)
    else:
        _say_server(document)


@server_app.command("stop")
def server_stop(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Stop the local Prefect server (the next command that needs one starts it again)."""
    stopped = server.stop_background()
    if as_json:
        output.emit_json({"stopped": stopped is not None, "pid": stopped.pid if stopped else None})
        return
    output.line(f"stopped the local Prefect server (pid {stopped.pid})" if stopped else "no local Prefect server was "
                "running")


# ---- the console script ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """The `harvest` console script: every expected error is one line and an exit code (harvest_cli.errors); a
    traceback only with --debug or -vv."""
    # Typer vendors click (typer._click); its usage errors are only reachable there.
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    try:
        result = app(args=argv, standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except NoArgsIsHelpError as exc:
        output.line(exc.ctx.get_help() if exc.ctx else "")
        return int(ExitCode.OK)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "harvest"
        say_error(f"{_usage_message(exc)} (see `{command} --help`)")
        return int(ExitCode.BAD_INPUT)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        say_error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except Interrupted as exc:  # a run stopped by Ctrl-C: what became of it, once the live line is gone
        exc.say()
        return int(exc.code)
    except CliError as exc:
        say_error(exc.message)
        return int(exc.code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, the traceback on request
        from harvest.errors import DatabaseError, HarvestError, StorageError

        if debugging():
            traceback.print_exc()
        code = ExitCode.UNAVAILABLE if isinstance(exc, (DatabaseError, StorageError)) else ExitCode.FAILED
        kind = "" if isinstance(exc, HarvestError) else f"unexpected {exc.__class__.__name__}: "
        hint = "" if debugging() else " (run with --debug for the traceback)"
        say_error(f"{kind}{exc}{hint}")
        return int(code)


def _usage_message(exc: Any) -> str:
    """click's message, without pydantic's 'Value error, ' and with a lower-case start."""
    message = exc.format_message().replace("Value error, ", "").replace(": Input should", ": input should")
    return (message[:1].lower() + message[1:]).rstrip(".")


def console_script() -> None:  # pragma: no cover - the `harvest` entry point
    sys.exit(main())
