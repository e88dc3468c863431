"""Prefect-native operations, for real, on the deployment test's Prefect server (Postgres, the process pool, every
deployment of prefect.yaml) (issue 29):

- `harvest automations register` creates the zombie, settle and notification automations and the webhook block;
- a `harvest scrape` process reporting to the server is SIGKILLed mid-run: nothing is left to report it, its
  heartbeats stop, the zombie automation marks its flow run Crashed, the settle automation runs
  `settle-run/crashed` on the worker, whose on_crashed hook records the run crashed with its files kept; the hook's
  line is in the crashed run's logs, and the webhook receiver (a local HTTP server) gets the notification;
- a deployed run that fails is notified the same way (checked while the killed run's heartbeats run out);
- the crashed run's page in the Prefect UI (state, logs), screenshot kept under tests/e2e/artifacts/.

Flow runs here beat every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, its minimum) and the zombie automation waits 60 s:
the automations are removed when the module ends, so runs of later modules (default heartbeats) are never judged by
them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.test_deployment import (
    ARTIFACTS_DIR,
    BIN,
    CHROMIUM,
    CHROMIUM_ARGS,
    DEPLOYMENT,
    POOL,
    PREFECT,
    ROOT,
    UUID_RE,
    Stack,
    _final_state,
    _signal_group,
    run_row,
    stop_worker,
    wait_for,
    worker_online,
)
from tests.failures.support import all_runs

pytestmark = pytest.mark.e2e

HARVEST = str(BIN / "harvest")
HEARTBEAT_S = 30  # Prefect's minimum
ZOMBIE_AFTER_S = 60  # two heartbeats: room for one late under load, and a short wait for the test
AUTOMATIONS = ("harvest: crash zombie runs", "harvest: settle crashed runs", "harvest: notify on failed or crashed runs")
SCREENSHOT = ARTIFACTS_DIR / "flow-run-crashed.png"
SCREENSHOT_LOGS = ARTIFACTS_DIR / "flow-run-crashed-hook-log.png"


@dataclass
class Receiver:
    """A local webhook receiver: every POST's JSON body, in arrival order."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # connections closed before a request (not an error of ours: counted, not printed)

    def about(self, flow_run_id: str) -> list[dict[str, Any]]:
        return [body for body in self.bodies if flow_run_id in body.get("body", "")]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            found.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            found.dropped += 1

    server = Server(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/harvest"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()


@pytest.fixture
def ops_env(harvest_env: dict[str, str], receiver: Receiver) -> dict[str, str]:
    return {**harvest_env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
            "HARVEST_NOTIFY_WEBHOOK_URL": receiver.url, "PREFECT_LOGGING_LEVEL": "INFO"}


@pytest.fixture
def automations(stack: Stack, ops_env: dict[str, str]) -> Iterator[str]:
    """`harvest automations register` (its output), undone afterwards."""
    registered = subprocess.run([HARVEST, "automations", "register", "--zombie-after", str(ZOMBIE_AFTER_S)],
                                env={**stack.env, **ops_env}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    try:
        assert registered.returncode == 0, registered.stdout + registered.stderr
        yield registered.stdout
    finally:
        for name in AUTOMATIONS:
            for automation in stack.api("POST", "/automations/filter", json={}):
                if automation["name"] == name:
                    stack.api("DELETE", f"/automations/{automation['id']}")


@pytest.fixture
def worker(stack: Stack, ops_env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    env = {**stack.env, **ops_env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    process = stack.start(name, [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "2"], env)
    wait_for(lambda: worker_online(stack, name) or process.poll() is not None, 90, "the worker to register")
    assert process.poll() is None, f"worker exited:\n{stack.log_tail(name)}"
    yield process
    stop_worker(process)


def logs_of(stack: Stack, flow_run_id: str) -> list[dict[str, Any]]:
    return list(stack.api("POST", "/logs/filter", json={
        "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}))


def test_register_creates_the_automations_and_the_webhook_block(stack, automations) -> None:  # noqa: ANN001
    assert "custom-webhook/harvest-notify" in automations
    for name in AUTOMATIONS:
        assert re.search(rf"(created|updated) +automation/{re.escape(name)}", automations), automations
    by_name = {a["name"]: a for a in stack.api("POST", "/automations/filter", json={})}
    zombie = by_name["harvest: crash zombie runs"]
    assert zombie["trigger"]["posture"] == "Proactive" and zombie["trigger"]["within"] == ZOMBIE_AFTER_S
    assert zombie["actions"] == [{**zombie["actions"][0], "type": "change-flow-run-state", "state": "CRASHED"}]
    settle = by_name["harvest: settle crashed runs"]["actions"][0]
    assert settle["type"] == "run-deployment"
    assert settle["deployment_id"] == stack.api("GET", "/deployments/name/settle-run/crashed")["id"]
    assert by_name["harvest: notify on failed or crashed runs"]["actions"][0]["type"] == "send-notification"
    assert "http" not in automations.split("custom-webhook/harvest-notify", 1)[1].split("\n", 1)[0]  # no URL shown


def test_a_killed_flow_run_is_crashed_by_the_automation_and_settled_by_its_hook(
    stack, automations, worker, ops_env, demo_site, openai_server, receiver  # noqa: ANN001
) -> None:
    """A `harvest scrape` reporting to the server, SIGKILLed while it waits on its embeddings batch: its own API is
    the server, so nothing is left to report it but the missing heartbeats."""
    openai_server.configure(polls_until_complete=1_000_000)  # the batch never finishes on its own
    db_url = ops_env["HARVEST_DATABASE_URL"]
    env = {**os.environ, **stack.env, **ops_env, "HARVEST_BATCH_MAX_WAIT_SECONDS": "900"}
    scraping = subprocess.Popen(
        [HARVEST, "scrape", f"{demo_site.base_url}/?e2e=zombie", "--max-pages", "20", "--max-extractions", "5",
         "--json"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        def waiting_on_the_batch() -> dict[str, Any] | None:
            assert scraping.poll() is None, scraping.communicate()[1][-3000:]
            rows = all_runs(db_url)  # this test's database: only this run
            if len(rows) == 1 and "embeddings_submit" in (rows[0]["steps"] or {}) and \
                    openai_server.stats().get("batches.retrieve", 0) >= 2:
                return rows[0]
            return None

        row = wait_for(waiting_on_the_batch, 240, "the run to wait on its embeddings batch", interval=1)
        flow_run_id = row["id"]
        _signal_group(scraping.pid, signal.SIGKILL)  # the process and anything it started
        killed_at = time.monotonic()
    finally:
        _signal_group(scraping.pid, signal.SIGKILL)
        scraping.communicate(timeout=30)
    assert stack.flow_run(flow_run_id)["state"]["type"] == "RUNNING", "nothing could report the kill"
    assert run_row(db_url, flow_run_id)["status"] == "running"

    # While the killed run's heartbeats run out (a minute with nothing to do here): a deployed run that fails is
    # notified too, by the same automation.
    failed_notice_s = a_failed_deployed_run_is_notified(stack, receiver)

    # The zombie automation: no heartbeat for ZOMBIE_AFTER_S, the flow run is marked Crashed.
    assert _final_state(stack, flow_run_id, 4 * ZOMBIE_AFTER_S, "the automation to crash the silent run") == "CRASHED"
    crashed_after = time.monotonic() - killed_at
    state = stack.flow_run(flow_run_id)["state"]
    assert "No heartbeat for 60 s" in state["message"], state

    # The settle automation: settle-run/crashed ran on the worker, and the on_crashed hook settled the row.
    row = wait_for(lambda: (r := run_row(db_url, flow_run_id)) and r["status"] != "running" and r, 120,
                   f"the hook to settle the run\n{stack.log_tail(worker_log(stack))}")
    settled_after = time.monotonic() - killed_at
    assert (row["status"], row["retention"]) == ("crashed", "kept")
    assert "No heartbeat" in row["error"] and row["expires_at"] is not None
    settles = stack.api("POST", "/flow_runs/filter", json={
        "deployments": {"id": {"any_": [stack.api("GET", "/deployments/name/settle-run/crashed")["id"]]}}})
    (settle,) = [run for run in settles if run["parameters"].get("flow_run_id") == flow_run_id]
    assert _final_state(stack, settle["id"], 60, "the settle run to finish") == "COMPLETED"
    # The hook's line is in the crashed run's own logs, though another flow run's process ran it.
    wait_for(lambda: [log for log in logs_of(stack, flow_run_id) if "(files kept for debugging)" in log["message"]],
             30, "the hook's line in the crashed run's logs")
    # The notification reached the receiver.
    notified = wait_for(lambda: receiver.about(flow_run_id), 60, "the notification of the crash")
    assert "is Crashed" in notified[0]["subject"] and "harvest runs show" in notified[0]["body"]
    print(f"SIGKILL → Crashed by the automation {crashed_after:.1f}s; → row settled by the hook "
          f"{settled_after:.1f}s (heartbeat {HEARTBEAT_S}s, zombie after {ZOMBIE_AFTER_S}s); a failed deployed run "
          f"→ notification {failed_notice_s:.1f}s after it was started")

    seconds = screenshot_run(stack, flow_run_id)
    print(f"UI: crashed run page with the hook's line in {seconds:.1f}s; screenshots {SCREENSHOT}, {SCREENSHOT_LOGS}")


def a_failed_deployed_run_is_notified(stack: Stack, receiver: Receiver) -> float:
    """A deployed run that fails (its raw file does not exist) ends Failed and the notification automation sends
    its subject and a Slack-style `text` to the receiver; returns the seconds from its start to the notification."""
    started = time.monotonic()
    done = stack.cli("deployment", "run", DEPLOYMENT, "-p", "url=https://example.org/",
                     "-p", "from_raw=/nonexistent/raw_activities.jsonl", "--watch", timeout=240)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    flow_run_id = UUID_RE.search(done.stdout).group(1)  # type: ignore[union-attr]
    assert stack.flow_run(flow_run_id)["state"]["type"] == "FAILED"
    notified = wait_for(lambda: receiver.about(flow_run_id), 60, "the notification of the failure")
    assert "is Failed" in notified[0]["subject"]
    assert notified[0]["text"].startswith(notified[0]["subject"])  # Slack-style `text` too
    return time.monotonic() - started


def worker_log(stack: Stack) -> str:
    names = sorted(path.stem for path in stack.logs.glob("ops-*.log"))
    return names[-1] if names else "worker"


def screenshot_run(stack: Stack, flow_run_id: str) -> float:
    """The flow run's page in the Prefect UI: its state badge says Crashed and its logs show the hook's line."""
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=30_000)
            deadline = time.monotonic() + 90
            while True:  # a busy server may fail one of the page's API calls: load the page again
                response = page.goto(f"{stack.ui_url}/runs/flow-run/{flow_run_id}")
                assert response is not None and response.status == 200
                try:
                    expect(page.get_by_text("Crashed").first).to_be_visible(timeout=20_000)
                    expect(page.get_by_text("files kept for debugging").first).to_be_visible(timeout=20_000)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.get_by_text("files kept for debugging").first.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT_LOGS))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
    return time.monotonic() - started

