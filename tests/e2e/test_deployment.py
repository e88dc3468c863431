"""The operator's path, for real: `prefect server start` on Postgres, a process work pool, `prefect deploy`
from prefect.yaml, a worker, `prefect deployment run ... --watch`, and `prefect flow-run cancel`.

The worker runs with the harvest environment (Postgres, a moto S3 bucket, the local OpenAI and geocoder
servers), which its flow-run processes inherit. Every process started here carries a marker variable, so
teardown can stop all of them, including flow-run processes the worker started in their own sessions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from harvest.db.engine import get_engine
from harvest.db.schema import run_files, scrape_runs
from testkit.net import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "harvest-process"
DEPLOYMENT = "scrape-website/default"
UUID_RE = re.compile(r"UUID: ([0-9a-f-]{36})")


@dataclass
class Stack:
    """A Prefect server on Postgres with the process pool and the `default` deployment."""

    api_url: str
    env: dict[str, str]
    logs: Path
    marker: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PREFECT, *args], env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, self.api_url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/flow_runs/{flow_run_id}")

    def stop_all(self) -> None:
        """SIGTERM every process group started here and every process carrying the marker, then SIGKILL."""
        for process in self.processes:
            _signal_group(process.pid, signal.SIGTERM)
        for pid in _marked_pids(self.marker):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)
        while _marked_pids(self.marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _marked_pids(self.marker):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries HARVEST_E2E_MARKER=<marker> (only ones this test started)."""
    needle = f"HARVEST_E2E_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def prefect_database(pg_url: str) -> Iterator[str]:
    """A fresh Postgres database for the Prefect server (dropped afterwards), so runs start clean."""
    import psycopg

    url = make_url(pg_url)
    name = f"harvest_prefect_e2e_{uuid.uuid4().hex[:10]}"
    conninfo = dict(host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database)
    with psycopg.connect(**conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    with psycopg.connect(**conninfo, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(prefect_database: str) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="harvest-e2e-"))
    port = free_port()
    marker = uuid.uuid4().hex
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HARVEST_"))},
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "HARVEST_E2E_MARKER": marker,
    }
    stack = Stack(api_url=env["PREFECT_API_URL"], env=env, logs=home, marker=marker)
    try:
        server = stack.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)

        def healthy() -> bool:
            assert server.poll() is None, f"server exited:\n{stack.log_tail('server')}"
            try:
                return httpx.get(f"{stack.api_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 180, "the Prefect server to be healthy")
        created = stack.cli("work-pool", "create", POOL, "--type", "process")
        assert created.returncode == 0, created.stdout + created.stderr
        started = time.monotonic()
        deployed = stack.cli("--no-prompt", "deploy", "--name", "default")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        stack.timings["deploy_s"] = time.monotonic() - started
        stack.timings["deployed_at"] = time.monotonic()
        yield stack
    finally:
        stack.stop_all()
        shutil.rmtree(home, ignore_errors=True)  # failures carry the log tails in their messages


@pytest.fixture
def worker(stack: Stack, harvest_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process worker whose environment is the test's harvest environment (flow runs inherit it)."""
    env = {
        **stack.env,
        **harvest_env,
        "HARVEST_BATCH_MAX_WAIT_SECONDS": "600",  # the cancel test keeps a batch polling; cancel must end it
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    process = stack.start("worker", [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "2"], env)
    wait_for(lambda: _worker_online(stack, name) or process.poll() is not None, 90, "the worker to register")
    assert process.poll() is None, f"worker exited:\n{stack.log_tail('worker')}"
    yield process
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(5)


def _worker_online(stack: Stack, name: str) -> bool:
    workers = stack.api("POST", f"/work_pools/{POOL}/workers/filter", json={})
    return any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers)


def run_row(db_url: str, run_id: str) -> dict[str, Any] | None:
    with get_engine(db_url).begin() as connection:
        row = connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None


def file_rows(db_url: str, run_id: str) -> dict[str, dict[str, Any]]:
    with get_engine(db_url).begin() as connection:
        rows = connection.execute(sa.select(run_files).where(run_files.c.run_id == run_id)).mappings()
        return {row["kind"]: dict(row) for row in rows}


def test_deployed_run_completes_and_records_its_deployment(stack, worker, harvest_env, s3, demo_site) -> None:  # noqa: ANN001
    started = time.monotonic()
    done = stack.cli(
        "deployment", "run", DEPLOYMENT, "-p", f"url={demo_site.base_url}/",
        "-p", 'config={"max_pages": 20, "max_extractions": 5}', "--watch", timeout=240,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + stack.log_tail("worker")
    flow_run_id = UUID_RE.search(done.stdout).group(1)  # type: ignore[union-attr]
    print(f"deploy {stack.timings['deploy_s']:.1f}s; deployment run → Completed {elapsed:.1f}s")

    flow_run = stack.flow_run(flow_run_id)
    assert flow_run["state"]["type"] == "COMPLETED"
    deployment = stack.api("GET", f"/deployments/{flow_run['deployment_id']}")
    assert deployment["name"] == "default" and deployment["work_pool_name"] == POOL

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    row = run_row(db_url, flow_run_id)
    assert row is not None, "the flow run recorded no scrape_runs row"
    assert (row["status"], row["retention"]) == ("completed", "kept")
    assert row["deployment_id"] == flow_run["deployment_id"]
    assert row["deployment_name"] == "default"
    assert row["work_pool"] == POOL
    assert row["flow_run_name"] == flow_run["name"]
    assert 0 < row["activities_processed"] <= 5
    assert row["config"]["max_pages"] == 20

    files = file_rows(db_url, flow_run_id)
    assert {"raw_activities", "standardized", "merged", "final_jsonl"} <= set(files)
    bucket = harvest_env["HARVEST_BUCKET"]
    keys = set(s3.keys(bucket, f"harvest/runs/{flow_run_id}/"))
    for kind, item in files.items():
        assert item["uri"].removeprefix(f"s3://{bucket}/") in keys, kind
        assert item["deleted_at"] is None

    # Artifacts, read back through the API under keys stable for the deployment.
    found = artifacts_of(stack, flow_run_id)
    assert found["scrape-website-default-progress"]["data"] == 100
    table = found["scrape-website-default-steps"]
    assert table["type"] == "table"
    rows = {r["stage"]: r for r in (json.loads(table["data"]) if isinstance(table["data"], str) else table["data"])}
    assert {"crawl", "standardize"} <= set(rows)
    assert rows["crawl"]["items_out"] == files["raw_activities"]["records"]
    summary = found["scrape-website-default-summary"]
    assert summary["type"] == "markdown" and flow_run_id in summary["data"] and "final_jsonl" in summary["data"]
    for key, kind in (("scrape-website-default-final-jsonl", "final_jsonl"),
                      ("scrape-website-default-raw-activities", "raw_activities")):
        assert found[key]["type"] == "markdown"  # Prefect stores a link artifact as markdown: [text](link)
        link = re.search(r"\((http[^)]+)\)", found[key]["data"]).group(1)  # type: ignore[union-attr]
        body = httpx.get(link, timeout=30)  # a presigned URL: no credentials needed
        assert body.status_code == 200 and len(body.content) == files[kind]["bytes"], key
    latest = stack.api("GET", "/artifacts/scrape-website-default-summary/latest")
    assert latest["flow_run_id"] == flow_run_id


def artifacts_of(stack: Stack, flow_run_id: str) -> dict[str, dict[str, Any]]:
    found = stack.api("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {item["key"]: item for item in found if item.get("key")}


def test_cancelling_a_deployed_run_marks_it_cancelled_and_keeps_its_files(
    stack, worker, harvest_env, s3, demo_site, openai_server  # noqa: ANN001
) -> None:
    openai_server.configure(polls_until_complete=1_000_000)  # the embeddings batch never finishes on its own
    created = stack.cli(
        "deployment", "run", DEPLOYMENT, "-p", f"url={demo_site.base_url}/",
        "-p", 'config={"max_pages": 20, "max_extractions": 5}',
    )
    assert created.returncode == 0, created.stdout + created.stderr
    flow_run_id = UUID_RE.search(created.stdout).group(1)  # type: ignore[union-attr]
    db_url = harvest_env["HARVEST_DATABASE_URL"]

    # Cancel only once the run is deep in its work: its batch submitted and being polled.
    wait_for(lambda: openai_server.stats().get("batches.retrieve", 0) >= 2, 150,
             f"the run to poll its embeddings batch\n{stack.log_tail('worker')}")
    assert stack.flow_run(flow_run_id)["state"]["type"] == "RUNNING"
    cancelled = stack.cli("flow-run", "cancel", flow_run_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr

    state = wait_for(
        lambda: (s := stack.flow_run(flow_run_id)["state"]["type"]) in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED")
        and s, 90, "the flow run to reach a final state",
    )
    assert state == "CANCELLED", stack.log_tail("worker")
    row = wait_for(lambda: (r := run_row(db_url, flow_run_id)) and r["status"] != "running" and r, 60,
                   "the on_cancellation hook to record the run")
    assert (row["status"], row["retention"]) == ("cancelled", "kept")
    assert row["finished_at"] is not None

    files = file_rows(db_url, flow_run_id)
    assert {"raw_activities", "standardized"} <= set(files)
    keys = set(s3.keys(harvest_env["HARVEST_BUCKET"], f"harvest/runs/{flow_run_id}/"))
    for kind, item in files.items():
        assert item["deleted_at"] is None, kind
        assert item["uri"].removeprefix(f"s3://{harvest_env['HARVEST_BUCKET']}/") in keys, kind
    progress = artifacts_of(stack, flow_run_id)["scrape-website-default-progress"]["data"]
    assert 0 < progress < 100
