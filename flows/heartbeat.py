"""A running run's own heartbeat: its row's `updated_at` is touched while the flow's process lives.

Where a run's process cannot be judged (another machine, another container: harvest/liveness.py) and Prefect
cannot say either (its flow run was on a temporary API that died with it, or no zombie automation is registered),
the sweep declares it dead after a grace period without a sign of life (harvest.retention.policy.dead_run_status);
a run that waits hours on an embeddings batch writes nothing meanwhile, so this is that sign. Prefect's own
flow-run heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY) feed the zombie automation on a server
(blocks/automations.py). It stops by itself once the row is no longer running in this process.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

from harvest.db import runs as run_rows

logger = logging.getLogger("harvest.heartbeat")


def start_heartbeat(engine: Engine, run_id: str, every_seconds: float) -> threading.Thread:
    """Beat every `every_seconds` on a daemon thread (it dies with the process, as a heartbeat should)."""

    def beat() -> None:
        stop = threading.Event()
        while not stop.wait(every_seconds):
            try:
                if not run_rows.heartbeat(engine, run_id):
                    return
            except Exception as exc:  # noqa: BLE001 - a database blip skips one beat, never the run
                logger.warning("run %s: heartbeat failed: %s", run_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    return thread


def heartbeat_interval(grace_hours: float) -> float:
    """Six beats per grace period, at most every five minutes."""
    return min(300.0, grace_hours * 3600 / 6)
