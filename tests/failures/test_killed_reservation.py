"""Issue 14's leftover: a budget hold made by a process that is then SIGKILLed (a real subprocess) is released
when the run is reconciled as dead, recorded as released, and the resumed run can spend its whole budget again;
`harvest runs release-reservations` does the same for a run that is not running and refuses a running one; and
`harvest runs cost ID` shows what is held and what was released. On a real SQLite file (the embedded default)
and on Postgres."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harvest.cost import Counter, Meter
from harvest.db import runs
from harvest.db.engine import utcnow
from harvest.db.ledger import RunBook, run_cost
from harvest.retention.policy import RetentionPolicy, reconcile_run, sweep
from tests.helpers import CliOutcome, run_cli

DATABASES = ["sqlite", "postgres"]  # every test taking `engine` runs on both (tests/conftest.py)

HARVEST = str(Path(sys.executable).parent / "harvest")
URL = "https://example.org/"
BUDGET = 0.02  # four Google geocode requests at the default $5 per 1,000
ONE_REQUEST = {Counter.geocode_requests_google: 1}

# A run's process: it pays for one request, holds the price of a second one (the call is "in flight") and is
# killed there, as a worker SIGKILLed mid-call would be.
HOLDER = f"""
import sys, time
from harvest.cost import Counter, Meter
from harvest.db import runs
from harvest.db.engine import get_engine
from harvest.db.ledger import RunBook

engine = get_engine(sys.argv[1])
runs.create_run(engine, sys.argv[2], {URL!r}, {{"max_cost_usd": {BUDGET}}})
meter = Meter("geocode", limit={BUDGET}, book=RunBook(engine, sys.argv[2]))
one = {{Counter.geocode_requests_google: 1}}
meter.charge(one, meter.reserve(one, "paid"))
assert meter.reserve(one, "in flight") is not None
print("held", flush=True)
time.sleep(600)
"""


def _url(engine) -> str:  # noqa: ANN001
    return engine.url.render_as_string(hide_password=False)


def _killed_while_holding(engine, run_id: str) -> int:  # noqa: ANN001
    """Run HOLDER in a subprocess until it holds, SIGKILL it; its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, _url(engine), run_id], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        if line.strip() != "held":
            holder.kill()
            raise AssertionError(f"the holder did not hold: {holder.communicate(timeout=30)[1][-3000:]}")
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(10) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=30)
    return holder.pid


def test_a_hold_left_by_a_killed_process_is_released_when_the_run_is_reconciled(engine, store) -> None:  # noqa: ANN001
    run_id = "run-killed-mid-call"
    pid = _killed_while_holding(engine, run_id)
    assert runs.get_run(engine, run_id)["status"] == "running", "nothing could record the kill"
    stuck = Meter("geocode", limit=BUDGET, book=RunBook(engine, run_id))
    assert stuck.reserve({Counter.geocode_requests_google: 3}, "the rest") is None, "the dead call's hold counts"

    report = sweep(engine, store, RetentionPolicy(), flow_run_state=lambda _: None)

    assert report.reconciled == [
        {"run_id": run_id, "status": "crashed", "reason": f"its process {pid} on {socket.gethostname()} is gone"}]
    assert runs.get_run(engine, run_id)["status"] == "crashed"
    cost = run_cost(engine, run_id)
    assert cost["cost_usd"] == pytest.approx(0.005), "what was paid stays spent"
    assert cost["reserved_usd"] == 0, cost
    assert cost["released_usd"] == pytest.approx(0.005), "the hold is on record as released, not lost"
    assert cost["stages"]["geocode"]["released_usd"] == pytest.approx(0.005)

    # The run is resumed (the same run id starts again) and may spend all of its budget that was not spent.
    runs.create_run(engine, run_id, URL, {"max_cost_usd": BUDGET})
    resumed = Meter("geocode", limit=BUDGET, book=RunBook(engine, run_id))
    rest = resumed.reserve({Counter.geocode_requests_google: 3}, "the rest")
    assert rest is not None, "the released hold no longer counts against the budget"
    resumed.charge({Counter.geocode_requests_google: 3}, rest)
    assert resumed.reserve(ONE_REQUEST, "one more") is None, "and the budget still holds"
    cost = run_cost(engine, run_id)
    assert (cost["cost_usd"], cost["reserved_usd"]) == (pytest.approx(BUDGET), 0)
    assert cost["released_usd"] == pytest.approx(0.005)


def test_a_submitted_batch_keeps_its_hold_until_the_resumed_run_collects_it(engine) -> None:  # noqa: ANN001
    from harvest.db.ledger import release_reservations

    run_id = "run-killed-in-batch-poll"
    runs.create_run(engine, run_id, URL, {})
    book = RunBook(engine, run_id)
    assert book.reserve("crawl", 0.001, None) and book.reserve("embeddings", 0.004, None)
    runs.record_step(engine, run_id, "embeddings_submit", {"details": {"batch_id": "batch_abc"}})

    assert reconcile_run(engine, RetentionPolicy(), run_id, "crashed", "its process is gone", utcnow())

    stages = run_cost(engine, run_id)["stages"]
    assert (stages["crawl"]["reserved_usd"], stages["crawl"]["released_usd"]) == (0, pytest.approx(0.001))
    assert (stages["embeddings"]["reserved_usd"], stages["embeddings"]["released_usd"]) == (pytest.approx(0.004), 0), \
        "OpenAI runs the batch anyway and the resumed run charges it against this hold"

    # An operator releases it anyway; then the resumed run collects the batch after all.
    assert release_reservations(engine, run_id) == {"embeddings": pytest.approx(0.004)}
    book.charge("embeddings", {Counter.batch_tokens: 100}, 0.003, release_usd=0.004)
    cost = run_cost(engine, run_id)
    embeddings = cost["stages"]["embeddings"]
    assert (embeddings["cost_usd"], embeddings["reserved_usd"], embeddings["released_usd"]) == (
        pytest.approx(0.003), 0, 0), "a hold whose call reported back is settled, not released"
    assert cost["released_usd"] == pytest.approx(0.001)


def _harvest(args: list[str], engine, tmp_path: Path) -> CliOutcome:  # noqa: ANN001
    """`harvest ARGS` in this process: what these commands print and return is the point, not a process."""
    return run_cli(args, {"HARVEST_DATABASE_URL": _url(engine), "HARVEST_HOME": str(tmp_path / "home")})


def test_the_release_command_refuses_a_running_run_and_the_cost_command_shows_what_was_released(
    engine, tmp_path  # noqa: ANN001
) -> None:
    import json

    run_id = "run-left-holding"
    runs.create_run(engine, run_id, URL, {})
    book = RunBook(engine, run_id)
    book.charge("crawl", {Counter.chat_requests: 1}, 0.002)
    assert book.reserve("crawl", 0.003, None)

    refused = _harvest(["runs", "release-reservations", run_id], engine, tmp_path)
    assert refused.returncode == 2 and f"error: run {run_id} is running" in refused.stderr, refused.stderr[-3000:]
    held = _harvest(["runs", "cost", run_id], engine, tmp_path)
    assert held.returncode == 0, held.stderr[-3000:]
    assert "estimated cost $0.002000 (+$0.003000 held for unsettled calls)" in held.stdout
    assert "[held $0.003000]" in held.stdout and "released" not in held.stdout

    runs.finish_run(engine, run_id, "failed", retention="kept", error="its import failed")
    done = _harvest(["runs", "release-reservations", run_id], engine, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run {run_id}: released $0.003000 held for calls that never reported back" in done.stdout
    again = _harvest(["runs", "release-reservations", run_id], engine, tmp_path)
    assert again.stdout.strip() == f"run {run_id}: no open holds"

    shown = _harvest(["runs", "cost", run_id], engine, tmp_path).stdout
    assert "estimated cost $0.002000\n" in shown and "released $0.003000 held for calls that never reported back" in shown
    assert "[released $0.003000]" in shown
    document = json.loads(_harvest(["runs", "cost", run_id, "--json"], engine, tmp_path).stdout)
    assert (document["status"], document["cost_usd"], document["reserved_usd"], document["released_usd"]) == (
        "failed", pytest.approx(0.002), 0, pytest.approx(0.003))
    listed = json.loads(_harvest(["runs", "cost", "--json"], engine, tmp_path).stdout)
    assert [(run["id"], run["released_usd"]) for run in listed["runs"]] == [(run_id, pytest.approx(0.003))]
    assert "released $0.003000" in _harvest(["runs", "cost"], engine, tmp_path).stdout
