"""`harvest`: run scrapes in-process and operate on their records from a terminal.

With `--json`, stdout carries exactly one JSON document and logs go to stderr, so scripts can pipe it.
Flows are imported inside the commands that run them: `harvest runs list` should not pay for importing
Prefect's flow machinery.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from harvest.errors import HarvestError

app = typer.Typer(help="Turn a family-activities website into clean, enriched activity records.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect and operate on past runs.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
blocks_app = typer.Typer(help="Prefect blocks built from the environment.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")
automations_app = typer.Typer(help="Prefect automations: zombie runs, crashed runs, notifications.",
                              no_args_is_help=True)
app.add_typer(automations_app, name="automations")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document, default=str, indent=2) + "\n")
    sys.stdout.flush()


def _flow_result(state: Any, what: str, *, as_json: bool = False, run_id: str | None = None) -> Any:
    """The return value of a flow run that completed; otherwise say why on stderr (and, with --json and a
    run id, print a status document on stdout) and exit 1. `what` names the run in the message."""
    if state.is_completed():
        return state.result()
    outcome = state.result(raise_on_failure=False)
    reason = f"{outcome.__class__.__name__}: {outcome}" if isinstance(outcome, BaseException) else state.message
    status = state.type.value.lower()
    if as_json and run_id is not None:
        _emit({"run_id": run_id, "status": status, "error": reason})
    _fail(f"{what} {status}: {reason}")


def _prefect(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a flow (or anything that starts Prefect's API); a temporary server that never came up is a clear
    error with what to do, not a traceback."""
    from harvest_cli.prefect_defaults import STARTUP_HINT, is_startup_timeout

    try:
        return call(*args, **kwargs)
    except RuntimeError as exc:
        if is_startup_timeout(exc):
            _fail(f"{exc}\n{STARTUP_HINT}")
        raise


def _show_summary(summary: Any, as_json: bool) -> None:
    document = summary.model_dump(mode="json")
    if as_json:
        _emit(document)
    else:
        _print_summary(document)


def _engine() -> Any:
    from harvest.db.engine import get_engine, upgrade
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    return get_engine(settings.database_url)


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
    render: str | None = typer.Option(None, help="auto | browser | http."),
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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (logs on stderr)."),
) -> None:
    """Run the scrape-website flow in this process and print its summary (or, with --estimate, its price)."""
    from pydantic import ValidationError

    from harvest.models import RunConfig, StartRequest

    try:
        base = json.loads(config_json) if config_json else {}
        overrides = {
            "max_pages": max_pages, "max_depth": max_depth, "max_extractions": max_extractions, "render": render,
            "max_crawl_seconds": max_crawl_seconds, "max_cost_usd": max_cost_usd,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        if auto_import:
            base["auto_import"] = True
        request = StartRequest(url=url, config=RunConfig.model_validate(base))
    except (ValidationError, ValueError) as exc:
        _fail(f"invalid run request: {exc}", 2)

    if as_json:
        _route_logs_to_stderr()
    if estimate:
        _estimate(request.url, request.config, as_json)
        return
    from flows.scrape import scrape_website
    from harvest_cli.live import live_progress, wanted

    with live_progress(wanted(as_json)):  # a live line on stderr only for a person at a terminal
        state = _prefect(scrape_website, url=request.url, config=request.config, from_raw=from_raw, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    _show_summary(_flow_result(state, f"run {run_id}", as_json=as_json, run_id=run_id), as_json)


def _estimate(url: str, config: Any, as_json: bool) -> None:
    """The dry run: crawl without paid calls and print what a full run would spend."""
    from harvest.cost.report import usd
    from harvest.estimate import estimate_run
    from harvest.settings import get_settings
    from harvest.urls import check_fetch_allowed

    settings = get_settings()
    try:
        check_fetch_allowed(url, allow_private_networks=settings.allow_private_networks)
        result = estimate_run(url, config, settings, _engine())
    except HarvestError as exc:
        _fail(f"estimate of {url} failed: {exc}")
    if as_json:
        _emit(result.model_dump(mode="json"))
        return
    typer.echo(f"estimate for {url}: {usd(result.cost_usd)} ({result.pages_fetched} pages, "
               f"{result.activities} activities from structured data, {result.llm_pages} page(s) for the LLM)")
    for stage, entry in result.stages.items():
        counters = ", ".join(f"{name} {count:,}" for name, count in sorted(entry["usage"].items()))
        typer.echo(f"  {stage:12} {usd(entry['cost_usd']):>12}  {counters}")
    for note in result.notes:
        typer.echo(f"  note: {note}")


def _route_logs_to_stderr() -> None:
    import logging

    for name in ("prefect", "harvest", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
                handler.setStream(sys.stderr)


def _print_summary(summary: dict[str, Any]) -> None:
    if summary["status"] == "already_running":
        typer.echo(f"{summary['url']} already has a running run: {summary['run_id']} (one run per URL at a time)")
        return
    typer.echo(f"run {summary['run_id']}: {summary['status']}, {summary['activities_processed']} activities")
    for kind, ref in summary["files"].items():
        typer.echo(f"  {kind:24} {ref['records']:>7} records {ref['bytes']:>12,} bytes  {ref['uri']}")
    if summary.get("import_summary"):
        typer.echo(f"  import: {summary['import_summary']}")
    if summary.get("cost"):
        from harvest.cost.report import cost_lines

        for line in cost_lines(summary["cost"]):
            typer.echo(f"  {line}")
    for warning in summary.get("warnings", [])[:20]:
        typer.echo(f"  warning: {warning}")
    if summary.get("failed_urls"):
        typer.echo(f"  failed URLs: {len(summary['failed_urls'])}")
    for reason, entry in (summary.get("unfollowed_links") or {}).items():
        typer.echo(f"  unfollowed links ({reason}): {entry['count']}, e.g.")
        for example in entry.get("examples", []):
            typer.echo(f"    {example}")


@runs_app.command("list")
def runs_list(
    limit: int = typer.Option(20, help="How many runs, newest first."),
    url: str | None = typer.Option(None, help="Only runs of this URL."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List recent runs."""
    from harvest.db.runs import list_runs

    rows = list_runs(_engine(), limit=limit, url=url)
    if as_json:
        _emit(rows)
        return
    for row in rows:
        typer.echo(
            f"{row['id']}  {row['status']:9} {row['retention']:14} {row['activities_processed'] or 0:>6}  "
            f"{row['started_at']:%Y-%m-%d %H:%M}  {row['url']}"
        )


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """The whole story of one run: status, timings per step, files and their state, import, diff, warnings."""
    from harvest.cost.report import cost_lines
    from harvest.db.ledger import run_cost
    from harvest.db.runs import get_run, list_files
    from harvest.retention.policy import file_state

    engine = _engine()
    row = get_run(engine, run_id)
    if row is None:
        _fail(f"no run {run_id}")
    row["files"] = [{**item, "state": file_state(item, row)} for item in list_files(engine, run_id)]
    row["cost"] = run_cost(engine, run_id)
    if as_json:
        _emit(row)
        return
    for key in ("id", "url", "status", "retention", "pinned", "expires_at", "started_at", "finished_at",
                "deployment_name", "work_pool", "activities_processed", "error"):
        typer.echo(f"{key:22} {row[key]}")
    typer.echo("steps:")
    for step, stats in (row["steps"] or {}).items():
        if "items_in" in stats:
            typer.echo(
                f"  {step:20} {stats.get('seconds', 0):>8.2f}s  in {stats['items_in']:>7}"
                f"  out {stats.get('items_out', 0):>7}"
                f"  skipped {stats.get('skipped', 0):>5}"
            )
        else:
            typer.echo(f"  {step:20} {json.dumps(stats, default=str)}")
    typer.echo("files:")
    for item in row["files"]:
        typer.echo(f"  {item['kind']:24} {item['records']:>7} {item['bytes']:>12,}  {item['state']:8} {item['uri']}")
    typer.echo("cost:")
    for line in cost_lines(row["cost"]):
        typer.echo(f"  {line}")
    typer.echo(f"import_summary         {row['import_summary']}")
    diff = row.get("diff")
    against = f" (against {row.get('previous_run_id')})" if diff else ""
    typer.echo(f"diff                   {diff or 'none'}{against}")
    typer.echo(f"warnings               {len(row['warnings'] or [])}")
    for warning in row["warnings"] or []:
        typer.echo(f"  {warning}")
    typer.echo(f"failed_urls            {len(row['failed_urls'] or [])}")
    for failed in row["failed_urls"] or []:
        typer.echo(f"  {failed}")


def _duration_seconds(text: str, option: str) -> float:
    from harvest.retention.policy import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except HarvestError as exc:
        _fail(f"{option}: {exc}", 2)


@runs_app.command("cost")
def runs_cost(
    run_id: str | None = typer.Argument(None, help="One run: its cost per stage, open holds and released holds."),
    since: str | None = typer.Option(None, help="Only runs started within this long: 30d, 12h, 3600."),
    url: str | None = typer.Option(None, help="Only runs of this URL."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What runs cost, from their ledgers: one line per run and the sum; or one run's ledger."""
    from datetime import timedelta

    from harvest.cost import add_usage
    from harvest.cost.report import cost_lines, usd
    from harvest.db.engine import utcnow
    from harvest.db.ledger import costs_since, run_cost
    from harvest.db.runs import get_run

    if run_id is not None:
        if since is not None or url is not None:
            _fail("give a run id or --since/--url, not both", 2)
        engine = _engine()
        row = get_run(engine, run_id)
        if row is None:
            _fail(f"no run {run_id}")
        cost = run_cost(engine, run_id)
        if as_json:
            _emit({"run_id": run_id, "status": row["status"], **cost})
            return
        typer.echo(f"run {run_id}: {row['status']}")
        for line in cost_lines(cost):
            typer.echo(f"  {line}")
        return
    start = utcnow() - timedelta(seconds=_duration_seconds(since, "--since")) if since else None
    runs = costs_since(_engine(), since=start, url=url)
    usage: dict[str, int] = {}
    for run in runs:
        add_usage(usage, run["usage"])
    total = round(sum(run["cost_usd"] for run in runs), 8)
    activities = sum(run["activities_processed"] or 0 for run in runs)
    if as_json:
        _emit({"since": start, "url": url, "runs": runs, "cost_usd": total, "usage": usage, "activities": activities})
        return
    for run in runs:
        holds = "".join(f"  {what} {usd(run[key])}" for what, key in (("held", "reserved_usd"),
                                                                      ("released", "released_usd")) if run[key])
        typer.echo(f"{run['id']}  {run['status']:9} {run['started_at']:%Y-%m-%d %H:%M}  "
                   f"{run['activities_processed'] or 0:>6}  {usd(run['cost_usd']):>12}  {run['url']}{holds}")
    typer.echo(f"{len(runs)} run(s), {activities} activities: {usd(total)}")


@runs_app.command("release-reservations")
def runs_release_reservations(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Release a finished run's open budget holds (calls that never reported back), recorded as released.

    Refused for a running run: its holds are for calls in flight. A run whose process died is reconciled (and
    its holds released) by `harvest sweep` or `harvest runs resume`."""
    from harvest.cost.report import usd
    from harvest.db.ledger import release_reservations

    try:
        released = release_reservations(_engine(), run_id)
    except HarvestError as exc:
        _fail(str(exc))
    if as_json:
        _emit({"run_id": run_id, "released_usd": round(sum(released.values()), 8),
               "stages": {stage: round(value, 8) for stage, value in released.items()}})
        return
    if not released:
        typer.echo(f"run {run_id}: no open holds")
        return
    typer.echo(f"run {run_id}: released {usd(sum(released.values()))} held for calls that never reported back")
    for stage, value in released.items():
        typer.echo(f"  {stage:12} {usd(value):>12}")


@runs_app.command("files")
def runs_files(
    run_id: str,
    expires: str = typer.Option(
        "1h", help="Link lifetime for S3 presigned URLs: 3600, 15m, 1h, 7d (S3 allows up to 7d)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List a run's files: kind, records, size, state and a download link (presigned for S3, a path locally)."""
    from blocks.storage import resolve_store
    from harvest.db.runs import get_run, list_files
    from harvest.retention.policy import file_state
    from harvest.settings import get_settings

    seconds = int(_duration_seconds(expires, "--expires"))
    engine = _engine()
    run = get_run(engine, run_id)
    if run is None:
        _fail(f"no run {run_id}")
    store = resolve_store(get_settings())
    rows = []
    for item in list_files(engine, run_id):
        state = file_state(item, run)
        link = store.presign(store.key_for(item["uri"]), seconds) if state == "present" else None
        rows.append({**item, "state": state, "link": link, "link_expires_seconds": seconds if link else None})
    if as_json:
        _emit(rows)
        return
    if not rows:
        _fail(f"run {run_id} has no files")
    for item in rows:
        where = item["link"] or f"({item['state']})"
        typer.echo(f"{item['kind']:24} {item['records']:>7} {item['bytes']:>12,}  {where}")


@runs_app.command("cleanup")
def runs_cleanup(
    run_id: str | None = typer.Argument(None, help="One run; or select many with --older-than."),
    older_than: str | None = typer.Option(None, help="Every finished, unpinned run older than this (e.g. 30d)."),
    status: str | None = typer.Option(None, help="With --older-than: only runs with this status (completed, failed…)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs, delete nothing."),
) -> None:
    """Delete finished runs' stored files (never the shared images) and mark them deleted."""
    from blocks.storage import resolve_store
    from harvest.db.runs import get_run
    from harvest.retention.policy import cleanup_older_than, cleanup_run
    from harvest.settings import get_settings

    if (run_id is None) == (older_than is None):
        _fail("give a run id or --older-than, not both", 2)
    engine = _engine()
    store = resolve_store(get_settings())
    if older_than is not None:
        age = _duration_seconds(older_than, "--older-than")
        from datetime import timedelta

        done = cleanup_older_than(engine, store, timedelta(seconds=age), status=status, dry_run=dry_run)
        verb = "would clean" if dry_run else "cleaned"
        for item in done:
            typer.echo(f"{verb} {item}")
        typer.echo(f"{verb} {len(done)} runs")
        return
    assert run_id is not None  # exactly one of the two was given (checked above)
    row = get_run(engine, run_id)
    if row is None:
        _fail(f"no run {run_id}")
    if row["status"] == "running":
        _fail(f"run {run_id} is still running; refusing to delete its files")
    if dry_run:
        typer.echo(f"would clean {run_id}")
        return
    deleted = cleanup_run(engine, store, run_id)
    if deleted is None:
        typer.echo(f"run {run_id}: files already {row['retention']}")
        return
    typer.echo(f"run {run_id}: deleted {deleted} objects")


def _pin(run_id: str, pinned: bool) -> None:
    from harvest.retention.queries import set_pinned

    if not set_pinned(_engine(), run_id, pinned):
        _fail(f"no run {run_id}")
    typer.echo(f"run {run_id} {'pinned: the sweep leaves it alone' if pinned else 'unpinned'}")


@runs_app.command("pin")
def runs_pin(run_id: str) -> None:
    """Exempt a run's files from the retention sweep."""
    _pin(run_id, True)


@runs_app.command("unpin")
def runs_unpin(run_id: str) -> None:
    """Let the retention sweep delete a run's files again once they expire."""
    _pin(run_id, False)


@runs_app.command("import")
def runs_import(
    run_id: str,
    cleanup: bool = typer.Option(False, "--cleanup", help="Delete the run's files after an import without failures."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Import a kept run's final JSONL into activities (same dedupe as auto-import; twice is harmless)."""
    if as_json:
        _route_logs_to_stderr()
    from flows.import_run import import_run

    state = _prefect(import_run, run_id=run_id, cleanup=cleanup, return_state=True)
    summary = _flow_result(state, f"import of run {run_id}")
    if as_json:
        _emit(summary.model_dump(mode="json"))
        return
    typer.echo(f"run {run_id} imported: {summary.model_dump(exclude={'errors'})}")
    for error in summary.errors[:20]:
        typer.echo(f"  error: {error}")


@runs_app.command("resume")
def runs_resume(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Run a failed, crashed or cancelled run again as the same flow run: finished steps are not repeated.

    A run still marked running whose process is gone (killed terminal, OOM, SIGKILL: same host and its pid is
    dead, or Prefect says its flow run is over) is reconciled first, so it can be resumed at once."""
    from harvest.db.runs import get_run

    engine = _engine()
    row = get_run(engine, run_id)
    if row is None:
        _fail(f"no run {run_id}")
    if row["status"] == "running":
        from flows.reconcile import reconcile_if_dead
        from harvest.retention.policy import policy_from
        from harvest.settings import get_settings

        if _prefect(reconcile_if_dead, engine, policy_from(get_settings()), run_id):
            row = get_run(engine, run_id) or row
            typer.echo(f"run {run_id} was left running by a process that is gone: marked {row['status']}", err=True)
    if row["status"] in ("running", "completed"):
        _fail(f"run {run_id} is {row['status']}; only failed, crashed or cancelled runs can be resumed")
    if row["retention"] not in ("pending", "kept"):
        _fail(f"run {run_id} cannot be resumed: its files are {row['retention']}")
    if as_json:
        _route_logs_to_stderr()
    from flows.resume import resume_flow_run

    _show_summary(_flow_result(_prefect(resume_flow_run, run_id), f"resumed run {run_id}"), as_json)


@runs_app.command("diff")
def runs_diff(
    old: str = typer.Argument(..., help="The earlier run."),
    new: str = typer.Argument(..., help="The later run."),
    limit: int = typer.Option(50, help="Changes to print (counts are always complete)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What changed between two runs: added, removed and changed activities (with the changed fields)."""
    from blocks.storage import resolve_store
    from harvest.db.runs import comparable_file, get_run
    from harvest.diff.compare import DiffCounts, diff_lines, digest_lines, load_digest
    from harvest.settings import get_settings

    engine = _engine()
    store = resolve_store(get_settings())
    sources = []
    for run_id in (old, new):
        if get_run(engine, run_id) is None:
            _fail(f"no run {run_id}")
        source = comparable_file(engine, run_id)
        if source is None:
            _fail(f"run {run_id} has neither a digest nor a final JSONL left to compare")
        sources.append(source)
    counts = DiffCounts()
    changes: list[dict[str, Any]] = []
    for change in diff_lines(load_digest(digest_lines(store, sources[0])), digest_lines(store, sources[1]), counts):
        if len(changes) < limit:
            changes.append(change)
    if as_json:
        _emit({"old": old, "new": new, "counts": counts.as_dict(), "changes": changes})
        return
    typer.echo(f"{old} → {new}: " + ", ".join(f"{k} {v}" for k, v in counts.as_dict().items()))
    for change in changes:
        fields = f"  ({', '.join(change['fields'])})" if change.get("fields") else ""
        typer.echo(f"  {change['change']:8} {change['id']}  {change.get('name')}{fields}")


@app.command()
def sweep(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Report what would be deleted or reconciled; change nothing."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Delete expired runs' files, orphans, unreferenced images and stale page memory; reconcile runs whose
    process died."""
    if as_json:
        _route_logs_to_stderr()
    from flows.sweep import sweep_expired

    report = _flow_result(_prefect(sweep_expired, dry_run=dry_run, return_state=True), "sweep")
    if as_json:
        _emit(report)
        return
    head = "would " if dry_run else ""
    for name in ("reconciled", "expired", "cleaned", "digests", "orphans", "images", "missing", "errors"):
        items = report[name]
        typer.echo(f"{head}{name:11} {len(items)}")
        for item in items[:20]:
            typer.echo(f"  {item}")
    typer.echo(f"objects deleted: {report['deleted_objects']}")
    typer.echo(f"page memory rows {'to prune' if dry_run else 'pruned'}: {report['page_memory_pruned']}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (Alembic) to HARVEST_DATABASE_URL."""
    from harvest.db.engine import upgrade
    from harvest.settings import get_settings

    try:
        upgrade(get_settings().database_url)
    except HarvestError as exc:
        _fail(str(exc))
    typer.echo("database is at the latest revision")


@blocks_app.command("register")
def blocks_register() -> None:
    """Create or update harvest's AWS credentials, S3 bucket and API-key Secret blocks from the environment."""
    from pydantic import ValidationError

    from blocks.register import main as register_main

    try:
        register_main(echo=typer.echo)
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}", 2)


@automations_app.command("register")
def automations_register(
    zombie_after: float | None = typer.Option(
        None, "--zombie-after", help="Seconds without an event after a heartbeat before a run is marked Crashed "
        "(default: 3 × PREFECT_FLOWS_HEARTBEAT_FREQUENCY, at least 90)."
    ),
) -> None:
    """Create or update the automations that crash zombie runs, settle crashed runs and notify on failures."""
    from pydantic import ValidationError

    from blocks.automations import main as register_main

    try:
        register_main(echo=typer.echo, zombie_after=zombie_after)
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}", 2)
    except HarvestError as exc:
        _fail(str(exc), 2)


def main() -> None:  # pragma: no cover - console entry point
    app()
