"""Runs left `running` by a process that is gone: ask Prefect what became of their flow runs, judge their processes
(harvest.liveness), and settle them (the sweep, a new start of the URL, `harvest runs resume`, the settle-run flow
the `harvest: settle crashed runs` automation starts)."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed
from sqlalchemy.engine import Engine

from harvest.db.engine import utcnow
from harvest.db.runs import get_run
from harvest.liveness import Verdict, judge
from harvest.retention.policy import RetentionPolicy, dead_run_status, reconcile_run


def flow_run_state(run_id: str) -> str | None:
    """The flow run's state type ('RUNNING', 'CRASHED', …), or None when the API has no such flow run."""
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        return None  # not a Prefect id (a row written by another tool): only the staleness rule applies
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return None
    return flow_run.state.type.value if flow_run.state else None


def reconcile_if_dead(engine: Engine, policy: RetentionPolicy, run_id: str) -> bool:
    """Reconcile one `running` row now if its run is in fact over; True when it was.

    Over means what the sweep means (harvest.retention.policy.dead_run_status): Prefect says its flow run ended;
    or its process, where it can be judged from here, is gone (a killed `harvest scrape`, whose own temporary
    Prefect API died with it and so can never say so); or, elsewhere, its heartbeat stopped a grace period ago.
    """
    row = get_run(engine, run_id)
    if row is None or row["status"] != "running":
        return False
    now = utcnow()
    decided = dead_run_status(row.get("process"), row["updated_at"], row.get("host"), policy, now,
                              lambda: flow_run_state(run_id))
    if decided is None:
        return False
    status, why = decided
    done = reconcile_run(engine, policy, run_id, status, why, now)
    if done and status == "crashed":
        crash_flow_run(run_id, why)
    return done


def crash_flow_run(run_id: str, why: str) -> bool:
    """Tell Prefect a flow run whose process is known dead has crashed; True when its state was changed.

    A worker that dies with its flow run (SIGKILL, OOM, a lost machine) leaves the flow run RUNNING in Prefect
    for ever: nothing is left to report. Crashed is terminal, so `prefect flow-run retry` (any worker of the
    pool then picks the run up) and `harvest runs resume` accept it, and the sweep stops asking.
    """
    state = flow_run_state(run_id)
    if state not in ("RUNNING", "PENDING", "CANCELLING"):  # over already, or scheduled again (a retry)
        return False
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Crashed(message=f"harvest reconciled the run: {why}"), force=True)
    return True


def settle_crashed_run(flow_run_id: str) -> str:
    """Run scrape-website's `on_crashed` hook for a flow run Prefect says is Crashed while its row still says
    running (its process reported nothing: the zombie automation, or a worker lost with it, marked it); what was
    done, in words.

    Nothing is done for a flow run that is no longer Crashed (retried meanwhile), a row that is settled already
    (its worker ran the hook), or a process this one can judge and sees alive (a false alarm: heartbeats that did
    not reach the server while the run went on; the run records its own end, or the sweep settles it later).
    """
    from flows.hooks import on_crashed
    from flows.resources import resources
    from flows.scrape import scrape_website

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(flow_run_id))
    state = flow_run.state
    if state is None or not state.is_crashed():
        return f"nothing to settle: its flow run is {state.type.value if state else 'without a state'}"
    row = get_run(resources().engine, flow_run_id)
    if row is None:
        return "nothing to settle: the flow run has no run row (it stopped before it started one)"
    if row["status"] != "running":
        return f"nothing to settle: the run is {row['status']} already"
    verdict, why = judge(row.get("process"), row.get("host"))
    if verdict is Verdict.ALIVE:
        return f"left running: {why}, though Prefect says its flow run crashed"
    on_crashed(scrape_website, flow_run, state)
    settled = get_run(resources().engine, flow_run_id) or {}
    return f"settled by its on_crashed hook: the run is {settled.get('status')}, files {settled.get('retention')}"
