"""`harvest runs ...`: inspect and operate on past runs. Every run id is looked up (and its state checked) before
anything else happens: an unknown id, or a run whose state refuses the request, is one line and exit 2."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import typer

from harvest_cli import output
from harvest_cli.common import (
    JSON_HELP,
    checked,
    checked_engine,
    checked_settings,
    checked_store,
    flow_result,
    print_quality,
    print_summary,
    route_logs_to_stderr,
    run_flow,
    use_prefect,
)
from harvest_cli.errors import fail

runs_app = typer.Typer(help="Inspect and operate on past runs.", no_args_is_help=True)

Status = Literal["running", "completed", "failed", "crashed", "cancelled"]
FinishedStatus = Literal["completed", "failed", "crashed", "cancelled"]


def _row(engine: Any, run_id: str) -> dict[str, Any]:
    from harvest_cli import preflight

    row: dict[str, Any] = checked(preflight.run_row, engine, run_id)
    return row


@runs_app.command("list")
def runs_list(
    limit: int = typer.Option(20, min=1, help="How many runs, newest first."),
    url: str | None = typer.Option(None, help="Only runs of this URL."),
    status: Annotated[Status | None, typer.Option(help="Only runs with this status.")] = None,
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List recent runs, newest first."""
    from harvest.db.runs import list_runs

    rows = list_runs(checked_engine(), limit=limit, url=url, status=status)
    if as_json:
        output.emit_json(rows)
        return
    which = " ".join(part for part in (status, f"of {url}" if url else "") if part)
    output.table(
        ["run", "status", "files", "activities", "started", "url"],
        [(row["id"], row["status"], row["retention"], row["activities_processed"] or 0, row["started_at"], row["url"])
         for row in rows],
        empty=f"no {which + ' ' if which else ''}runs yet: start one with `harvest scrape URL`",
        right=("activities",),
    )


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The whole story of one run: status, timings per step, files and their state, import, diff, warnings."""
    from harvest.cost.report import cost_lines
    from harvest.db.ledger import run_cost
    from harvest.db.runs import list_files
    from harvest.retention.policy import file_state

    engine = checked_engine()
    row = _row(engine, run_id)
    row["files"] = [{**item, "state": file_state(item, row)} for item in list_files(engine, run_id)]
    row["cost"] = run_cost(engine, run_id)
    if as_json:
        output.emit_json(row)
        return
    output.fields([(key, row[key]) for key in (
        "id", "url", "status", "retention", "pinned", "expires_at", "started_at", "finished_at", "deployment_name",
        "work_pool", "activities_processed", "error")] + [
        ("import", output.import_summary(row["import_summary"])),
        ("diff", output.diff_summary(row.get("diff")) + (f" (against {row['previous_run_id']})"
                                                         if row.get("diff") and row.get("previous_run_id") else "")),
    ])
    steps = row["steps"] or {}
    output.table(
        ["step", "seconds", "in", "out", "skipped"],
        [(step, f"{stats.get('seconds', 0):.2f}", stats["items_in"], stats.get("items_out", 0), stats.get("skipped", 0))
         for step, stats in steps.items() if isinstance(stats, dict) and "items_in" in stats],
        empty="steps: none recorded", title="steps", right=("seconds", "in", "out", "skipped"),
    )
    for step, stats in steps.items():
        if isinstance(stats, dict) and "items_in" in stats:
            continue
        if step.startswith("quality_"):
            continue  # shown below as the content quality report
        if step == "unfollowed" and isinstance(stats, dict):
            for reason, entry in stats.items():
                output.line(f"unfollowed links ({reason}): {entry.get('count', 0):,}, e.g. "
                            + ", ".join(entry.get("examples") or []))
        elif step == "traffic" and isinstance(stats, dict):
            output.line(f"between tasks: {stats.get('bytes_between_tasks', 0):,} bytes in "
                        f"{stats.get('task_runs', 0):,} task runs")
        else:
            output.line(f"{step}: {json.dumps(stats, default=str)}")
    output.table(["file", "records", "bytes", "state", "where"],
                 [(item["kind"], item["records"], item["bytes"], item["state"], item["uri"]) for item in row["files"]],
                 empty="files: none", title="files", right=("records", "bytes"))
    for text in cost_lines(row["cost"]):
        output.line(text)
    warnings, failed = row["warnings"] or [], row["failed_urls"] or []
    output.line(f"warnings: {len(warnings)}")
    for warning in warnings:
        output.line(f"  {warning}")
    output.line(f"failed URLs: {len(failed)}")
    for item in failed:
        output.line(f"  {item.get('url')}  {item.get('reason')}" if isinstance(item, dict) else f"  {item}")
    from harvest.quality import run_quality

    print_quality(run_quality(row))


def _duration_seconds(text: str, option: str) -> float:
    from harvest.durations import parse_duration
    from harvest.errors import HarvestError

    try:
        return parse_duration(text).total_seconds()
    except HarvestError as exc:
        fail(f"{option}: {exc}")


@runs_app.command("cost")
def runs_cost(
    run_id: str | None = typer.Argument(None, help="One run: its cost per stage, open holds and released holds."),
    since: str | None = typer.Option(None, help="Only runs started within this long: 30d, 12h, 3600."),
    url: str | None = typer.Option(None, help="Only runs of this URL."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What runs cost, from their ledgers: one line per run and the sum; or one run's ledger."""
    from datetime import timedelta

    from harvest.cost import add_usage
    from harvest.cost.report import cost_lines, usd
    from harvest.db.engine import utcnow
    from harvest.db.ledger import costs_since, run_cost

    if run_id is not None:
        if since is not None or url is not None:
            fail("give a run id, or --since/--url to select runs, not both")
        engine = checked_engine()
        row = _row(engine, run_id)
        cost = run_cost(engine, run_id)
        if as_json:
            output.emit_json({"run_id": run_id, "status": row["status"], **cost})
            return
        output.line(f"run {run_id}: {row['status']}")
        for text in cost_lines(cost):
            output.line(text)
        return
    start = utcnow() - timedelta(seconds=_duration_seconds(since, "--since")) if since else None
    runs = costs_since(checked_engine(), since=start, url=url)
    usage: dict[str, int] = {}
    for run in runs:
        add_usage(usage, run["usage"])
    total = round(sum(run["cost_usd"] for run in runs), 8)
    activities = sum(run["activities_processed"] or 0 for run in runs)
    if as_json:
        output.emit_json({"since": start, "url": url, "runs": runs, "cost_usd": total, "usage": usage,
                          "activities": activities})
        return

    def holds(run: dict[str, Any]) -> str:
        return ", ".join(f"{what} {usd(run[key])}" for what, key in (("held", "reserved_usd"),
                                                                     ("released", "released_usd")) if run[key])

    output.table(["run", "status", "started", "activities", "cost", "holds", "url"],
                 [(run["id"], run["status"], run["started_at"], run["activities_processed"] or 0, usd(run["cost_usd"]),
                   holds(run), run["url"]) for run in runs],
                 empty="no runs in that window", right=("activities", "cost"))
    output.line(f"{len(runs)} run(s), {activities:,} activities: {usd(total)}")


@runs_app.command("release-reservations")
def runs_release_reservations(run_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Release a finished run's open budget holds (calls that never reported back), recorded as released.

    Refused for a running run: its holds are for calls in flight. A run whose process died is reconciled (and
    its holds released) by `harvest sweep` or `harvest runs resume`."""
    from harvest.cost.report import usd
    from harvest.db.ledger import release_reservations
    from harvest.errors import HarvestError

    engine = checked_engine()
    _row(engine, run_id)
    try:
        released = release_reservations(engine, run_id)
    except HarvestError as exc:
        fail(str(exc))
    if as_json:
        output.emit_json({"run_id": run_id, "released_usd": round(sum(released.values()), 8),
                          "stages": {stage: round(value, 8) for stage, value in released.items()}})
        return
    if not released:
        output.line(f"run {run_id}: no open holds")
        return
    output.line(f"run {run_id}: released {usd(sum(released.values()))} held for calls that never reported back")
    output.table(["stage", "released"], [(stage, usd(value)) for stage, value in released.items()], empty="",
                 right=("released",))


@runs_app.command("files")
def runs_files(
    run_id: str,
    expires: str = typer.Option(
        "1h", help="Link lifetime for S3 presigned URLs: 3600, 15m, 1h, 7d (S3 allows up to 7d)."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List a run's files: kind, records, size, state and a download link (presigned for S3, a path locally)."""
    from harvest.db.runs import list_files
    from harvest.retention.policy import file_state

    seconds = int(_duration_seconds(expires, "--expires"))
    engine = checked_engine()
    run = _row(engine, run_id)
    store = checked_store()
    rows = []
    for item in list_files(engine, run_id):
        state = file_state(item, run)
        link = store.presign(store.key_for(item["uri"]), seconds) if state == "present" else None
        rows.append({**item, "state": state, "link": link, "link_expires_seconds": seconds if link else None})
    if as_json:
        output.emit_json(rows)
        return
    output.table(["file", "records", "bytes", "link"],
                 [(item["kind"], item["records"], item["bytes"], item["link"] or f"({item['state']})")
                  for item in rows],
                 empty=f"run {run_id} has no files", right=("records", "bytes"))


@runs_app.command("cleanup")
def runs_cleanup(
    run_id: str | None = typer.Argument(None, help="One run; or select many with --older-than."),
    older_than: str | None = typer.Option(None, help="Every finished, unpinned run older than this (e.g. 30d)."),
    status: Annotated[
        FinishedStatus | None, typer.Option(help="With --older-than: only runs with this status.")
    ] = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be deleted; delete nothing."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete finished runs' stored files (never the shared images, nor the digest the next run diffs against)."""
    from datetime import timedelta

    from harvest.retention.policy import cleanup_older_than, cleanup_run

    if run_id is None and older_than is None:
        fail("say which runs: a run id, or --older-than 30d for every finished, unpinned run older than that")
    if run_id is not None and older_than is not None:
        fail("give a run id or --older-than, not both")
    if status is not None and older_than is None:
        fail("--status selects among --older-than's runs: give --older-than too")
    engine = checked_engine()
    if older_than is not None:
        age = _duration_seconds(older_than, "--older-than")
        done = cleanup_older_than(engine, checked_store(), timedelta(seconds=age), status=status, dry_run=dry_run)
        if as_json:
            output.emit_json({"dry_run": dry_run, "runs": done})
            return
        for item in done:
            output.line(f"{'would clean' if dry_run else 'cleaned'} {item}")
        output.line(f"{'would clean' if dry_run else 'cleaned'} {len(done)} run(s)")
        return
    assert run_id is not None  # exactly one of the two was given (checked above)
    row = _row(engine, run_id)
    refusal = _cleanup_refusal(row)
    if refusal:
        fail(refusal)
    if row["retention"] not in ("pending", "kept", "cleanup_failed"):
        if as_json:
            output.emit_json({"run_id": run_id, "dry_run": dry_run, "deleted_objects": 0,
                              "retention": row["retention"]})
            return
        output.line(f"run {run_id}: nothing to clean, its files are already {row['retention']}")
        return
    if dry_run:
        if as_json:
            output.emit_json({"run_id": run_id, "dry_run": True, "would_clean": True})
            return
        output.line(f"would clean run {run_id}: delete its files (the digest stays for the next run's diff)")
        return
    deleted = cleanup_run(engine, checked_store(), run_id)
    if deleted is None:  # it changed in between (a run pinned, an import started): say what it is now
        fail(_cleanup_refusal(_row(engine, run_id)) or f"run {run_id}: not cleaned, try again")
    if as_json:
        output.emit_json({"run_id": run_id, "dry_run": False, "deleted_objects": deleted, "retention": "cleaned"})
        return
    output.line(f"run {run_id}: deleted {deleted} objects")


def _cleanup_refusal(row: dict[str, Any]) -> str | None:
    """Why `runs cleanup` of this run is refused, or None."""
    from harvest.db.engine import utcnow

    run_id = row["id"]
    if row["status"] == "running":
        return f"run {run_id} is still running; refusing to delete its files"
    if row["pinned"]:
        return f"run {run_id} is pinned, so its files are kept: `harvest runs unpin {run_id}` first"
    lease = row.get("lease_until")
    if lease is not None and lease > utcnow():
        return f"run {run_id} is being imported; clean it up once the import is done"
    return None


def _pin(run_id: str, pinned: bool, as_json: bool) -> None:
    from harvest.retention.queries import set_pinned

    if not set_pinned(checked_engine(), run_id, pinned):
        fail(f"no run {run_id}: `harvest runs list` shows the runs this database knows")
    if as_json:
        output.emit_json({"run_id": run_id, "pinned": pinned})
        return
    output.line(f"run {run_id} {'pinned: the sweep leaves its files alone' if pinned else 'unpinned'}")


@runs_app.command("pin")
def runs_pin(run_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Exempt a run's files from the retention sweep."""
    _pin(run_id, True, as_json)


@runs_app.command("unpin")
def runs_unpin(run_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Let the retention sweep delete a run's files again once they expire."""
    _pin(run_id, False, as_json)


@runs_app.command("import")
def runs_import(
    run_id: str,
    cleanup: bool = typer.Option(False, "--cleanup", help="Delete the run's files after an import without failures."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Import a kept run's final JSONL into activities (same dedupe as auto-import; twice is harmless)."""
    from harvest.db.runs import files_view

    engine = checked_engine()
    row = _row(engine, run_id)
    if row["status"] == "running":
        fail(f"run {run_id} is still running; import it once it has finished")
    if row["retention"] not in ("pending", "kept", "cleanup_failed"):
        fail(f"run {run_id} has nothing to import: its files are {row['retention']}")
    final = files_view(engine, run_id).get("final_jsonl")
    if final is None:
        fail(f"run {run_id} ({row['status']}) has no final JSONL to import; `harvest runs resume {run_id}` "
             "finishes a failed run first")
    store = checked_store()
    if store.head(store.key_for(final.uri)) is None:
        fail(f"run {run_id}: its final JSONL {final.uri} is gone from the storage")
    if as_json:
        route_logs_to_stderr()
    use_prefect()
    from flows.import_run import import_run

    summary = flow_result(run_flow(import_run, run_id=run_id, cleanup=cleanup, return_state=True),
                          f"import of run {run_id}")
    if as_json:
        output.emit_json(summary.model_dump(mode="json"))
        return
    output.line(f"run {run_id} imported: {output.import_summary(summary.model_dump())}")
    for error in summary.errors[:20]:
        output.line(f"  failed: {error}")


@runs_app.command("resume")
def runs_resume(run_id: str, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Run a failed, crashed or cancelled run again as the same flow run: finished steps are not repeated.

    A run still marked running whose process is gone (killed terminal, OOM, SIGKILL: its process, judged from
    here, is gone, or Prefect says its flow run is over) is reconciled first, so it can be resumed at once."""
    engine = checked_engine()
    row = _row(engine, run_id)
    if row["retention"] not in ("pending", "kept"):
        fail(f"run {run_id} cannot be resumed: its files are {row['retention']}")
    if row["status"] == "completed":
        fail(f"run {run_id} is completed; only failed, crashed or cancelled runs can be resumed")
    if row["status"] == "running" and _alive_here(row):
        fail(f"run {run_id} is still running (process {row['pid']} on this machine); only failed, crashed or "
             "cancelled runs can be resumed")
    checked_store()
    if row["status"] == "running":
        from flows.reconcile import reconcile_if_dead
        from harvest.db.runs import get_run
        from harvest.retention.policy import policy_from

        reconciled = run_flow(reconcile_if_dead, engine, policy_from(checked_settings()), run_id)
        row = get_run(engine, run_id) or row
        if reconciled:
            typer.echo(f"run {run_id} was left running by a process that is gone: marked {row['status']}", err=True)
        elif row["status"] == "running":
            fail(f"run {run_id} is running on {row.get('host')} (Prefect says so too); only failed, crashed or "
                 "cancelled runs can be resumed")
    if as_json:
        route_logs_to_stderr()
    from flows.resume import resume_flow_run

    state = run_flow(resume_flow_run, run_id)
    summary = flow_result(state, f"resumed run {run_id}", as_json=as_json, run_id=run_id).model_dump(mode="json")
    if as_json:
        output.emit_json(summary)
    else:
        print_summary(summary)


def _alive_here(row: dict[str, Any]) -> bool:
    """The row's process is alive, as far as it can be judged from here (harvest.liveness: the same kernel and pid
    namespace, and the very process, not a later one with its pid)."""
    from harvest.liveness import Verdict, judge

    return judge(row.get("process"), row.get("host"))[0] is Verdict.ALIVE


@runs_app.command("diff")
def runs_diff(
    old: str = typer.Argument(..., help="The earlier run."),
    new: str = typer.Argument(..., help="The later run."),
    limit: int = typer.Option(50, min=0, help="Changes to print (counts are always complete)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What changed between two runs: added, removed and changed activities (with the changed fields)."""
    from harvest.db.runs import comparable_file
    from harvest.diff.compare import DiffCounts, diff_lines, digest_lines, load_digest

    engine = checked_engine()
    sources = []
    for run_id in (old, new):
        _row(engine, run_id)
        source = comparable_file(engine, run_id)
        if source is None:
            fail(f"run {run_id} has neither a digest nor a final JSONL left to compare")
        sources.append(source)
    store = checked_store()
    counts = DiffCounts()
    changes: list[dict[str, Any]] = []
    for change in diff_lines(load_digest(digest_lines(store, sources[0])), digest_lines(store, sources[1]), counts):
        if len(changes) < limit:
            changes.append(change)
    if as_json:
        output.emit_json({"old": old, "new": new, "counts": counts.as_dict(), "changes": changes})
        return
    output.line(f"{old} → {new}: {output.diff_summary(counts.as_dict())}")
    output.table(["change", "activity", "name", "fields"],
                 [(change["change"], change["id"], change.get("name"), ", ".join(change.get("fields") or []))
                  for change in changes],
                 empty="no activity added, removed or changed")


