"""Sources' cadences as schedules of the scrape deployment in Prefect: the truth about when and whether a source runs.

Each source is one schedule of HARVEST_SOURCES_DEPLOYMENT (slug `harvest-source-…`, harvest.db.sources) whose
parameters are the source's `url` and `config`: the UI lists it under the deployment's schedules, pauses and resumes
it there, and "Run" with those parameters runs it ad hoc. `harvest sources list` reads the schedules back from
Prefect on every call (nothing is cached in the database), so a schedule paused in the UI shows as paused, and one
deleted there shows as `no schedule`: the CLI and the UI never disagree.

Prefect deletes a deployment's auto-scheduled runs when any of its schedules changes; its scheduler plans them again
within a minute. harvest asks for them at once after each change (`plan_runs`), so the next run shows now and a
source added to run soon is not missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from harvest.errors import ConfigError, SourceError
from harvest.sources.cadence import Cadence, describe

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

# A new interval source first runs this long after it is added (then every interval): soon, and late enough that
# the runs harvest plans right after adding it are still in the future.
FIRST_RUN_DELAY = timedelta(seconds=15)
PLANNED_RUNS = 3  # runs planned ahead per schedule when harvest asks (Prefect's scheduler plans its own as well)


@dataclass(frozen=True)
class ScheduleView:
    """A source's schedule as Prefect has it."""

    id: str
    slug: str
    active: bool
    cadence: str
    parameters: dict[str, Any]
    next_run: str | None  # ISO time of the next run, None when paused (or Prefect plans none)


def _client() -> SyncPrefectClient:
    from prefect.client.orchestration import get_client  # not `prefect`: its get_client imports flows and tasks too

    return get_client(sync_client=True)


def _deployment_id(client: SyncPrefectClient, deployment: str) -> tuple[UUID, bool]:
    """(id, paused) of the deployment named `flow/name`; a missing one is a ConfigError that says what to do."""
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise ConfigError(f"no deployment {deployment} on the Prefect API (HARVEST_SOURCES_DEPLOYMENT): deploy it "
                          "first with `prefect --no-prompt deploy --all`") from None
    return found.id, bool(found.paused)


def prefect_schedule(cadence: Cadence, now: datetime | None = None) -> Any:
    """The Prefect schedule of `cadence`; a cron expression Prefect refuses is a ConfigError saying why."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from pydantic import ValidationError

    if cadence.cron is not None:
        try:
            return CronSchedule(cron=cadence.cron, timezone=cadence.timezone)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid").removeprefix("Value error, ")
            raise ConfigError(f"--cron {cadence.cron!r} is not a valid cron expression: {reason}") from None
    anchor = ((now or datetime.now(UTC)) + FIRST_RUN_DELAY).replace(microsecond=0)  # a readable next run
    assert cadence.every is not None
    return IntervalSchedule(interval=cadence.every, anchor_date=anchor, timezone=cadence.timezone)


def _cadence_text(schedule: Any) -> str:
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return f"every {describe(interval)}"
    cron = getattr(schedule, "cron", None)
    if cron is not None:
        return f"cron {cron}" + (f" ({schedule.timezone})" if getattr(schedule, "timezone", None) else "")
    return "rrule"


def plan_runs(client: SyncPrefectClient, deployment_id: UUID) -> None:
    """Have Prefect plan the deployment's next runs now (what its scheduler does within a minute)."""
    client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id},
                   json={"max_runs": PLANNED_RUNS})


def add_schedule(deployment: str, slug: str, cadence: Cadence, parameters: dict[str, Any]) -> ScheduleView:
    """Add the source's schedule to the deployment, active, carrying `parameters` (url and config)."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    schedule = prefect_schedule(cadence)  # before any call: a bad cron never reaches the API
    with _client() as client:
        deployment_id, _ = _deployment_id(client, deployment)
        if any(s.slug == slug for s in client.read_deployment_schedules(deployment_id)):
            raise SourceError(f"deployment {deployment} has a schedule {slug} already (a source removed from the "
                              "database only?): delete it in the UI or `harvest sources remove`")
        client.create_deployment_schedules(deployment_id, [DeploymentScheduleCreate(
            schedule=schedule, active=True, parameters=parameters, slug=slug)])
        plan_runs(client, deployment_id)
    view = schedules(deployment).get(slug)
    assert view is not None
    return view


def _find(client: SyncPrefectClient, deployment: str, slug: str) -> tuple[UUID, Any | None]:
    deployment_id, _ = _deployment_id(client, deployment)
    found = next((s for s in client.read_deployment_schedules(deployment_id) if s.slug == slug), None)
    return deployment_id, found


def set_active(deployment: str, slug: str, active: bool, parameters: dict[str, Any]) -> bool:
    """Pause or resume the schedule; False when Prefect has no such schedule.

    The parameters are sent along: Prefect 3.9's server writes a schedule update's `parameters` even when the
    request leaves them out (its DeploymentScheduleUpdate defaults them to {}), so an update of `active` alone
    wipes the source's url and config. The schedule's own parameters are kept when they still name the source's
    URL (edited in the UI, say); otherwise the source's (`parameters`) are restored."""
    with _client() as client:
        deployment_id, found = _find(client, deployment, slug)
        if found is None:
            return False
        kept = dict(found.parameters) if found.parameters.get("url") == parameters.get("url") else parameters
        client.update_deployment_schedule(deployment_id, found.id, active=active, parameters=kept)
        plan_runs(client, deployment_id)  # Prefect dropped every planned run of the deployment: plan them again
    return True


def remove_schedule(deployment: str, slug: str) -> bool:
    """Delete the schedule (and so its planned runs); False when Prefect had none."""
    with _client() as client:
        deployment_id, found = _find(client, deployment, slug)
        if found is None:
            return False
        client.delete_deployment_schedule(deployment_id, found.id)
        plan_runs(client, deployment_id)
    return True


def schedules(deployment: str) -> dict[str, ScheduleView]:
    """Every harvest source schedule of the deployment by slug, with its next run (the earliest run Prefect has
    planned with its URL; else the schedule's next date). A paused deployment pauses them all."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with _client() as client:
        deployment_id, paused = _deployment_id(client, deployment)
        found = [s for s in client.read_deployment_schedules(deployment_id) if (s.slug or "").startswith("harvest-")]
        planned: dict[str, str] = {}
        if found:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200,
            )
            for run in runs:
                url = (run.parameters or {}).get("url")
                if url and url not in planned and run.expected_start_time is not None:
                    planned[url] = run.expected_start_time.astimezone(UTC).isoformat()
    views = {}
    for schedule in found:
        active = schedule.active and not paused
        url = str(schedule.parameters.get("url") or "")
        next_run = (planned.get(url) or _next_date(schedule.schedule)) if active else None
        views[schedule.slug or ""] = ScheduleView(
            id=str(schedule.id), slug=schedule.slug or "", active=active, cadence=_cadence_text(schedule.schedule),
            parameters=dict(schedule.parameters), next_run=next_run)
    return views


def _next_date(schedule: Any) -> str | None:
    """The schedule's next date after now, as Prefect's server computes it."""
    from prefect.server.schemas import schedules as server_schedules

    server: Any
    if hasattr(schedule, "interval"):
        server = server_schedules.IntervalSchedule.model_validate(schedule.model_dump())
    elif hasattr(schedule, "cron"):
        server = server_schedules.CronSchedule.model_validate(schedule.model_dump())
    else:
        return None
    dates = list(server._get_dates_generator(n=1))  # noqa: SLF001 - the sync body of the async get_dates
    return dates[0].astimezone(UTC).isoformat() if dates else None
