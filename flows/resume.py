"""Resume a run: run the same Prefect flow run again, so every step whose result is stored is loaded,
not executed (task results are keyed by run id), and only unfinished steps run."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.flow_engine import run_flow
from prefect.states import Scheduled


def resume_flow_run(flow_run_id: str | UUID) -> Any:
    """Re-run flow run `flow_run_id` in this process with its original parameters; returns its final state."""
    from flows.scrape import scrape_website

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(str(flow_run_id)))
        # A terminal run must be moved back to Scheduled before the engine may run it again (what
        # `prefect flow-run retry` does through a server).
        client.set_flow_run_state(flow_run.id, Scheduled(name="AwaitingRetry"), force=True)
        flow_run = client.read_flow_run(flow_run.id)
    return run_flow(scrape_website, flow_run=flow_run, parameters=dict(flow_run.parameters), return_type="state")
