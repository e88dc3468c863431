"""Ask Prefect what became of a run's flow run: the sweep's source of truth for runs left `running`."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.exceptions import ObjectNotFound
from sqlalchemy.engine import Engine

from harvest.db.engine import utcnow
from harvest.retention import RECONCILED_STATUS, RetentionPolicy, reconcile_run


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
    """Reconcile one `running` row now if its flow run is already over; True when it was."""
    state = flow_run_state(run_id)
    if state not in RECONCILED_STATUS:
        return False
    return reconcile_run(engine, policy, run_id, RECONCILED_STATUS[state], f"its Prefect flow run is {state}", utcnow())
