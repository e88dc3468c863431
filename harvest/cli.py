"""`harvest`: run scrapes in-process and operate on their records from a terminal.

With `--json`, stdout carries exactly one JSON document and logs go to stderr, so scripts can pipe it.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from harvest.errors import HarvestError

app = typer.Typer(help="Turn a family-activities website into clean, enriched activity records.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect and operate on past runs.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
blocks_app = typer.Typer(help="Prefect blocks built from the environment.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document, default=str, indent=2) + "\n")
    sys.stdout.flush()


def _engine() -> Any:
    from harvest.db.engine import get_engine, upgrade
    from harvest.settings import get_settings

    settings = get_settings()
    upgrade(settings.database_url)
    return get_engine(settings.database_url)


@app.command()
def scrape(
    url: str = typer.Argument(..., help="Start URL (http or https)."),
    max_pages: Optional[int] = typer.Option(None, help="Stop after this many pages."),
    max_depth: Optional[int] = typer.Option(None, help="How many links deep to follow."),
    max_extractions: Optional[int] = typer.Option(None, help="Stop after this many raw activities."),
    auto_import: bool = typer.Option(False, "--auto-import", help="Import into activities and delete the run's files."),
    render: Optional[str] = typer.Option(None, help="auto | browser | http."),
    config_json: Optional[str] = typer.Option(None, "--config", help="Full run config as JSON (flags override it)."),
    from_raw: Optional[str] = typer.Option(
        None, "--from-raw", help="Start from stored raw activities (a run's raw_activities URI or a JSONL path)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (logs on stderr)."),
) -> None:
    """Run the scrape-website flow in this process and print its summary."""
    from pydantic import ValidationError

    from harvest.models import RunConfig, StartRequest

    try:
        base = json.loads(config_json) if config_json else {}
        overrides = {"max_pages": max_pages, "max_depth": max_depth, "max_extractions": max_extractions, "render": render}
        base.update({k: v for k, v in overrides.items() if v is not None})
        if auto_import:
            base["auto_import"] = True
        request = StartRequest(url=url, config=RunConfig.model_validate(base))
    except (ValidationError, ValueError) as exc:
        _fail(f"invalid run request: {exc}", 2)

    if as_json:
        _route_logs_to_stderr()
    from flows.scrape import scrape_website

    state = scrape_website(url=request.url, config=request.config, from_raw=from_raw, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    if state.is_completed():
        summary = state.result()
        if as_json:
            _emit(summary.model_dump(mode="json"))
        else:
            _print_summary(summary.model_dump(mode="json"))
        return
    outcome = state.result(raise_on_failure=False)
    reason = f"{outcome.__class__.__name__}: {outcome}" if isinstance(outcome, BaseException) else state.message
    if as_json:
        _emit({"run_id": run_id, "status": state.type.value.lower(), "error": reason})
    _fail(f"run {run_id} {state.type.value.lower()}: {reason}")


def _route_logs_to_stderr() -> None:
    import logging

    for name in ("prefect", "harvest", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
                handler.setStream(sys.stderr)


def _print_summary(summary: dict[str, Any]) -> None:
    typer.echo(f"run {summary['run_id']}: {summary['status']}, {summary['activities_processed']} activities")
    for kind, ref in summary["files"].items():
        typer.echo(f"  {kind:24} {ref['records']:>7} records {ref['bytes']:>12,} bytes  {ref['uri']}")
    if summary.get("import_summary"):
        typer.echo(f"  import: {summary['import_summary']}")
    for warning in summary.get("warnings", [])[:20]:
        typer.echo(f"  warning: {warning}")
    if summary.get("failed_urls"):
        typer.echo(f"  failed URLs: {len(summary['failed_urls'])}")


@runs_app.command("list")
def runs_list(
    limit: int = typer.Option(20, help="How many runs, newest first."),
    url: Optional[str] = typer.Option(None, help="Only runs of this URL."),
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
    """Show one run: status, steps, files, import summary, warnings, failed URLs."""
    from harvest.db.runs import get_run, list_files

    engine = _engine()
    row = get_run(engine, run_id)
    if row is None:
        _fail(f"no run {run_id}")
    row["files"] = list_files(engine, run_id)
    if as_json:
        _emit(row)
        return
    for key in ("id", "url", "status", "retention", "started_at", "finished_at", "activities_processed", "error"):
        typer.echo(f"{key:22} {row[key]}")
    typer.echo("steps:")
    for step, stats in (row["steps"] or {}).items():
        typer.echo(f"  {step:20} {json.dumps(stats, default=str)}")
    typer.echo("files:")
    for item in row["files"]:
        state = "deleted" if item["deleted_at"] else "present"
        typer.echo(f"  {item['kind']:24} {item['records']:>7} {item['bytes']:>12,}  {state:8} {item['uri']}")
    typer.echo(f"import_summary         {row['import_summary']}")
    for warning in row["warnings"] or []:
        typer.echo(f"warning: {warning}")
    for failed in row["failed_urls"] or []:
        typer.echo(f"failed: {failed}")


@runs_app.command("files")
def runs_files(
    run_id: str,
    expires: int = typer.Option(3600, help="Link lifetime in seconds (S3 presigned URLs)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List a run's files with a download link each (presigned for S3, a path for local storage)."""
    from blocks.storage import resolve_store
    from harvest.db.runs import list_files
    from harvest.settings import get_settings

    store = resolve_store(get_settings())
    rows = []
    for item in list_files(_engine(), run_id):
        link = None
        if item["deleted_at"] is None:
            link = store.presign(store.key_for(item["uri"]), expires)
        rows.append({**item, "link": link})
    if as_json:
        _emit(rows)
        return
    if not rows:
        _fail(f"run {run_id} has no files")
    for item in rows:
        typer.echo(f"{item['kind']:24} {item['records']:>7} {item['bytes']:>12,}  {item['link'] or '(deleted)'}")


@runs_app.command("cleanup")
def runs_cleanup(run_id: str) -> None:
    """Delete a run's stored files (never the shared images) and mark them deleted."""
    from flows.hooks import cleanup_run_files
    from harvest.db.runs import get_run, update_run

    engine = _engine()
    row = get_run(engine, run_id)
    if row is None:
        _fail(f"no run {run_id}")
    if row["status"] == "running":
        _fail(f"run {run_id} is still running; refusing to delete its files")
    deleted = cleanup_run_files(run_id)
    update_run(engine, run_id, retention="cleaned")
    typer.echo(f"run {run_id}: deleted {deleted} objects")


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


def main() -> None:  # pragma: no cover - console entry point
    app()
