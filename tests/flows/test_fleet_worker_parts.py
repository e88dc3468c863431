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
    code = ("import threading; from flows.fleet_warm import warm, warm_resources, WARM_MODULES; "
            "from flows.fleet_worker import assert_fork_safe; "
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


SET_DIRECTORY = "prefect.deployments.steps.set_working_directory"


def _deployment(updated: str, entrypoint: str = "flows/scrape.py:scrape_website", directory: str = str(ROOT),
                deployment_id: str = "d1") -> dict[str, object]:
    return {"id": deployment_id, "updated": updated, "entrypoint": entrypoint,
            "pull_steps": [{SET_DIRECTORY: {"directory": directory}}]}


def test_only_a_literal_working_directory_pull_step_is_resolved_in_the_parent() -> None:
    from flows.fleet_flows import working_directory

    assert working_directory([{SET_DIRECTORY: {"directory": "/app"}}]) == "/app"
    assert working_directory([{"prefect.deployments.steps.pull.set_working_directory": {"directory": "/app",
                                                                                         "id": "cd"}}]) == "/app"
    assert working_directory(None) is None and working_directory([]) is None  # Prefect downloads from storage
    assert working_directory([{SET_DIRECTORY: {"directory": "{{ prefect.variables.dir }}"}}]) is None
    assert working_directory([{SET_DIRECTORY: {"directory": "relative"}}]) is None
    assert working_directory([{SET_DIRECTORY: {"directory": "/app", "requires": "x"}}]) is None
    assert working_directory([{"prefect.deployments.steps.git_clone": {"repository": "https://x"}}]) is None
    assert working_directory([{SET_DIRECTORY: {"directory": "/app"}},
                              {"prefect.deployments.steps.run_shell_script": {"script": "true"}}]) is None


def test_the_flow_is_loaded_once_per_deployment_version_and_again_when_it_changes() -> None:
    """The warm flow code's deployment: loaded in this process once for its `updated`, the same object for every
    run; a redeploy (a new `updated`) loads it again; another deployment has its own entry."""
    import flows.scrape  # noqa: F401 - the warm parent has imported it
    from flows.fleet_flows import FlowCache

    cache = FlowCache()
    first = cache.resolve(_deployment("2026-12-07T10:00:00Z"))
    assert first is not None and first.flow is not None and first.flow.name == "scrape-website"
    assert (first.directory, first.entrypoint) == (str(ROOT), "flows/scrape.py:scrape_website")
    again = cache.resolve(_deployment("2026-12-07T10:00:00Z"))
    assert again is first and cache.loads == 1
    redeployed = cache.resolve(_deployment("2026-12-07T11:00:00Z"))
    assert redeployed is not None and redeployed.flow is not first.flow and cache.loads == 2
    assert cache.resolve(_deployment("2026-12-07T11:00:00Z")) is redeployed and cache.loads == 2
    other = cache.resolve(_deployment("2026-12-07T11:00:00Z", deployment_id="d2"))
    assert other is not None and other is not redeployed and cache.loads == 3
    assert set(cache.entries) == {"d1", "d2"}  # one entry per deployment: the old version is gone


def test_a_deployment_that_needs_its_pull_steps_or_unknown_code_is_left_to_the_child(tmp_path: Path) -> None:
    """A git clone is Prefect's load_flow's to run (None); a script the parent never imported is not executed here:
    the child loads it itself (resolved, without a flow object)."""
    from flows.fleet_flows import FlowCache

    script = tmp_path / "elsewhere.py"
    script.write_text("from prefect import flow\n\n@flow\ndef elsewhere() -> None:\n    pass\n")
    cache = FlowCache()
    cloned = {**_deployment("1"), "pull_steps": [{"prefect.deployments.steps.git_clone": {"repository": "x"}}]}
    assert cache.resolve(cloned) is None
    resolved = cache.resolve(_deployment("1", entrypoint="elsewhere.py:elsewhere", directory=str(tmp_path)))
    assert resolved is not None and resolved.flow is None and resolved.directory == str(tmp_path)
    assert cache.loads == 0 and "elsewhere" not in sys.modules
