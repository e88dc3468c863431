"""The operator's path, for real: `prefect server start` on Postgres (UI enabled), the process and docker work
pools, `prefect --no-prompt deploy --all` from prefect.yaml, a worker, `prefect deployment run ... --watch`,
the run's summary artifact in the Prefect UI (Playwright + Chromium, screenshot kept under
tests/e2e/artifacts/), `import-run/manual` and `sweep-expired/nightly` through the worker,
`prefect flow-run cancel`, and a SIGKILLed flow-run process.

The worker runs with the harvest environment (Postgres, a moto S3 bucket, the local OpenAI and geocoder
servers), which its flow-run processes inherit. Every process started here carries a marker variable, so
teardown can stop all of them, including flow-run processes the worker started in their own sessions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from harvest.db.engine import get_engine
from harvest.db.schema import run_files, scrape_runs

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "harvest-process"
DOCKER_POOL = "harvest-docker"
SOURCES_POOL = "harvest-sources"
DEPLOYMENT = "scrape-website/default"
# Every deployment in prefect.yaml: name → (work pool, cron schedules, concurrency limit and strategy).
DEPLOYMENTS = {
    "scrape-website/default": (POOL, ["0 1 * * *"], (4, "ENQUEUE")),
    "scrape-website/docker": (DOCKER_POOL, ["0 1 * * *"], (4, "ENQUEUE")),
    "scrape-website/git": (POOL, ["0 1 * * *"], (4, "ENQUEUE")),
    "scrape-website/fleet": (SOURCES_POOL, [], None),
    "scrape-sources/sources": (POOL, [], (4, "ENQUEUE")),
    "import-run/manual": (POOL, [], None),
    "sweep-expired/nightly": (POOL, ["0 3 * * *"], (1, "CANCEL_NEW")),
    "settle-run/crashed": (POOL, [], None),
}
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
SCREENSHOT = ARTIFACTS_DIR / "flow-run-summary.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
UUID_RE = re.compile(r"UUID: ([0-9a-f-]{36})")


@dataclass
class Stack:
    """A Prefect server on Postgres (with its UI) with the three work pools and every deployment of prefect.yaml."""

    api_url: str
    ui_url: str
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

    def cli_async(self, *args: str) -> subprocess.Popen[str]:
        """A CLI call left running (read it with `.communicate()`), so two `--watch` runs can overlap."""
        return subprocess.Popen(
            [PREFECT, *args], env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

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


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's process group (it and its flow-run processes), SIGKILL when it is not gone in 15 s."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(5)


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


@pytest.fixture
def worker(stack: Stack, harvest_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process worker whose environment is the test's harvest environment (flow runs inherit it)."""
    env = {
        **stack.env,
        **harvest_env,
        "HARVEST_BATCH_MAX_WAIT_SECONDS": "600",  # the cancel test keeps a batch polling; cancel must end it
        "HARVEST_EMBEDDINGS_SYNC_BELOW": "0",  # always the batch path: the cancel and SIGKILL tests need one polling
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    process = stack.start("worker", [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "2"], env)
    wait_for(lambda: worker_online(stack, name) or process.poll() is not None, 90, "the worker to register")
    assert process.poll() is None, f"worker exited:\n{stack.log_tail('worker')}"
    yield process
    stop_worker(process)


def worker_online(stack: Stack, name: str, pool: str = POOL) -> bool:
    """Whether the worker `name` is listed ONLINE under `pool`."""
    try:
        workers = stack.api("POST", f"/work_pools/{pool}/workers/filter", json={})
    except httpx.HTTPError:  # a busy server may answer 503 for a moment: ask again
        return False
    return any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers)


def run_row(db_url: str, run_id: str) -> dict[str, Any] | None:
    with get_engine(db_url).begin() as connection:
        row = connection.execute(sa.select(scrape_runs).where(scrape_runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None


def settled_row(db_url: str, run_id: str, timeout: float = 30) -> dict[str, Any] | None:
    """The run row once its hook has settled its retention: a flow run is Completed (what `--watch` waits for)
    before its on_completion hook runs. None when the run has no row."""
    if run_row(db_url, run_id) is None:
        return None
    return wait_for(lambda: (row := run_row(db_url, run_id)) and row["retention"] != "pending" and row, timeout,
                    f"the completion hook to settle run {run_id}")


def file_rows(db_url: str, run_id: str) -> dict[str, dict[str, Any]]:
    with get_engine(db_url).begin() as connection:
        rows = connection.execute(sa.select(run_files).where(run_files.c.run_id == run_id)).mappings()
        return {row["kind"]: dict(row) for row in rows}


def test_deploy_all_creates_every_deployment(stack) -> None:  # noqa: ANN001
    """`prefect --no-prompt deploy --all` ran unattended (in the fixture) and created all eight deployments."""
    print(f"deploy --all {stack.timings['deploy_s']:.1f}s")
    for name, (pool, crons, limit) in DEPLOYMENTS.items():
        deployment = stack.api("GET", f"/deployments/name/{name}")
        assert deployment["work_pool_name"] == pool, name
        assert deployment["description"], name  # shown in the UI
        assert sorted(s["schedule"].get("cron") for s in deployment["schedules"]) == crons, name
        held = (deployment["global_concurrency_limit"] or {}).get("limit")
        strategy = (deployment["concurrency_options"] or {}).get("collision_strategy")
        assert (held, strategy) == (limit or (None, None)), name
        if name.startswith("scrape-website/") and crons:
            # The nightly re-crawl: its own parameters, paused as shipped; the shared config (a YAML anchor).
            (schedule,) = deployment["schedules"]
            assert (schedule["active"], schedule["slug"]) == (False, "nightly-example-org"), name
            assert schedule["parameters"]["url"] == "https://example.org/"
            assert schedule["parameters"]["config"] == {**deployment["parameters"]["config"], "auto_import": True}
            assert deployment["parameters"]["config"]["max_pages"] == 150
    fleet = stack.api("GET", "/deployments/name/scrape-website/fleet")  # the sources' schedules go here
    default = stack.api("GET", "/deployments/name/scrape-website/default")
    assert fleet["parameters"]["config"] == default["parameters"]["config"]
    assert fleet["entrypoint"] == default["entrypoint"] == "flows/scrape.py:scrape_website"
    nightly = stack.api("GET", "/deployments/name/sweep-expired/nightly")
    (schedule,) = nightly["schedules"]
    assert schedule["active"] and schedule["schedule"]["timezone"] == "UTC"
    # A paused schedule makes no runs: the only scheduled runs are the sweep's.
    scheduled = stack.api("POST", "/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
    assert {run["deployment_id"] for run in scheduled} <= {nightly["id"]}
    docker = stack.api("GET", "/deployments/name/scrape-website/docker")
    assert docker["job_variables"]["image"] == "harvest:latest"
    assert docker["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    pool = stack.api("GET", f"/work_pools/{DOCKER_POOL}")
    assert pool["type"] == "docker"
    assert "image" in pool["base_job_template"]["variables"]["properties"]  # the registry's docker template


def test_deployed_run_completes_and_records_its_deployment(stack, worker, harvest_env, s3, demo_site) -> None:  # noqa: ANN001
    started = time.monotonic()
    done = stack.cli(
        "deployment", "run", DEPLOYMENT, "-p", f"url={demo_site.base_url}/",
        "-p", 'config={"max_pages": 20, "max_extractions": 5}', "--watch", timeout=240,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + stack.log_tail("worker")
    flow_run_id = UUID_RE.search(done.stdout).group(1)  # type: ignore[union-attr]
    since_deploy = time.monotonic() - stack.timings["deployed_at"]
    print(f"deploy {stack.timings['deploy_s']:.1f}s; deployment run → Completed {elapsed:.1f}s "
          f"(deploy finished → this run Completed {since_deploy:.1f}s)")

    flow_run = stack.flow_run(flow_run_id)
    assert flow_run["state"]["type"] == "COMPLETED"
    deployment = stack.api("GET", f"/deployments/{flow_run['deployment_id']}")
    assert deployment["name"] == "default" and deployment["work_pool_name"] == POOL

    db_url = harvest_env["HARVEST_DATABASE_URL"]
    row = settled_row(db_url, flow_run_id)
    assert row is not None, "the flow run recorded no scrape_runs row"
    assert (row["status"], row["retention"]) == ("completed", "kept")  # auto_import is false: kept for review
    assert row["import_summary"] is None
    assert row["deployment_id"] == flow_run["deployment_id"]
    assert row["deployment_name"] == "default"
    assert row["work_pool"] == POOL
    assert row["flow_run_name"] == flow_run["name"]
    assert 0 < row["activities_processed"] <= 5
    assert row["config"]["max_pages"] == 20

    files = file_rows(db_url, flow_run_id)
    assert {"raw_activities", "standardized", "merged", "final_jsonl"} <= set(files)
    assert_files_kept(s3, harvest_env["HARVEST_BUCKET"], files)

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

    # The other two deployments, through the same worker and at the same time: import the kept run after
    # review, and a dry-run sweep. Meanwhile, the summary artifact in the Prefect UI.
    importing = stack.cli_async("deployment", "run", "import-run/manual", "-p", f"run_id={flow_run_id}", "--watch")
    sweeping = stack.cli_async("deployment", "run", "sweep-expired/nightly", "-p", "dry_run=true", "--watch")
    started = time.monotonic()
    ui_seconds = screenshot_summary(stack, flow_run_id)
    print(f"UI: summary artifact visible in {ui_seconds:.1f}s; screenshot {SCREENSHOT}")
    for what, process in (("import-run/manual", importing), ("sweep-expired/nightly", sweeping)):
        try:
            out, err = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        assert process.returncode == 0, f"{what}:\n{out[-3000:]}{err[-3000:]}{stack.log_tail('worker')}"
        assert UUID_RE.search(out), out
        print(f"{what} → Completed {time.monotonic() - started:.1f}s after both were started")

    row = run_row(db_url, flow_run_id)
    assert row["import_summary"] is not None, "import-run/manual recorded no import summary"
    assert row["import_summary"]["imported"] == row["activities_processed"]
    assert row["import_summary"]["failed"] == 0
    assert (row["status"], row["retention"]) == ("completed", "kept")  # cleanup defaults to false
    with get_engine(db_url).begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM activities")).scalar_one() == row["activities_processed"]
    assert_files_kept(s3, harvest_env["HARVEST_BUCKET"], file_rows(db_url, flow_run_id))  # dry run deleted nothing
    report = stack.api("GET", "/artifacts/sweep-expired-report/latest")
    assert report["data"].startswith("# Sweep (dry run: nothing deleted)"), report["data"][:200]
    imported = stack.api("GET", "/artifacts/import-run-summary/latest")
    assert flow_run_id in imported["data"]


def assert_files_kept(s3: Any, bucket: str, files: dict[str, dict[str, Any]]) -> None:
    """Every file row is live and its object is in the bucket (run files under runs/<id>/, the digest elsewhere)."""
    keys = set(s3.keys(bucket, "harvest/"))
    for kind, item in files.items():
        assert item["deleted_at"] is None, kind
        assert item["uri"].removeprefix(f"s3://{bucket}/") in keys, kind


def screenshot_summary(stack: Stack, flow_run_id: str) -> float:
    """Open the flow run's page in the Prefect UI, its Artifacts tab, then the summary artifact; assert the
    rendered markdown is visible and keep a full-page screenshot. Returns the seconds it took."""
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)  # the first page load after a UI build can be slow
            expect.set_options(timeout=30_000)
            card = page.get_by_text("scrape-website-default-summary", exact=True).last
            deadline = time.monotonic() + 90
            while True:  # a busy server may fail one of the page's API calls ("Oops"): load the page again
                response = page.goto(f"{stack.ui_url}/runs/flow-run/{flow_run_id}")
                assert response is not None and response.status == 200, response and response.status
                page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
                try:
                    expect(card).to_be_visible(timeout=20_000)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
            page.screenshot(path=str(ARTIFACTS_DIR / "flow-run-artifacts-tab.png"), full_page=True)
            card.click()
            expect(page).to_have_url(re.compile(r"/artifacts/artifact/[0-9a-f-]{36}"))
            expect(page.get_by_role("heading", name=f"Run {flow_run_id}")).to_be_visible()
            expect(page.get_by_role("heading", name="Files")).to_be_visible()
            expect(page.get_by_role("cell", name="final_jsonl", exact=True)).to_be_visible()
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
    return time.monotonic() - started


def artifacts_of(stack: Stack, flow_run_id: str) -> dict[str, dict[str, Any]]:
    found = stack.api("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {item["key"]: item for item in found if item.get("key")}


def _flow_run_pids(marker: str, flow_run_id: str) -> list[int]:
    """This test's processes running the flow run: the worker starts it with PREFECT__FLOW_RUN_ID=<id>."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for pid in _marked_pids(marker):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            cmd = "?"
        out.append(f"{pid} (parent {_parent(pid)}): {cmd}")
    return out


def _final_state(stack: Stack, flow_run_id: str, timeout: float, what: str) -> str:
    def final() -> str | None:
        try:
            state = stack.flow_run(flow_run_id)["state"]["type"]
        except httpx.HTTPError:  # a busy server may answer 503 for a moment: ask again
            return None
        return state if state in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED") else None

    return wait_for(final, timeout, what)


def test_cancelled_and_sigkilled_deployed_runs_keep_their_files(
    stack, worker, harvest_env, s3, demo_site, openai_server  # noqa: ANN001
) -> None:
    """Two long deployed runs at once (the worker takes two; one run per URL, so two URLs of the demo site):
    one cancelled with `prefect flow-run cancel`, the other's flow-run process SIGKILLed. Both end with their
    status recorded and every file kept; then the crashed one is resumed with `prefect flow-run retry`."""
    openai_server.configure(polls_until_complete=1_000_000)  # the embeddings batches never finish on their own
    runs = {}
    for name, url in (("cancel", f"{demo_site.base_url}/"), ("sigkill", f"{demo_site.base_url}/?e2e=sigkill")):
        created = stack.cli(
            "deployment", "run", DEPLOYMENT, "-p", f"url={url}", "-p", 'config={"max_pages": 20, "max_extractions": 5}',
        )
        assert created.returncode == 0, created.stdout + created.stderr
        runs[name] = UUID_RE.search(created.stdout).group(1)  # type: ignore[union-attr]
    cancel_id, kill_id = runs["cancel"], runs["sigkill"]
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    bucket = harvest_env["HARVEST_BUCKET"]

    # Act only once both runs are deep in their work: in the enrichment step, their batches submitted and polled.
    def enriching(run_id: str) -> bool:
        row = run_row(db_url, run_id)
        return bool(row and row["status"] == "running" and "embeddings_submit" in (row["steps"] or {})
                    and "standardized" in file_rows(db_url, run_id))

    wait_for(lambda: enriching(cancel_id) and enriching(kill_id) and openai_server.stats().get("batches.retrieve", 0) >= 4,
             180, f"both runs to poll their embeddings batches\n{stack.log_tail('worker')}")
    assert openai_server.stats().get("batches.create") == 2
    assert stack.flow_run(cancel_id)["state"]["type"] == stack.flow_run(kill_id)["state"]["type"] == "RUNNING"

    # Cancel one through the API ...
    cancelled = stack.cli("flow-run", "cancel", cancel_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    # ... and SIGKILL the other's process: the worker's child that carries the flow run id (and its children).
    pids = _flow_run_pids(stack.marker, kill_id)
    roots = [pid for pid in pids if _parent(pid) not in pids]
    assert len(roots) == 1 and _parent(roots[0]) == worker.pid, (_describe(pids), worker.pid)
    print(f"SIGKILL flow-run processes: {_describe(pids)}")
    for pid in [roots[0], *(p for p in pids if p != roots[0])]:
        _signal(pid, signal.SIGKILL)
    killed_at = datetime.now(UTC)

    # The cancelled run: the on_cancellation hook records it.
    assert _final_state(stack, cancel_id, 90, "the cancelled flow run to reach a final state") == "CANCELLED", \
        stack.log_tail("worker")
    row = wait_for(lambda: (r := run_row(db_url, cancel_id)) and r["status"] != "running" and r, 60,
                   "the on_cancellation hook to record the run")
    assert (row["status"], row["retention"]) == ("cancelled", "kept")
    assert row["finished_at"] is not None
    files = file_rows(db_url, cancel_id)
    assert {"raw_activities", "standardized"} <= set(files)
    assert_files_kept(s3, bucket, files)
    progress = artifacts_of(stack, cancel_id)["scrape-website-default-progress"]["data"]
    assert 0 < progress < 100

    # The killed run: the worker sees its process die, proposes Crashed and runs the on_crashed hooks.
    assert _final_state(stack, kill_id, 60, "the killed flow run to reach a final state") == "CRASHED", \
        stack.log_tail("worker")
    try:
        row = wait_for(lambda: (r := run_row(db_url, kill_id)) and r["status"] != "running" and r, 30,
                       "the on_crashed hook to record the run")
        path = "on_crashed hook (worker)"
    except AssertionError:
        # Fallback: the sweep reconciles runs whose Prefect flow run is over.
        swept = subprocess.run(
            [str(BIN / "harvest"), "sweep", "--json"], env={**stack.env, **harvest_env}, cwd=ROOT,
            capture_output=True, text=True, timeout=180,
        )
        assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
        row = run_row(db_url, kill_id)
        path = "harvest sweep (reconciliation)"
    ended = row["finished_at"] if row["finished_at"].tzinfo else row["finished_at"].replace(tzinfo=UTC)
    print(f"SIGKILL → run row {row['status']} {(ended - killed_at).total_seconds():.1f}s after the kill, via {path}")
    assert (row["status"], row["retention"]) == ("crashed", "kept"), (row["status"], row["retention"], path)
    assert row["finished_at"] is not None and row["expires_at"] is not None
    files = file_rows(db_url, kill_id)
    assert {"raw_activities", "standardized", "embeddings_batch_input"} <= set(files)
    assert_files_kept(s3, bucket, files)
    wait_for(lambda: not _flow_run_pids(stack.marker, kill_id), 30,
             f"the killed flow run's processes to be gone: {_describe(_flow_run_pids(stack.marker, kill_id))}")
    assert worker.poll() is None, "the worker died with its flow run"

    # Resume: `prefect flow-run retry` schedules the same flow run (same id) again and the worker picks it up.
    # Step results are stored under the run id, so the crawl is loaded, not redone, and the run polls the
    # batch it submitted before the kill (now allowed to finish) instead of submitting a second one.
    before = openai_server.stats()
    openai_server.configure(polls_until_complete=1)
    started = time.monotonic()
    retried = stack.cli("flow-run", "retry", kill_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert _final_state(stack, kill_id, 120, "the retried flow run to finish") == "COMPLETED", stack.log_tail("worker")
    print(f"prefect flow-run retry → Completed {time.monotonic() - started:.1f}s")
    row = settled_row(db_url, kill_id)
    assert (row["status"], row["retention"], row["error"]) == ("completed", "kept", None)
    after = openai_server.stats()
    assert after.get("batches.create") == before.get("batches.create") == 2  # no second batch for the killed run
    assert after.get("chat.completions", 0) == before.get("chat.completions", 0)  # extraction not redone
    assert "final_jsonl" in file_rows(db_url, kill_id)
