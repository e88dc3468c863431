"""A source's run, judged as it ends, and the fleet as one view: the database's health joined with Prefect's
schedules (blocks/schedules.py, the truth about cadence and pause).

When a run of a source ends, `after_source_run` judges it (harvest.sources.health): an alarm is a warning on the
run, the source marked degraded, and a Prefect event an automation can act on:

    event     harvest.source.degraded   (and harvest.source.recovered when a healthy run ends the spell)
    resource  harvest.source.<id>       (prefect.resource.name: the URL; harvest.alarm: drop | failures)
    related   the flow run (prefect.flow-run.<id>, role flow-run)

It then publishes the fleet summary, one table artifact (key `harvest-fleet`) that every source's run updates.
Neither ever fails a run: a problem is a logged warning.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from blocks.schedules import ScheduleView, schedules
from harvest.cost.report import usd
from harvest.errors import ConfigError
from harvest.settings import HarvestSettings
from harvest.sources.health import Judgement, fleet, judge_run

logger = logging.getLogger("harvest.sources")
FLEET_KEY = "harvest-fleet"
DEGRADED_EVENT = "harvest.source.degraded"
RECOVERED_EVENT = "harvest.source.recovered"


def fleet_view(engine: Engine, settings: HarvestSettings) -> list[dict[str, Any]]:
    """Every source: its health and its schedule as Prefect has it now. `status` is `degraded`, `paused`,
    `active`, or `no schedule` (deleted in Prefect; `harvest sources remove` removes the source too)."""
    rows = fleet(engine)
    by_deployment: dict[str, dict[str, ScheduleView]] = {}
    for row in rows:
        if row["deployment"] not in by_deployment:
            try:
                by_deployment[row["deployment"]] = schedules(row["deployment"])
            except ConfigError:  # the deployment is gone: its sources have no schedule
                by_deployment[row["deployment"]] = {}
        view = by_deployment[row["deployment"]].get(row["schedule_slug"])
        schedule = "missing" if view is None else ("active" if view.active else "paused")
        # The schedule's parameters are what its runs get (edited in the UI, say). Prefect 3.9 wipes them when a
        # schedule is updated without them (blocks.schedules.set_active): then the source's own are shown, flagged.
        row["parameters_ok"] = view is None or view.parameters.get("url") == row["url"]
        if view is not None and row["parameters_ok"]:
            row["config"] = dict(view.parameters.get("config") or {})
        row.update(
            schedule=schedule, cadence=view.cadence if view else None, next_run=view.next_run if view else None,
            status="degraded" if row["health"] == "degraded" else ("no schedule" if view is None else schedule),
        )
    return rows


def _emit(judgement: Judgement) -> None:
    from prefect.events import emit_event

    source = judgement.source
    emit_event(
        event=DEGRADED_EVENT if judgement.alarm else RECOVERED_EVENT,
        resource={"prefect.resource.id": f"harvest.source.{source['id']}", "prefect.resource.name": source["url"],
                  "harvest.alarm": judgement.kind or "none"},
        related=[{"prefect.resource.id": f"prefect.flow-run.{judgement.run_id}", "prefect.resource.role": "flow-run"}],
        payload={"source_id": source["id"], "url": source["url"], "run_id": judgement.run_id,
                 "alarm": judgement.alarm, "activities": judgement.activities, "previous": judgement.previous},
    )


def after_source_run(engine: Engine, settings: HarvestSettings, run_id: str) -> Judgement | None:
    """Judge a finished run of a source (nothing when its URL is no source), send the event, update the fleet
    artifact. Never raises."""
    try:
        judgement = judge_run(engine, run_id, settings)
    except Exception as exc:  # noqa: BLE001 - health is a report on the run, never its failure
        logger.warning("run %s: its source's health was not judged: %s", run_id, exc)
        return None
    if judgement is None:
        return None
    if judgement.alarm:
        logger.warning("%s", judgement.alarm)
    try:
        if judgement.alarm or judgement.recovered:
            _emit(judgement)
        publish_fleet(engine, settings)
    except Exception as exc:  # noqa: BLE001
        logger.warning("run %s: source event or fleet artifact not published: %s", run_id, exc)
    return judgement


def fleet_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fleet as table rows (the artifact's, and `harvest sources list`'s)."""
    return [{
        "id": row["id"], "url": row["url"], "status": row["status"], "cadence": row.get("cadence") or "-",
        "last run": (row["last_run"] or {}).get("status") or "-",
        "activities": "-" if row["activities"] is None else row["activities"],
        "change": "-" if row["change"] is None else f"{row['change']:+d}",
        "cost/run": "-" if row["cost_per_run_usd"] is None else usd(row["cost_per_run_usd"]),
        "next run": _when(row.get("next_run")),
    } for row in rows]


def _when(next_run: str | None) -> str:
    """'2026-12-08 03:00', and '(late)' for a planned run no worker has started (Prefect calls it Late)."""
    if not next_run:
        return "-"
    late = datetime.fromisoformat(next_run) < datetime.now(UTC)
    return next_run[:16].replace("T", " ") + (" (late)" if late else "")


def publish_fleet(engine: Engine, settings: HarvestSettings) -> None:
    """The fleet summary as one table artifact, `harvest-fleet` (its history: one version per source run)."""
    from prefect.artifacts import create_table_artifact

    rows = fleet_view(engine, settings)
    degraded = sum(1 for row in rows if row["status"] == "degraded")
    create_table_artifact(fleet_table(rows), key=FLEET_KEY,
                          description=f"harvest sources: {len(rows)}, degraded {degraded} (`harvest sources list`)")
