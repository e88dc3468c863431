"""Two sweeps at once, made to overlap for certain (tests/unit/retention/test_retention.py's two-thread race passes
as well when the threads happen to run one after the other).

A sweep that is still working holds its runs' rows locked; here a transaction holds exactly that lock on
half the due runs while a sweep runs. The sweep must leave those runs alone (SKIP LOCKED: neither wait for
them nor touch their files) and handle the rest; once the lock is gone, the next sweep takes the others.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from harvest.db.schema import scrape_runs
from harvest.retention.policy import sweep
from tests.unit.retention.test_retention import NOW, POLICY, keys, make_run, never_heard_of, row


def test_a_sweep_skips_the_runs_another_sweep_holds_and_the_next_one_takes_them(engine, store) -> None:
    ids = sorted(make_run(engine, store) for _ in range(6))
    held, free = ids[:3], ids[3:]
    later = NOW + timedelta(days=15)
    reports: list = []
    holder = engine.connect()
    transaction = holder.begin()
    try:
        holder.execute(sa.select(scrape_runs.c.id).where(scrape_runs.c.id.in_(held)).with_for_update())
        sweeper = threading.Thread(
            target=lambda: reports.append(sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=later))
        )
        sweeper.start()
        sweeper.join(30)  # generous: six runs take a few seconds
        blocked = sweeper.is_alive()  # a sweep that waits for held rows instead of skipping them
    finally:
        transaction.rollback()
        holder.close()
    sweeper.join(60)
    assert not blocked, "the sweep waited for rows another sweep holds"
    [first] = reports
    assert sorted(first.expired) == free and not first.errors
    for run_id in held:  # untouched: rows and files as they were
        assert row(engine, run_id)["retention"] == "kept" and keys(store, f"runs/{run_id}/")
    for run_id in free:
        assert row(engine, run_id)["retention"] == "expired" and keys(store, f"runs/{run_id}/") == []
    second = sweep(engine, store, POLICY, flow_run_state=never_heard_of, now=later)
    assert sorted(second.expired) == held
    assert keys(store, "runs/") == []
