"""The run ledger (`run_ledger`): per run and stage, what was used, what it cost, what the budget holds.

Every change happens under a lock on the run's `scrape_runs` row, so concurrent chunks (and other
workers) reserving against one budget are serialized and never overspend it together.

A hold (`reserved_usd`) ends in one of two ways: its call reports back and is charged, or the run is found
dead (reconciled) or an operator releases it, and the hold moves to `released_usd`: it no longer counts
against the budget, and the record keeps it (the call may have been billed without telling us).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from harvest.cost.prices import Usage, add_usage
from harvest.db.engine import transaction, utcnow
from harvest.db.schema import run_ledger, scrape_runs
from harvest.errors import ConfigError, DatabaseError

# A cent's ten-thousandth: float sums of many tiny prices must not refuse a call that exactly fits.
EPSILON_USD = 1e-9


def _lock_run(connection: Connection, run_id: str) -> None:
    found = connection.execute(
        sa.select(scrape_runs.c.id).where(scrape_runs.c.id == run_id).with_for_update()
    ).first()
    if found is None:
        raise DatabaseError(f"run {run_id} has no row")


def _add(connection: Connection, run_id: str, stage: str, usage: Usage, cost_usd: float, reserved_usd: float) -> None:
    """Add to one (run, stage) row, creating it; the caller holds the run's lock."""
    row = connection.execute(
        sa.select(run_ledger).where(run_ledger.c.run_id == run_id, run_ledger.c.stage == stage)
    ).mappings().first()
    now = utcnow()
    if row is None:
        connection.execute(run_ledger.insert().values(
            run_id=run_id, stage=stage, usage=add_usage({}, usage), cost_usd=max(0.0, cost_usd),
            reserved_usd=max(0.0, reserved_usd), updated_at=now,
        ))
        return
    reserved = row["reserved_usd"] + reserved_usd
    # Settling more than is held: the rest was released while its call was still out (a batch collected by
    # the resumed run after an operator released its hold). It reported back after all, so it is no longer
    # a released hold.
    returned = max(0.0, -reserved)
    connection.execute(run_ledger.update().where(
        run_ledger.c.run_id == run_id, run_ledger.c.stage == stage
    ).values(
        usage=add_usage(dict(row["usage"] or {}), usage), cost_usd=row["cost_usd"] + cost_usd,
        reserved_usd=max(0.0, reserved), released_usd=max(0.0, row["released_usd"] - returned), updated_at=now,
    ))


def _committed(connection: Connection, run_id: str) -> float:
    """Spent + reserved for the whole run."""
    total = connection.execute(
        sa.select(sa.func.coalesce(sa.func.sum(run_ledger.c.cost_usd + run_ledger.c.reserved_usd), 0.0))
        .where(run_ledger.c.run_id == run_id)
    ).scalar()
    return float(total or 0.0)


class RunBook:
    """One run's ledger in the database: what harvest.cost.Meter reserves against and charges to."""

    def __init__(self, engine: Engine, run_id: str) -> None:
        self.engine = engine
        self.run_id = run_id

    def reserve(self, stage: str, usd: float, limit: float | None) -> bool:
        """Hold `usd` for `stage` unless spent + reserved + `usd` would pass `limit` (None: always)."""
        with transaction(self.engine) as connection:
            _lock_run(connection, self.run_id)
            if limit is not None and _committed(connection, self.run_id) + usd > limit + EPSILON_USD:
                return False
            _add(connection, self.run_id, stage, {}, 0.0, usd)
            return True

    def charge(self, stage: str, usage: Usage, cost_usd: float, release_usd: float = 0.0) -> None:
        """Add what a call used and cost, and release its reservation."""
        with transaction(self.engine) as connection:
            _lock_run(connection, self.run_id)
            _add(connection, self.run_id, stage, usage, cost_usd, -release_usd)

    def count(self, stage: str, usage: Usage) -> None:
        """Add free counters (pages, images, cache hits, bytes stored)."""
        if any(usage.values()):
            self.charge(stage, usage, 0.0)


def release_open_holds(connection: Connection, run_id: str, *, keep: Collection[str] = ()) -> dict[str, float]:
    """Move the run's open holds (in every stage but `keep`) to `released_usd`; stage → USD released.

    For a run whose process is gone: the calls those holds were for will never report back, so they stop
    counting against the budget (a resumed run may spend it again), and stay on record as released. The
    caller holds the run's row lock, in the transaction that decided the run is not running.
    """
    held = connection.execute(
        sa.select(run_ledger.c.stage, run_ledger.c.reserved_usd)
        .where(run_ledger.c.run_id == run_id, run_ledger.c.reserved_usd > EPSILON_USD)
    ).all()
    released: dict[str, float] = {}
    now = utcnow()
    for stage, usd in held:
        if stage in keep:
            continue
        connection.execute(run_ledger.update().where(
            run_ledger.c.run_id == run_id, run_ledger.c.stage == stage
        ).values(reserved_usd=0.0, released_usd=run_ledger.c.released_usd + usd, updated_at=now))
        released[stage] = float(usd)
    return released


def release_reservations(engine: Engine, run_id: str) -> dict[str, float]:
    """Release every open hold of a run that is not running (`harvest runs release-reservations`); stage →
    USD released. A running run's holds are its live calls': ConfigError, as for an unknown run."""
    with transaction(engine) as connection:
        status = connection.execute(
            sa.select(scrape_runs.c.status).where(scrape_runs.c.id == run_id).with_for_update()
        ).scalar()
        if status is None:
            raise ConfigError(f"no run {run_id}")
        if status == "running":
            raise ConfigError(
                f"run {run_id} is running: its holds are for calls still in flight. If its process is gone, "
                f"`harvest sweep` or `harvest runs resume {run_id}` reconciles it, which releases them"
            )
        return release_open_holds(connection, run_id)


def run_cost(engine: Engine, run_id: str) -> dict[str, Any]:
    """The `cost` object of a run: per stage {usage, cost_usd, reserved_usd, released_usd} and the totals."""
    with transaction(engine) as connection:
        rows = connection.execute(
            sa.select(run_ledger).where(run_ledger.c.run_id == run_id).order_by(run_ledger.c.stage)
        ).mappings().all()
    return cost_object(rows)


def cost_object(rows: Any) -> dict[str, Any]:
    """{stages, usage, cost_usd, reserved_usd, released_usd} from ledger rows: reserved is what open holds
    count against the budget, released what holds of calls that never reported back were given back."""
    stages: dict[str, Any] = {}
    usage: dict[str, int] = {}
    for row in rows:
        stages[row["stage"]] = {"usage": dict(row["usage"] or {}), "cost_usd": round(row["cost_usd"], 8),
                                "reserved_usd": round(row["reserved_usd"], 8),
                                "released_usd": round(row["released_usd"], 8)}
        add_usage(usage, row["usage"] or {})
    return {
        "cost_usd": round(sum(s["cost_usd"] for s in stages.values()), 8),
        "reserved_usd": round(sum(s["reserved_usd"] for s in stages.values()), 8),
        "released_usd": round(sum(s["released_usd"] for s in stages.values()), 8),
        "usage": usage,
        "stages": stages,
    }


def costs_since(engine: Engine, *, since: datetime | None = None, url: str | None = None) -> list[dict[str, Any]]:
    """Per run (newest first): id, url, status, started_at, activities, cost_usd, reserved_usd, released_usd and
    usage, for runs started at or after `since` and of `url` when given."""
    query = sa.select(
        scrape_runs.c.id, scrape_runs.c.url, scrape_runs.c.status, scrape_runs.c.started_at,
        scrape_runs.c.activities_processed,
    ).order_by(scrape_runs.c.started_at.desc())
    if since is not None:
        query = query.where(scrape_runs.c.started_at >= since)
    if url:
        query = query.where(scrape_runs.c.url == url)
    with transaction(engine) as connection:
        runs = [dict(row) for row in connection.execute(query).mappings()]
        ids = [run["id"] for run in runs]
        ledgers: dict[str, list[Any]] = {}
        if ids:
            for row in connection.execute(sa.select(run_ledger).where(run_ledger.c.run_id.in_(ids))).mappings():
                ledgers.setdefault(row["run_id"], []).append(row)
    for run in runs:
        cost = cost_object(ledgers.get(run["id"], []))
        run.update(cost_usd=cost["cost_usd"], reserved_usd=cost["reserved_usd"], released_usd=cost["released_usd"],
                   usage=cost["usage"])
    return runs


def chat_output_ratio(engine: Engine, *, min_input_tokens: int = 10_000) -> float | None:
    """Output tokens per input token of the extraction calls this deployment has paid for, or None with too
    little history (fewer than `min_input_tokens` input tokens) to trust."""
    with transaction(engine) as connection:
        rows = connection.execute(sa.select(run_ledger.c.usage).where(run_ledger.c.stage == "crawl")).scalars().all()
    sent = sum(int((usage or {}).get("chat_input_tokens", 0)) for usage in rows)
    answered = sum(int((usage or {}).get("chat_output_tokens", 0)) for usage in rows)
    return answered / sent if sent >= min_input_tokens else None
