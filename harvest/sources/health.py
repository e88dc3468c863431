"""Each source's health, and the alarm that marks it degraded.

A scraper breaks most often by yielding nothing: a redesign moves the activities and the run still completes. So a
source's run is judged against its previous completed run: a fall by more than HARVEST_SOURCE_DROP_ALARM of the
activities, or to 0, raises the drop alarm; HARVEST_SOURCE_FAILURE_ALARM failed (or crashed) runs in a row raise
the failure alarm. An alarm puts a warning on the run, marks the source `degraded` (the sweep then keeps its runs'
files: harvest.retention.queries) and is returned so the flow can send a Prefect event; the next healthy run
marks the source `ok` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from harvest.db import runs as run_rows
from harvest.db import sources as source_rows
from harvest.db.engine import transaction, utcnow
from harvest.db.ledger import cost_object
from harvest.db.schema import run_ledger, scrape_runs
from harvest.settings import HarvestSettings

FAILED = ("failed", "crashed")
FINISHED = ("completed", "failed", "crashed")  # a cancelled run says nothing about the site
RECENT_RUNS = 20  # runs per source read for its health: the failure streak and the cost per run


@dataclass(frozen=True)
class Judgement:
    """What a finished run says of its source: `alarm` (the warning's text) when it degrades it, `recovered` when
    it ends a degraded spell."""

    source: dict[str, Any]
    run_id: str
    kind: str | None = None  # "drop" | "failures"
    alarm: str | None = None
    activities: int | None = None
    previous: int | None = None
    recovered: bool = False


def _recent_runs(engine: Engine, urls: list[str], limit: int = RECENT_RUNS) -> dict[str, list[dict[str, Any]]]:
    """Each URL's latest `limit` runs (newest first), with their cost."""
    if not urls:
        return {}
    rank = sa.func.row_number().over(partition_by=scrape_runs.c.url, order_by=scrape_runs.c.started_at.desc())
    ranked = sa.select(
        scrape_runs.c.id, scrape_runs.c.url, scrape_runs.c.status, scrape_runs.c.started_at,
        scrape_runs.c.finished_at, scrape_runs.c.activities_processed, scrape_runs.c.error, rank.label("rank"),
    ).where(scrape_runs.c.url.in_(urls)).subquery()
    with transaction(engine) as connection:
        rows = [dict(row) for row in connection.execute(
            sa.select(ranked).where(ranked.c.rank <= limit).order_by(ranked.c.url, ranked.c.rank)).mappings()]
        ledgers: dict[str, list[Any]] = {}
        ids = [row["id"] for row in rows]
        if ids:
            for entry in connection.execute(sa.select(run_ledger).where(run_ledger.c.run_id.in_(ids))).mappings():
                ledgers.setdefault(entry["run_id"], []).append(entry)
    by_url: dict[str, list[dict[str, Any]]] = {}
    for run in rows:
        run["cost_usd"] = cost_object(ledgers.get(run["id"], []))["cost_usd"]
        by_url.setdefault(run["url"], []).append(run)
    return by_url


def judge_run(engine: Engine, run_id: str, settings: HarvestSettings) -> Judgement | None:
    """Judge a finished run of a source and record the outcome (a warning on the run, the source's health); None
    when the run's URL is no source or the run is not finished."""
    run = run_rows.get_run(engine, run_id)
    if run is None or run["status"] not in FINISHED:
        return None
    source = source_rows.source_for_url(engine, run["url"])
    if source is None:
        return None
    runs = [r for r in _recent_runs(engine, [run["url"]])[run["url"]] if r["started_at"] <= run["started_at"]]
    judgement = _judge(source, run, runs, settings)
    if judgement.alarm:
        run_rows.add_warnings(engine, run_id, [judgement.alarm])
        source_rows.set_health(engine, source["id"], source_rows.DEGRADED, judgement.alarm, run_id)
    elif judgement.recovered:
        source_rows.set_health(engine, source["id"], source_rows.OK, None, run_id)
    return judgement


def _judge(source: dict[str, Any], run: dict[str, Any], runs: list[dict[str, Any]],
           settings: HarvestSettings) -> Judgement:
    degraded = source["health"] == source_rows.DEGRADED
    if run["status"] in FAILED:
        finished = [r for r in runs if r["status"] in FINISHED]
        streak = 0
        for row in finished:
            if row["status"] not in FAILED:
                break
            streak += 1
        if streak >= settings.source_failure_alarm:
            alarm = (f"source {source['id']} alarm: {streak} failed runs in a row "
                     f"(HARVEST_SOURCE_FAILURE_ALARM {settings.source_failure_alarm}); last: {run.get('error') or '?'}")
            return Judgement(source, run["id"], "failures", alarm)
        return Judgement(source, run["id"])
    now = run["activities_processed"] or 0
    earlier = [r for r in runs if r["status"] == "completed" and r["id"] != run["id"]]
    previous = (earlier[0]["activities_processed"] or 0) if earlier else None
    if previous:  # a source that had activities before
        fell = (previous - now) / previous
        if now == 0 or fell > settings.source_drop_alarm:
            alarm = (f"source {source['id']} alarm: activities fell from {previous} to {now} ({-fell:+.0%}) against "
                     f"run {earlier[0]['id']} (HARVEST_SOURCE_DROP_ALARM {settings.source_drop_alarm:.0%}): the "
                     "site may have changed; its earlier runs' files are kept while it is degraded")
            return Judgement(source, run["id"], "drop", alarm, now, previous)
    return Judgement(source, run["id"], activities=now, previous=previous, recovered=degraded)


def fleet(engine: Engine, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every source with its health: last run (id, status, when), activities of its latest completed run and of
    the one before (and the change), when it last succeeded, its mean cost per finished run."""
    now = now or utcnow()
    sources = source_rows.list_sources(engine)
    recent = _recent_runs(engine, [source["url"] for source in sources])
    return [_health(source, recent.get(source["url"], []), now) for source in sources]


def _health(source: dict[str, Any], runs: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    last = runs[0] if runs else None
    completed = [r for r in runs if r["status"] == "completed"]
    activities = completed[0]["activities_processed"] if completed else None
    previous = completed[1]["activities_processed"] if len(completed) > 1 else None
    finished = [r for r in runs if r["status"] in FINISHED]
    success = completed[0]["finished_at"] if completed else None
    return {
        "id": source["id"], "url": source["url"], "config": source["config"], "health": source["health"],
        "health_reason": source["health_reason"], "schedule_slug": source["schedule_slug"],
        "deployment": source["deployment"],
        "last_run": ({"id": last["id"], "status": last["status"], "started_at": last["started_at"].isoformat(),
                      "finished_at": last["finished_at"].isoformat() if last["finished_at"] else None}
                     if last else None),
        "activities": activities, "previous_activities": previous,
        "change": (activities - previous) if activities is not None and previous is not None else None,
        "last_success_at": success.isoformat() if success else None,
        "seconds_since_success": round((now - success).total_seconds()) if success else None,
        "cost_per_run_usd": round(sum(r["cost_usd"] for r in finished) / len(finished), 6) if finished else None,
        "runs": len(runs),
    }


def costs(engine: Engine, since: datetime) -> list[dict[str, Any]]:
    """Per source: runs started since `since`, their activities and their cost, and the total."""
    sources = source_rows.list_sources(engine)
    urls = {source["url"]: source["id"] for source in sources}
    totals = {source["id"]: {"id": source["id"], "url": source["url"], "runs": 0, "activities": 0, "cost_usd": 0.0}
              for source in sources}
    with transaction(engine) as connection:
        rows = connection.execute(
            sa.select(scrape_runs.c.url, sa.func.count(sa.distinct(scrape_runs.c.id)),
                      sa.func.coalesce(sa.func.sum(scrape_runs.c.activities_processed), 0))
            .where(scrape_runs.c.url.in_(list(urls)), scrape_runs.c.started_at >= since)
            .group_by(scrape_runs.c.url)).all()
        spent = connection.execute(
            sa.select(scrape_runs.c.url, sa.func.coalesce(sa.func.sum(run_ledger.c.cost_usd), 0.0))
            .join(run_ledger, run_ledger.c.run_id == scrape_runs.c.id)
            .where(scrape_runs.c.url.in_(list(urls)), scrape_runs.c.started_at >= since)
            .group_by(scrape_runs.c.url)).all()
    for url, count, activities in rows:
        totals[urls[url]].update(runs=int(count), activities=int(activities))
    for url, cost in spent:
        totals[urls[url]]["cost_usd"] = round(float(cost), 8)
    return list(totals.values())
