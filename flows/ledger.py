"""The run ledger from the flow's side: a meter per stage bound to the run's budget, and each finished step's
free counters written down. The run's budget is read from its own row (the config it started with), so a
resumed run keeps both its limit and what it has spent."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from harvest.cost import Meter
from harvest.db import runs as run_rows
from harvest.db.ledger import RunBook
from harvest.pipeline import StageResult
from harvest.settings import HarvestSettings
from harvest.steps import free_counters, ledger_stage


def run_budget(engine: Engine, run_id: str, settings: HarvestSettings) -> float | None:
    """The run's max_cost_usd: its config's, else the deployment default (HARVEST_MAX_COST_USD), else None."""
    row = run_rows.get_run(engine, run_id) or {}
    configured = (row.get("config") or {}).get("max_cost_usd")
    return float(configured) if configured is not None else settings.max_cost_usd


def meter_for(engine: Engine, settings: HarvestSettings, run_id: str, stage: str) -> Meter:
    """A meter for `stage` of the run, charging the run's ledger within its budget."""
    return Meter(stage, prices=settings.prices(), limit=run_budget(engine, run_id, settings),
                 book=RunBook(engine, run_id))


def count_step(engine: Engine, run_id: str, step: str, result: StageResult) -> None:
    """Write a finished step's free counters (pages, images, cache hits, bytes stored) into the ledger."""
    RunBook(engine, run_id).count(
        ledger_stage(step), free_counters(step, result.stats.items_out, result.stats.details, result.files)
    )
