"""Postgres going away under a running flow (ephemeral Prefect API, moto S3, the demo site, the local API
stand-ins): the run survives a restart (connecting is retried for HARVEST_DB_RECONNECT_SECONDS), and an outage longer
than that fails it cleanly, with its final status written once the database is back and nothing lost (it
resumes to completion).

The restart test restarts the machine's PostgreSQL 15 cluster (`pg_ctlcluster 15 main restart`, about a
second): marked `pg_restart`, so `-m "not pg_restart"` leaves it out while other test sessions share the
server. The outage test refuses connections to this session's own database only (superuser `ALTER DATABASE
… ALLOW_CONNECTIONS false` + terminating its backends), so it disturbs nobody. Both run as root (they use
`runuser -u postgres`).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from tests.failures.support import (
    SMALL,
    activity_rows,
    all_runs,
    file_rows,
    in_embeddings_poll,
    run_row,
    s3_object,
    scrape,
    wait_for,
)


def _as_postgres(*command: str) -> str:
    """Run a command as the postgres OS user (peer auth on the socket: a superuser)."""
    prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _psql(sql: str) -> str:
    return _as_postgres("psql", "-XAtq", "-d", "postgres", "-c", sql)


def _start_in_thread(url: str, config: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(scrape(url, **config)))
    thread.start()
    return thread, outcome


@pytest.mark.pg_restart
def test_a_postgres_restart_during_enrichment_is_waited_out(harvest_env, demo_site, openai_server, monkeypatch) -> None:
    """The cluster is down exactly when the run must record its vectors: the run's connects fail and are retried
    (counted at the driver: `do_connect` fires for every attempt) until it is back, and nothing is lost."""
    import sqlalchemy as sa

    from harvest.db.engine import get_engine

    monkeypatch.setenv("HARVEST_DB_RECONNECT_SECONDS", "120")  # longer than the outage below, on any machine
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    attempts: list[float] = []  # every connect the driver is asked for
    connected: list[float] = []  # the ones that succeeded
    engine = get_engine(db_url)  # the engine the flow uses (one per URL per process)
    record_attempt = lambda *_: attempts.append(time.monotonic())  # noqa: E731
    record_success = lambda *_: connected.append(time.monotonic())  # noqa: E731
    sa.event.listen(engine, "do_connect", record_attempt)
    sa.event.listen(engine, "connect", record_success)
    openai_server.configure(polls_until_complete=1_000_000)  # the run waits in its embeddings poll
    thread, outcome = _start_in_thread(demo_site.base_url + "/", {**SMALL, "auto_import": True})
    try:
        row = wait_for(in_embeddings_poll(db_url, openai_server), 180, "the run to sit in its embeddings poll")
        before = _psql("SELECT pg_postmaster_start_time()")
        _as_postgres("pg_ctlcluster", "15", "main", "stop", "-m", "fast")
        stopped = time.monotonic()
        openai_server.configure(polls_until_complete=1)  # the batch completes: the run must now write
        wait_for(lambda: len([t for t in attempts if t > stopped]) >= 2, 120, "two connects while the server is down")
        _as_postgres("pg_ctlcluster", "15", "main", "start")
        back = time.monotonic()
        assert _psql("SELECT pg_postmaster_start_time()") != before, "the server really restarted"
    finally:
        if not _cluster_up():  # the test failed while the server was down: never leave it stopped
            _as_postgres("pg_ctlcluster", "15", "main", "start")
        openai_server.configure(polls_until_complete=1)
        thread.join(300)
        sa.event.remove(engine, "do_connect", record_attempt)
        sa.event.remove(engine, "connect", record_success)
    tried = [t for t in attempts if t > stopped]
    succeeded = [t for t in connected if t > stopped]
    print(f"{len(tried) - len(succeeded)} connects refused during the outage, {back - stopped:.1f}s down")
    assert len(tried) - len(succeeded) >= 2, "the run retried connecting while the server was down"
    assert succeeded, "and connected once it was back"

    [state] = outcome
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.run_id == row["id"]
    final = run_row(db_url, summary.run_id)
    assert (final["status"], final["retention"], final["error"]) == ("completed", "cleaned", None)
    assert {"embeddings", "merge", "final", "import"} <= set(final["steps"])
    rows = activity_rows(db_url)
    assert len(rows) == final["activities_processed"] == summary.import_summary.imported > 0
    assert all(r["embedding"] is not None for r in rows), "the vectors collected during the outage are all there"


def _cluster_up() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], timeout=30).returncode == 0


def test_postgres_unreachable_when_the_run_writes_fails_it_cleanly_and_it_resumes_once_back(
    harvest_env, s3, demo_site, openai_server, monkeypatch
) -> None:
    from flows.resume import resume_flow_run
    from harvest_cli import app

    # An outage longer than the reconnect window (20 s by default; 2 s here to keep the test short).
    monkeypatch.setenv("HARVEST_DB_RECONNECT_SECONDS", "2")

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    database = make_url(db_url).database
    openai_server.configure(polls_until_complete=1_000_000)
    thread, outcome = _start_in_thread(demo_site.base_url + "/", {**SMALL, "auto_import": True})
    try:
        row = wait_for(in_embeddings_poll(db_url, openai_server), 180, "the run to sit in its embeddings poll")
        run_id = row["id"]
        # This session's database goes away: new connections refused, open ones cut.
        _psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        _psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        openai_server.configure(polls_until_complete=1)  # the vectors arrive while the run cannot record them
        thread.join(300)
    finally:
        _psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        openai_server.configure(polls_until_complete=1)
        thread.join(300)

    [state] = outcome
    assert state.is_failed(), state
    error = str(state.result(raise_on_failure=False))
    assert type(state.result(raise_on_failure=False)).__name__ == "DatabaseError", error
    assert f'database "{database}" is not currently accepting connections' in error, error
    # Nothing could be written while the database was away: the row still says running…
    assert run_row(db_url, run_id)["status"] == "running"
    # …until the database is back and the sweep (nightly, or `harvest sweep`) reads Prefect's verdict.
    swept = CliRunner().invoke(app, ["sweep", "--json"])
    assert swept.exit_code == 0, swept.output
    failed = run_row(db_url, run_id)
    assert (failed["status"], failed["retention"]) == ("failed", "kept")
    assert "its Prefect flow run is FAILED" in failed["error"]
    files = file_rows(db_url, run_id)
    assert {"raw_activities", "standardized", "images_map", "geocoded_map", "embeddings_batch_input"} <= set(files)
    for item in files.values():  # every file written so far is recorded and still there
        assert len(s3_object(s3, item["uri"])) == item["bytes"]

    # Nothing lost: the run resumes from its stored steps, without crawling again, and imports everything once.
    pages = demo_site.total_requests()
    resumed = resume_flow_run(run_id)
    assert resumed.is_completed(), resumed.message
    assert demo_site.total_requests() == pages
    assert openai_server.stats()["batches.create"] == 1
    done = run_row(db_url, run_id)
    assert (done["status"], done["retention"]) == ("completed", "cleaned")
    rows = activity_rows(db_url)
    assert len(rows) == len({r["id"] for r in rows}) == done["activities_processed"] > 0
    assert all(r["embedding"] is not None for r in rows)
    assert len(all_runs(db_url)) == 1
