"""The `settle-run` flow: settle a scrape run Prefect marked Crashed when nothing else could.

A run whose process died with its worker (a lost machine, an evicted container, a worker killed with it) reports
nothing: Prefect's zombie automation marks its flow run Crashed once its heartbeats stop, but the flow's
`on_crashed` hook runs in the run's own process or its worker, and both are gone. The `harvest: settle crashed
runs` automation (blocks/automations.py) therefore runs this flow, deployed as `settle-run/crashed`, with the
crashed flow run's id; it runs that hook (flows/reconcile.py::settle_crashed_run). The hook's lines are attached to
the crashed flow run, and this run's own line says what it did.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.reconcile import settle_crashed_run


@flow(name="settle-run", description="Run the on_crashed hook of a scrape-website flow run Prefect marked Crashed "
      "after its process vanished (started by the `harvest: settle crashed runs` automation).")
def settle_run(flow_run_id: str) -> str:
    """Settle flow run `flow_run_id`'s run row; returns what was done."""
    outcome = settle_crashed_run(flow_run_id)
    get_run_logger().info("flow run %s: %s", flow_run_id, outcome)
    return outcome
