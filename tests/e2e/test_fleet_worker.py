"""`harvest sources worker` on the e2e stack's server (issue 32): the sources' scheduled flow runs of
scrape-website/fleet (pool harvest-sources) run in children forked from one warm worker process, each still a flow
run of its own; two fleet workers never run one flow run twice; a run cancelled through the API, or whose process
is SIGKILLed, ends Cancelled or Crashed with its run row settled; the worker forks from a single thread."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.fleet_sites import FleetServer, fleet_sites
from tests.cli_support import HARVEST
from tests.e2e.test_deployment import (
    PREFECT,
    SOURCES_POOL,
    Stack,
    _final_state,
    _parent,
    file_rows,
    run_row,
    settled_row,
    stop_worker,
    wait_for,
    worker_online,
)
from tests.e2e.test_sources_schedule import harvest, runs_of

pytestmark = pytest.mark.e2e

FLEET_DEPLOYMENT = "scrape-website/fleet"
SMALL = {"max_pages": 20, "max_depth": 2, "max_extractions": 20, "auto_import": True, "render": "http"}
# Libraries the warm worker imports, which a forked run must not import again (it would pay for them per source).
HEAVY = {"prefect", "prefect_aws", "prefect_dask", "dask", "boto3", "botocore", "openai", "lxml", "extruct", "rdflib",
         "playwright", "sqlalchemy", "psycopg", "alembic", "harvest", "flows", "blocks", "pydantic", "httpx"}
STARTED = re.compile(r"flow run ([0-9a-f-]{36}) \(.*\) in process (\d+)")


@pytest.fixture
def fleet_workers(stack: Stack, harvest_env: dict[str, str]) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes],
                                                                                              str]]]:
    """Start `harvest sources worker` processes (each: its process and its log's name) with the test's harvest
    environment; all stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
        name = f"fleet-{uuid.uuid4().hex[:8]}"
        process = stack.start(name, [HARVEST, "sources", "worker", "--name", name, "--poll", "0.5", *args],
                              {**os.environ, **stack.env, **harvest_env, **(env or {})})
        started.append(process)
        wait_for(lambda: worker_online(stack, name, SOURCES_POOL) or process.poll() is not None, 90,
                 f"fleet worker {name} to register")
        assert process.poll() is None, f"fleet worker exited:\n{stack.log_tail(name)}"
        return process, name

    yield start
    for process in started:
        stop_worker(process)


def _started_runs(stack: Stack, name: str) -> dict[str, int]:
    """Flow run id -> child pid, from a fleet worker's log."""
    return {match[0]: int(match[1]) for match in STARTED.findall(stack.log_tail(name, 10**7))}


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_a_source_runs_in_a_forked_child_of_the_fleet_worker(stack, fleet_workers, harvest_env, demo_site,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    """`harvest sources add` then the fleet worker: the scheduled flow run is a top-level run of scrape-website/fleet,
    run by a child of the worker (no plain worker serves the pool), completed, imported, its row settled. The child
    repeats none of the worker's set-up: it imports nothing heavy, builds no client the worker built, and runs the
    flow the worker loaded for the deployment (no load_flow, no pull step)."""
    profile = tmp_path / "profile"
    worker, name = fleet_workers("--limit", "2", env={"HARVEST_FLEET_PROFILE": str(profile)})
    env = {**os.environ, **stack.env, **harvest_env}
    url = demo_site.base_url + "/?from=fleet-worker"
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    source = harvest(env, "sources", "add", url, "--every", "1h", "--config", '{"max_pages": 20, "max_extractions": 5, '
                     '"auto_import": true}')
    try:
        assert source["deployment"] == FLEET_DEPLOYMENT
        # The first run is due ~15 s after `add`; the worker polls every 0.5 s.
        wait_for(lambda: [r for r in runs_of(db_url, url) if r["status"] != "running"], 300,
                 f"the scheduled run of {url} to finish\n{stack.log_tail(name)}")
        (run,) = runs_of(db_url, url)
        row = settled_row(db_url, run["id"])
        assert row is not None and row["status"] == "completed", (row, stack.log_tail(name))
        assert row["activities_processed"] > 0 and (row["import_summary"] or {}).get("imported", 0) > 0, row
        assert row["deployment_name"] == "fleet" and row["work_pool"] == SOURCES_POOL
        flow_run = stack.flow_run(run["id"])
        assert flow_run["auto_scheduled"] is True and flow_run["parameters"]["url"] == url
        assert flow_run["parent_task_run_id"] is None  # a top-level flow run: its own page in the UI
        assert flow_run["state"]["type"] == "COMPLETED"
        assert flow_run["work_pool_name"] == SOURCES_POOL
        # The run's process was a child the worker forked (and is gone), the pid the worker logged.
        assert _started_runs(stack, name).get(run["id"]) == row["pid"], stack.log_tail(name)
        assert row["pid"] != worker.pid
        # ... and leaves once its run has ended: it started the images enrichment's process pool, whose workers it
        # joins as it exits (it waited on them for ever, holding a worker slot, before the run shut the pool down).
        ended = f"flow run {run['id']} ended COMPLETED, its process exited with status 0"
        wait_for(lambda: ended in stack.log_tail(name, 10**7), 60, f"the run's process to exit\n{stack.log_tail(name)}")

        def run_logs() -> list[str]:
            """The run's log lines once its last ones arrived: the child sends them as it exits (Prefect drains its
            log worker then), which is after the run settled its row."""
            found = stack.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}},
                                                           "limit": 200})
            messages = [line["message"] for line in found]
            return messages if any("completed" in message for message in messages) else []

        messages = wait_for(run_logs, 60, "the run's own logs to reach the UI")
        assert any("loaded by the fleet worker" in message for message in messages), messages
        assert "loaded flows/scrape.py:scrape_website of deployment" in stack.log_tail(name, 10**7)
        # What the child did that the warm parent had not (flows/fleet_profile.py).
        report = profile / f"{run['id']}.json"  # written as the child ends, after its run settled
        wait_for(report.exists, 60, f"the child's profile {report}")
        child = json.loads(report.read_text())
        assert not set(child["imported_top_level"]) & HEAVY, child["imported_top_level"]
        assert len(child["imported_in_child"]) <= 20, child["imported_in_child"]
        assert child["cache_misses"]["blocks.storage._cached_store"] == 0, child["cache_misses"]
        assert child["cache_misses"].get("prefect_aws.credentials._get_client_cached", 0) == 0, child["cache_misses"]
        load_flow = next(phase for phase in child["phases"] if phase["phase"] == "load_flow")
        assert load_flow["wall_s"] < 0.5, child["phases"]  # the parent's flow object: no API read, no pull step
        # The worker forks from one thread: it never started Prefect's threads (it asserts so before each fork).
        assert _threads(worker.pid) == 1
        pool = stack.api("GET", f"/work_pools/{SOURCES_POOL}")
        assert pool["status"] == "READY"  # polled: the UI shows the pool ready
    finally:
        harvest(env, "sources", "remove", str(source["id"]))
    assert worker.poll() is None


def test_two_fleet_workers_claim_each_run_once(stack, fleet_workers, harvest_env) -> None:  # noqa: ANN001
    sites = fleet_sites(6, seed=7)
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    with FleetServer(sites) as server:
        deployment = stack.api("GET", f"/deployments/name/{FLEET_DEPLOYMENT}")
        # Both workers first, then the runs all due at once: both poll them, both try to claim them.
        (first, first_name), (second, second_name) = fleet_workers("--limit", "2"), fleet_workers("--limit", "2")
        ids = [stack.api("POST", f"/deployments/{deployment['id']}/create_flow_run",
                         json={"parameters": {"url": server.url(site), "config": SMALL}})["id"] for site in sites]
        for flow_run_id in ids:
            assert _final_state(stack, flow_run_id, 300, f"flow run {flow_run_id} to finish") == "COMPLETED", \
                stack.log_tail(first_name) + stack.log_tail(second_name)
    by_first, by_second = _started_runs(stack, first_name), _started_runs(stack, second_name)
    assert set(by_first) | set(by_second) == set(ids)
    assert not set(by_first) & set(by_second), "a flow run ran in both workers"
    for flow_run_id in ids:
        states = stack.api("GET", f"/flow_run_states/?flow_run_id={flow_run_id}")
        assert [s["type"] for s in states].count("PENDING") == 1, states  # claimed once
        assert [s["type"] for s in states].count("RUNNING") == 1, states  # run once
        row = run_row(db_url, flow_run_id)
        assert row is not None and row["status"] == "completed", row
        assert row["pid"] == {**by_first, **by_second}[flow_run_id]
    assert first.poll() is None and second.poll() is None


def test_cancelled_and_sigkilled_runs_are_settled(stack, fleet_workers, harvest_env, demo_site, openai_server) -> None:  # noqa: ANN001
    """Two long runs on one fleet worker: one set Cancelling through the API (what the UI's Cancel does), the
    other's child SIGKILLed. The first ends Cancelled, the second Crashed; both rows are settled, files kept; the
    worker lives on."""
    openai_server.configure(polls_until_complete=1_000_000)  # the embeddings batches never finish on their own
    try:
        worker, name = fleet_workers("--limit", "2", env={
            "HARVEST_BATCH_MAX_WAIT_SECONDS": "600", "HARVEST_EMBEDDINGS_SYNC_BELOW": "0"})
        db_url = harvest_env["HARVEST_DATABASE_URL"]
        deployment = stack.api("GET", f"/deployments/name/{FLEET_DEPLOYMENT}")
        runs = {}
        for kind in ("cancel", "sigkill"):
            runs[kind] = stack.api("POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {
                "url": f"{demo_site.base_url}/?fleet={kind}", "config": {"max_pages": 20, "max_extractions": 5}}})["id"]
        cancel_id, kill_id = runs["cancel"], runs["sigkill"]

        def enriching(run_id: str) -> bool:
            row = run_row(db_url, run_id)
            return bool(row and row["status"] == "running" and "embeddings_submit" in (row["steps"] or {})
                        and "standardized" in file_rows(db_url, run_id))

        wait_for(lambda: enriching(cancel_id) and enriching(kill_id), 180,
                 f"both runs to poll their embeddings batches\n{stack.log_tail(name)}")
        pids = _started_runs(stack, name)
        assert _parent(pids[kill_id]) == _parent(pids[cancel_id]) == worker.pid

        stack.api("POST", f"/flow_runs/{cancel_id}/set_state",
                  json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
        os.kill(pids[kill_id], signal.SIGKILL)

        assert _final_state(stack, cancel_id, 90, "the cancelled run to end") == "CANCELLED", stack.log_tail(name)
        assert _final_state(stack, kill_id, 90, "the killed run to end") == "CRASHED", stack.log_tail(name)
        cancelled = wait_for(lambda: (r := run_row(db_url, cancel_id)) and r["status"] != "running" and r, 60,
                             "the cancelled run's row to be settled")
        crashed = wait_for(lambda: (r := run_row(db_url, kill_id)) and r["status"] != "running" and r, 60,
                           "the killed run's row to be settled")
        assert (cancelled["status"], cancelled["retention"]) == ("cancelled", "kept"), cancelled
        # Cancelled by Prefect's engine in the child ("Flow run was cancelled."), or, when the tasks it waits for
        # outlast the worker's grace, by the worker once it killed the child ("...; its process was killed ...").
        assert stack.flow_run(cancel_id)["state"]["message"].startswith("Flow run was cancelled"), stack.log_tail(name)
        assert (crashed["status"], crashed["retention"]) == ("crashed", "kept"), crashed
        assert "SIGKILL" in stack.flow_run(kill_id)["state"]["message"]
        assert "standardized" in file_rows(db_url, kill_id)  # kept for debugging
        wait_for(lambda: not Path(f"/proc/{pids[cancel_id]}").exists(), 60, "the cancelled run's child to be gone")
        assert worker.poll() is None, stack.log_tail(name)
    finally:
        openai_server.reset()


def test_sigterm_stops_claiming_and_settles_what_runs(stack, fleet_workers, harvest_env, demo_site,  # noqa: ANN001
                                                     openai_server) -> None:
    """SIGTERM to the worker with a run in progress that will not finish within its grace: the worker cancels it,
    the run ends Cancelled with its row settled, and the worker exits 0."""
    openai_server.configure(polls_until_complete=1_000_000)
    try:
        worker, name = fleet_workers("--limit", "1", "--grace", "1", env={
            "HARVEST_BATCH_MAX_WAIT_SECONDS": "600", "HARVEST_EMBEDDINGS_SYNC_BELOW": "0"})
        db_url = harvest_env["HARVEST_DATABASE_URL"]
        deployment = stack.api("GET", f"/deployments/name/{FLEET_DEPLOYMENT}")
        flow_run_id = stack.api("POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {
            "url": f"{demo_site.base_url}/?fleet=sigterm", "config": {"max_pages": 20, "max_extractions": 5}}})["id"]
        wait_for(lambda: (r := run_row(db_url, flow_run_id)) and "embeddings_submit" in (r["steps"] or {}), 180,
                 f"the run to poll its batch\n{stack.log_tail(name)}")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, stack.log_tail(name)
        assert stack.flow_run(flow_run_id)["state"]["type"] == "CANCELLED"
        assert run_row(db_url, flow_run_id)["status"] == "cancelled"  # type: ignore[index]
    finally:
        openai_server.reset()


def test_the_worker_refuses_a_missing_pool_or_api_in_one_line(stack, harvest_env) -> None:  # noqa: ANN001
    env = {**os.environ, **stack.env, **harvest_env}
    missing = subprocess.run([HARVEST, "sources", "worker", "--pool", "nowhere"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "no work pool nowhere" in missing.stderr and "prefect work-pool create nowhere" in missing.stderr
    no_api = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    unset = subprocess.run([HARVEST, "sources", "worker"], env=no_api, capture_output=True, text=True, timeout=120)
    assert unset.returncode == 2 and "set PREFECT_API_URL" in unset.stderr, unset.stderr[-2000:]
    no_db = {**env, "HARVEST_DATABASE_URL": "postgresql+psycopg://harvest:harvest@127.0.0.1:1/nowhere"}
    down = subprocess.run([HARVEST, "sources", "worker"], env=no_db, capture_output=True, text=True, timeout=120)
    assert down.returncode == 3 and down.stderr.startswith("error:"), down.stderr[-2000:]


def test_a_plain_process_worker_serves_the_sources_pool_too(stack, harvest_env) -> None:  # noqa: ANN001
    """The slow fallback: harvest-sources is an ordinary process pool, so `prefect worker start` runs its flow runs
    (a fresh Python each) when no fleet worker does."""
    sites = fleet_sites(1, seed=11)
    name = f"plain-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **stack.env, **harvest_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    process = stack.start(name, [PREFECT, "worker", "start", "--pool", SOURCES_POOL, "--name", name, "--limit", "1"],
                          env)
    try:
        wait_for(lambda: worker_online(stack, name, SOURCES_POOL) or process.poll() is not None, 90,
                 "the process worker to register")
        with FleetServer(sites) as server:
            deployment = stack.api("GET", f"/deployments/name/{FLEET_DEPLOYMENT}")
            flow_run_id = stack.api("POST", f"/deployments/{deployment['id']}/create_flow_run",
                                    json={"parameters": {"url": server.url(sites[0]), "config": SMALL}})["id"]
            assert _final_state(stack, flow_run_id, 300, "the run to finish") == "COMPLETED", stack.log_tail(name)
        row = run_row(harvest_env["HARVEST_DATABASE_URL"], flow_run_id)
        assert row is not None and row["status"] == "completed" and row["work_pool"] == SOURCES_POOL, row
        assert flow_run_id in stack.log_tail(name, 10**6)  # this worker submitted it
    finally:
        stop_worker(process)
