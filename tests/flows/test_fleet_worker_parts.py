"""The fleet worker's pieces that need no server (flows/fleet_worker.py): what it does once a child has exited, how
an exit is described, the pool's env default, and the fork-safety rule: the warm imports start no thread, and the
worker refuses to fork while one runs. The worker itself is tested end to end in tests/e2e/test_fleet_worker.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flows.fleet_worker import _template_env, after_exit, assert_fork_safe, describe_exit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "CRASHED", "CANCELLED", "SCHEDULED", "PAUSED"])
def test_a_run_that_reached_a_state_of_its_own_is_left_alone(state: str) -> None:
    assert after_exit(state, 0, cancel_sent=False) is None
    assert after_exit(state, -9, cancel_sent=True) is None


def test_a_run_left_running_is_crashed_with_how_its_process_ended() -> None:
    assert after_exit("RUNNING", -9, cancel_sent=False) == (
        "crashed", "Flow run process was killed by signal 9 (SIGKILL) while the flow run was RUNNING.")
    outcome, message = after_exit("PENDING", 1, cancel_sent=False) or ("", "")
    assert outcome == "crashed" and "exited with status 1" in message
    assert after_exit(None, 0, cancel_sent=False) is not None  # no state at all: crashed too, never left


def test_a_run_being_cancelled_is_cancelled_whatever_killed_it() -> None:
    assert after_exit("CANCELLING", -9, cancel_sent=False) == (
        "cancelled", "Flow run was cancelled; its process was killed by signal 9 (SIGKILL).")
    assert after_exit("RUNNING", -15, cancel_sent=True)[0] == "cancelled"  # type: ignore[index] # worker stopping


def test_exits_are_described() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(-15) == "was killed by signal 15 (SIGTERM)"
    assert describe_exit(None) == "did not report an exit status"


def test_the_pool_env_default_is_read_from_the_base_job_template() -> None:
    template = {"variables": {"properties": {"env": {"default": {"A": "1", "B": 2, "C": None}}}}}
    assert _template_env(template) == {"A": "1", "B": "2"}
    assert _template_env({}) == {}


def test_forking_is_refused_while_another_thread_runs() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="busy", daemon=True)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="busy"):
            assert_fork_safe()
    finally:
        stop.set()
        thread.join()


def test_the_warm_imports_start_no_thread(harvest_env: dict[str, str]) -> None:
    """In a fresh interpreter, as `harvest sources worker` starts: every warm module imported and the runs' set-up
    done (migrations checked, the store's client built), still one thread."""
    code = ("import threading; from flows.fleet_worker import warm, warm_resources, assert_fork_safe, WARM_MODULES; "
            "missing = warm(); warm_resources(); assert_fork_safe(); import sys; "
            "print(len([m for m in WARM_MODULES if m in sys.modules]), len(missing), threading.active_count())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **harvest_env})
    assert done.returncode == 0, done.stderr[-3000:]
    imported, missing, threads = (int(x) for x in done.stdout.split())
    assert (missing, threads) == (0, 1), done.stdout
    assert imported > 10


def test_the_api_client_retries_a_busy_server_and_a_dropped_connection_but_not_a_refusal() -> None:
    """Api.call on a real loopback server: two 503s, then the answer (three requests); a 404 at once (one)."""
    import httpx

    from flows.fleet_worker import Api
    from testkit.hostile_site import HostileSite

    answers = iter([503, 503, 200])

    def busy(req) -> None:  # noqa: ANN001 - the loopback handler
        status = next(answers)
        req.send_bytes(status, b'{"ok": true}' if status == 200 else b"busy", "application/json")

    with HostileSite() as site:
        site.route("/busy", busy)
        site.page("/missing", "no", status=404)
        api = Api(site.base_url)
        try:
            assert api.call("GET", "/busy") == {"ok": True}
            assert len(site.hits("/busy")) == 3
            with pytest.raises(httpx.HTTPStatusError):
                api.call("GET", "/missing")
            assert len(site.hits("/missing")) == 1
        finally:
            api.close()
