"""`harvest sources ...`: the sites harvest keeps fresh on schedules, and how each one is doing (issue 32).

A source is a row of the metadata database (its URL, run config and health) and a schedule of the scrape deployment
in Prefect (its cadence, active or paused: blocks/schedules.py). Prefect is the truth for the schedule: `list` and
`show` read it back on every call, so a schedule paused in the UI is paused here. A source is refused at `add` when
its URL or config would be refused by the flow (the same validation as `harvest scrape`).
"""

from __future__ import annotations

from typing import Any

import typer

from harvest_cli import output
from harvest_cli.common import JSON_HELP, checked, checked_engine, checked_settings, run_flow, use_prefect
from harvest_cli.errors import ExitCode, fail

sources_app = typer.Typer(help="Sites kept fresh on schedules: add, list, pause, resume, remove; health and cost.",
                          no_args_is_help=True)


def _prefect(call: Any, *args: Any, **kwargs: Any) -> Any:
    """A call to Prefect's API (harvest's Prefect server, or PREFECT_API_URL); harvest's refusals are one line."""
    import httpx

    from harvest.errors import HarvestError

    use_prefect()
    try:
        return run_flow(call, *args, **kwargs)
    except HarvestError as exc:
        fail(str(exc))
    except httpx.TransportError as exc:  # the schedules live in Prefect: without its API there is no answer
        from prefect.settings import PREFECT_API_URL

        fail(f"Prefect's API at {PREFECT_API_URL.value() or 'the local server'} is unavailable: "
             f"{exc.__class__.__name__}: {exc}", ExitCode.UNAVAILABLE)


def _source(engine: Any, source_id: str) -> dict[str, Any]:
    from harvest.db.sources import get_source
    from harvest.errors import SourceError

    try:
        return get_source(engine, source_id)
    except SourceError as exc:
        fail(str(exc))


def _fleet(engine: Any) -> list[dict[str, Any]]:
    from flows.sources import fleet_view

    rows: list[dict[str, Any]] = _prefect(fleet_view, engine, checked_settings())
    return rows


@sources_app.command("add")
def sources_add(
    url: str = typer.Argument(..., help="Start URL (http or https)."),
    every: str | None = typer.Option(None, "--every", help="Run every this long: 6h, 1d, 1w (default 1d)."),
    cron: str | None = typer.Option(None, "--cron", help='Run at these times instead, a cron expression in UTC: '
                                    '"0 3 * * *".'),
    config_json: str | None = typer.Option(None, "--config", help="The run config as JSON (as `harvest scrape "
                                           "--config`); the deployment's defaults otherwise."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Add a source: a schedule of the scrape deployment in Prefect that runs URL with its config."""
    from harvest.db import sources as source_rows
    from harvest.errors import ConfigError, HarvestError
    from harvest.sources.cadence import cadence_from
    from harvest_cli import preflight
    from harvest_cli.main import _start_request

    request = _start_request(url, config_json, {})  # the flow's own validation: URL, then the run config
    try:
        cadence = cadence_from(every, cron)
    except ConfigError as exc:
        fail(str(exc))
    settings = checked_settings()
    checked(preflight.start_url, request.url, settings)  # the address guard the flow applies
    engine = checked_engine()
    config = request.config.model_dump(mode="json", exclude_unset=True) if config_json else {}
    try:
        source = source_rows.add_source(engine, request.url, config, settings.sources_deployment)
    except HarvestError as exc:
        fail(str(exc))
    from blocks.schedules import add_schedule

    parameters: dict[str, Any] = {"url": request.url, **({"config": config} if config else {})}
    try:
        view = _prefect(add_schedule, source["deployment"], source["schedule_slug"], cadence, parameters)
    except BaseException:
        source_rows.remove_source(engine, source["id"])  # no schedule, no source: the two never disagree
        raise
    document = {"id": source["id"], "url": source["url"], "deployment": source["deployment"],
                "schedule": view.slug, "cadence": view.cadence, "next_run": view.next_run, "config": config}
    if as_json:
        output.emit_json(document)
        return
    output.line(f"source {source['id']}: {source['url']}, {view.cadence}, next run {view.next_run or '-'}")
    output.line(f"schedule {view.slug} of deployment {source['deployment']} (pause or run it from the UI too)")


@sources_app.command("list")
def sources_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every source: status (active, paused, degraded, no schedule), activities and their change against the
    previous completed run, cost per run, last and next run."""
    from flows.sources import fleet_table

    rows = _fleet(checked_engine())
    if as_json:
        output.emit_json(rows)
        return
    table = fleet_table(rows)
    output.table(list(table[0]) if table else ["id"], [list(row.values()) for row in table],
                 empty="no sources yet: add one with `harvest sources add URL --every 1d`",
                 right=("id", "activities", "change", "cost/run"))
    for row in rows:
        if row["status"] == "degraded":
            output.line(f"degraded {row['id']}: {row['health_reason']}")
        if not row["parameters_ok"]:
            output.line(f"note {row['id']}: its schedule in Prefect lost its parameters (an update that sent only "
                        f"`active`); `harvest sources resume {row['id']}` restores them")


@sources_app.command("show")
def sources_show(
    source_id: str = typer.Argument(..., metavar="ID", help="The source's id (`harvest sources list`)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """One source: its schedule in Prefect, its config, its health and its recent runs."""
    from harvest.db.runs import list_runs

    engine = checked_engine()
    source = _source(engine, source_id)
    row = next(r for r in _fleet(engine) if r["id"] == source["id"])
    row["recent_runs"] = [{key: run[key] for key in ("id", "status", "started_at", "activities_processed")}
                          for run in list_runs(engine, limit=10, url=source["url"])]
    if as_json:
        output.emit_json(row)
        return
    last = row["last_run"] or {}
    output.line(f"source {row['id']}: {row['url']}")
    output.fields([
        ("status", row["status"]), ("schedule", f"{row['cadence'] or '-'} ({row['schedule']}), {row['schedule_slug']} "
                                                f"of {row['deployment']}"),
        ("next run", row["next_run"] or "-"), ("config", row["config"] or "the deployment's defaults"),
        ("last run", f"{last.get('id', '-')} {last.get('status', '')}".strip()),
        ("activities", _activities(row)),
        ("last success", row["last_success_at"] or "never"),
        ("cost per run", "-" if row["cost_per_run_usd"] is None else f"${row['cost_per_run_usd']:.4f}"),
    ])
    if row["health_reason"]:
        output.line(f"degraded: {row['health_reason']}")
    output.table(["run", "status", "activities", "started"],
                 [(r["id"], r["status"], r["activities_processed"] or 0, r["started_at"]) for r in row["recent_runs"]],
                 empty="no runs yet", right=("activities",))


def _activities(row: dict[str, Any]) -> str:
    if row["activities"] is None:
        return "-"
    previous = "-" if row["previous_activities"] is None else row["previous_activities"]
    return f"{row['activities']} (previous completed run: {previous})"


def _set_active(source_id: str, active: bool, as_json: bool) -> None:
    from blocks.schedules import set_active

    engine = checked_engine()
    source = _source(engine, source_id)
    parameters = {"url": source["url"], **({"config": source["config"]} if source["config"] else {})}
    if not _prefect(set_active, source["deployment"], source["schedule_slug"], active, parameters):
        fail(f"source {source['id']} has no schedule {source['schedule_slug']} on {source['deployment']} (deleted in "
             f"Prefect?): `harvest sources remove {source['id']}` and add it again")
    state = "active" if active else "paused"
    if as_json:
        output.emit_json({"id": source["id"], "url": source["url"], "schedule": state})
        return
    output.line(f"source {source['id']} ({source['url']}): {state}")


@sources_app.command("pause")
def sources_pause(
    source_id: str = typer.Argument(..., metavar="ID", help="The source's id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Pause the source's schedule in Prefect (as the UI's toggle does): no run until it is resumed."""
    _set_active(source_id, False, as_json)


@sources_app.command("resume")
def sources_resume(
    source_id: str = typer.Argument(..., metavar="ID", help="The source's id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Resume the source's schedule in Prefect."""
    _set_active(source_id, True, as_json)


@sources_app.command("remove")
def sources_remove(
    source_id: str = typer.Argument(..., metavar="ID", help="The source's id."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Remove the source: its schedule in Prefect, its claims on activities (a row another source also lists is
    kept, shown from the best remaining claim; a row only this source listed is deleted), then its row. Its runs
    and their files stay."""
    from blocks.schedules import remove_schedule
    from harvest.db.sources import remove_source
    from harvest.enrich.registry import enrichments
    from harvest.import_.policy import import_table
    from harvest.import_.provenance import withdraw_source

    engine = checked_engine()
    source = _source(engine, source_id)
    had = _prefect(remove_schedule, source["deployment"], source["schedule_slug"])
    withdrawn = withdraw_source(engine, source["url"], import_table(enrichments()).table)
    remove_source(engine, source["id"])
    claims = {"claims": withdrawn.claims, "rederived": withdrawn.rederived, "deleted": withdrawn.deleted}
    if as_json:
        output.emit_json({"id": source["id"], "url": source["url"], "removed": True, "schedule_removed": had,
                          "withdrawn": claims})
        return
    output.line(f"removed source {source['id']} ({source['url']})" + ("" if had else "; it had no schedule left"))
    if withdrawn.claims:
        output.line(f"  its claims on {withdrawn.claims} activities withdrawn: {withdrawn.rederived} now shown from "
                    f"another source, {withdrawn.deleted} no other source lists deleted")


@sources_app.command("cost")
def sources_cost(
    since: str = typer.Option("30d", "--since", help="Runs started this long ago or later: 7d, 30d, 12h."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What each source's runs cost since then (the run ledger), and the total."""
    from harvest.cost.report import usd
    from harvest.db.engine import utcnow
    from harvest.durations import parse_duration
    from harvest.errors import ConfigError
    from harvest.sources.health import costs

    try:
        window = parse_duration(since)
    except ConfigError as exc:
        fail(f"--since: {exc}", ExitCode.BAD_INPUT)
    rows = costs(checked_engine(), utcnow() - window)
    total = round(sum(row["cost_usd"] for row in rows), 8)
    if as_json:
        output.emit_json({"since": since, "sources": rows, "cost_usd": total})
        return
    output.table(["id", "url", "runs", "activities", "cost"],
                 [(r["id"], r["url"], r["runs"], r["activities"], usd(r["cost_usd"])) for r in rows],
                 empty="no sources yet", right=("id", "runs", "activities", "cost"))
    output.line(f"total since {since}: {usd(total)} over {sum(r['runs'] for r in rows)} runs")


@sources_app.command("worker")
def sources_worker(
    pool: str | None = typer.Option(None, "--pool", help="The work pool to serve (default HARVEST_SOURCES_POOL, "
                                    "harvest-sources: the sources deployment's)."),
    limit: int = typer.Option(2, "--limit", min=1, help="Flow runs at once."),
    name: str | None = typer.Option(None, "--name", help="The worker's name in the UI (default "
                                    "harvest-fleet-<host>-<pid>)."),
    poll: float = typer.Option(2.0, "--poll", min=0.2, help="Seconds between polls of the pool for due runs (and "
                               "for runs being cancelled)."),
    grace: float = typer.Option(30.0, "--grace", min=0, help="On SIGTERM or Ctrl-C: seconds running flow runs may "
                                "go on before they are cancelled (a second signal cancels them at once)."),
    max_runs: int | None = typer.Option(None, "--max-runs", min=1, help="Stop once this many runs were claimed and "
                                        "have finished."),
    as_json: bool = typer.Option(False, "--json", help="When it stops, print what it did as JSON on stdout "
                                 "(worker, pool, runs claimed)."),
) -> None:
    """Run the sources' scheduled flow runs: a worker of the pool that imports the flow once and forks a process
    per flow run (each keeps its own flow run, logs, run row and files; Cancel in the UI works). Per source
    about a third of the overhead of a `prefect worker`, which starts Python afresh for each run. Needs
    PREFECT_API_URL."""
    import logging
    import os
    import sys

    if os.environ.get("PREFECT_LOGGING_LEVEL") == "CRITICAL":  # before Prefect is imported: it reads it then
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"  # the runs' logs are for the UI, not this terminal's quiet
    settings = checked_settings()
    checked_engine()  # a database that is wrong or down is one line now, not a failed run per source later
    import httpx
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        fail("the fleet worker serves a work pool of a Prefect server: set PREFECT_API_URL (as for `prefect worker`)")

    from flows.fleet_worker import Options, default_name, serve

    log = logging.getLogger("harvest.fleet_worker")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    options = Options(pool=pool or settings.sources_pool, name=name or default_name(), limit=limit,
                      poll_seconds=poll, grace=grace, max_runs=max_runs)
    try:
        claimed = serve(options)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            fail(f"no work pool {options.pool} on the Prefect API: `prefect work-pool create {options.pool} --type "
                 "process`, then `prefect --no-prompt deploy --all`")
        fail(f"Prefect's API refused the fleet worker: {exc}", ExitCode.UNAVAILABLE)
    except httpx.TransportError as exc:
        fail(f"Prefect's API at {PREFECT_API_URL.value()} is unavailable: {exc.__class__.__name__}: {exc}",
             ExitCode.UNAVAILABLE)
    if as_json:
        output.emit_json({"worker": options.name, "pool": options.pool, "runs_claimed": claimed})
    else:
        output.line(f"fleet worker {options.name} stopped after {claimed} run(s) of pool {options.pool}")
