"""The fleet worker (`harvest sources worker`): a work-pool worker that runs each scheduled flow run in a child forked
from one warm process, so a source's run costs its own work, not a Python start and ~3 s of imports (issue 32).

What a Prefect process worker does for a pool, done over Prefect's REST API: poll the pool for due scheduled flow
runs (`POST /work_pools/{pool}/get_scheduled_flow_runs`: the pool shows Ready in the UI), send worker heartbeats
(the worker is listed under the pool), claim a run by proposing Pending (Prefect's orchestration refuses a second
claim: two fleet workers, or a fleet worker and a `prefect worker`, never run one flow run twice), then run it in a
forked child through Prefect's engine (flows/fleet_child.py). Each run keeps its own flow run, logs, states and
artifacts, and harvest's run row, files and retention; one child per run keeps the worker's memory flat.

The parent must not fork while other threads run (a lock held by one of them stays held in the child for ever): it
talks to the API with a plain httpx client, never Prefect's client (which starts an event-loop thread), never runs
a flow or a hook itself, and refuses to fork when `threading.active_count()` is not 1.

Cancellation (the UI's Cancel sets the flow run Cancelling): the parent sees it at its next poll, signals the child
(fleet_child.CANCEL_SIGNAL: Prefect's engine ends the run Cancelled and runs on_cancellation in the child, once the
tasks running then have ended), and kills it after `cancel_grace` seconds. A child that exits while its flow run is
not final (killed, out of memory, a cancel it could not finish) is settled by a short settling child: the flow's
on_crashed or on_cancellation hooks (harvest's settle the run row), then Crashed or Cancelled. SIGTERM or SIGINT to
the worker: no new claims; running children get `grace` seconds to finish, then are cancelled the same way; a second
signal cancels them at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_incrementing

from flows import fleet_child
from flows.fleet_flows import FlowCache, Resolved
from flows.fleet_warm import warm, warm_resources

logger = logging.getLogger("harvest.fleet_worker")

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# A run whose child exited in one of these states is left as it is: it ended, or Prefect will run it again (a
# retry, a reschedule, a pause that resumes later).
LEFT_ALONE = FINAL | {"SCHEDULED", "PAUSED"}
HEARTBEAT_SECONDS = 30
SETTLE_TIMEOUT = 300.0  # a settling child still alive after this long is killed (its run is then left to the sweep)


def after_exit(state_type: str | None, exitcode: int | None, cancel_sent: bool) -> tuple[str, str] | None:
    """What to do once a run's child has exited: None when its flow run reached a state of its own, else
    (outcome, message) for fleet_child.settle: "cancelled" when it was being cancelled, "crashed" otherwise."""
    if state_type in LEFT_ALONE:
        return None
    how = describe_exit(exitcode)
    if state_type == "CANCELLING" or cancel_sent:
        return "cancelled", f"Flow run was cancelled; its process {how}."
    return "crashed", f"Flow run process {how} while the flow run was {state_type or 'without a state'}."


def describe_exit(exitcode: int | None) -> str:
    """A child's end in words: 'exited with status 1', 'was killed by signal 9 (SIGKILL)'."""
    if exitcode is None:
        return "did not report an exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-exitcode} ({name})"
    return f"exited with status {exitcode}"


def prepare_runs(timeout: float = 120.0) -> bool:
    """Run fleet_child.prepare in a child of its own (it talks to Prefect, which starts threads: never here); whether
    it succeeded. A failure is only logged: each run then does the same itself, and reports what is wrong."""
    assert_fork_safe()
    process = multiprocessing.get_context("fork").Process(target=fleet_child.prepare, name="prepare", daemon=False)
    process.start()
    process.join(timeout)
    if process.is_alive():
        _signal(process.pid, signal.SIGKILL)
        process.join()
    if process.exitcode != 0:
        logger.warning("fleet worker: preparing the runs' result storage block failed (its process %s); each run "
                       "prepares it itself", describe_exit(process.exitcode))
    return process.exitcode == 0


def assert_fork_safe() -> None:
    """Refuse to fork while another thread runs: its locks would stay held in the child."""
    threads = threading.enumerate()
    if len(threads) != 1:
        raise RuntimeError(f"the fleet worker must fork from a single thread; running: {[t.name for t in threads]}")


class Api:
    """Prefect's REST API over a plain httpx client (no threads, no event loop: the parent forks)."""

    def __init__(self, url: str, api_key: str | None = None, auth_string: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        auth = tuple(auth_string.split(":", 1)) if auth_string and ":" in auth_string else None
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, auth=auth, timeout=30)  # type: ignore[arg-type]

    def call(self, method: str, path: str, json: Any = None, attempts: int = 3) -> Any:
        """The response's JSON (None when empty); a busy server (503) or a dropped connection is retried, after
        0.5 s, then 1 s."""
        for attempt in Retrying(stop=stop_after_attempt(attempts), wait=wait_incrementing(start=0.5, increment=0.5),
                                retry=retry_if_exception(_busy_or_dropped), reraise=True):
            with attempt:
                response = self.client.request(method, path, json=json)
                response.raise_for_status()
                return response.json() if response.content else None
        return None

    def close(self) -> None:
        self.client.close()


def _busy_or_dropped(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError) or (
        isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 503)


@dataclass
class Child:
    """A forked process running (or settling) one flow run."""

    flow_run_id: str
    process: Any  # multiprocessing's Process (fork context)
    kind: str  # "run" or "settle"
    env: dict[str, str]
    working_dir: str | None
    started: float = field(default_factory=time.monotonic)
    cancel_sent: float | None = None  # when the cancel signal was sent


@dataclass
class Options:
    """How a fleet worker runs: its pool, name, concurrency, poll period and graces."""

    pool: str
    name: str
    limit: int = 2
    poll_seconds: float = 2.0
    grace: float = 30.0  # on SIGTERM/SIGINT: how long running children may go on before they are cancelled
    # After a cancel signal: how long before the child is killed (Prefect's runner waits 30 s too). The engine's
    # cancellation waits for the tasks running at that moment to end (its thread pool's shutdown) before it sets
    # Cancelled; a child killed before then is cancelled and settled by the worker instead (fleet_child.settle).
    cancel_grace: float = 30.0
    max_runs: int | None = None  # stop (as on SIGTERM, without the grace) after claiming this many runs


def default_name() -> str:
    return f"harvest-fleet-{socket.gethostname()}-{os.getpid()}"


class FleetWorker:
    """The loop: heartbeat, reap, watch cancellations, claim and fork (see the module's docstring)."""

    def __init__(self, api: Api, options: Options) -> None:
        self.api = api
        self.options = options
        self.children: dict[str, Child] = {}  # flow run id -> its running child
        self.settlers: list[Child] = []
        self.claimed = 0
        self.stop_requests = 0
        self.stopping_since: float | None = None
        self.context = multiprocessing.get_context("fork")
        self.pool_env: dict[str, str] = {}
        self.deployments: dict[str, dict[str, Any]] = {}  # id -> the deployment as last read
        self.flows = FlowCache()

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve the pool until stopped (or `max_runs` runs are done); 0 when every child ended cleanly."""
        pool = self.api.call("GET", f"/work_pools/{self.options.pool}")
        self.pool_env = _template_env(pool.get("base_job_template") or {})
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        logger.info("fleet worker %s serving pool %s (limit %d)", self.options.name, self.options.pool,
                    self.options.limit)
        next_heartbeat = next_poll = 0.0
        try:
            while True:
                now = time.monotonic()
                if self._reap():
                    next_poll = now  # a slot is free: look for the next due run now, not at the next poll
                if self.stop_requests or self._done_claiming():
                    self._wind_down(now)
                    if not self.children and not self.settlers:
                        break
                if now >= next_heartbeat:
                    self._quietly(self._heartbeat)
                    next_heartbeat = now + HEARTBEAT_SECONDS
                if now >= next_poll:
                    self._quietly(self._watch_cancellations)
                    if not self.stop_requests and not self._done_claiming():
                        self._quietly(self._claim_due_runs)
                    next_poll = now + self.options.poll_seconds
                self._kill_overdue(time.monotonic())
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info("fleet worker %s stopped after %d runs", self.options.name, self.claimed)
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requests += 1
        logger.warning("fleet worker %s: %s, %s", self.options.name, signal.Signals(signum).name,
                       "cancelling running flow runs now" if self.stop_requests > 1 else
                       f"no new runs; running ones have {self.options.grace:g} s to finish")

    def _done_claiming(self) -> bool:
        return self.options.max_runs is not None and self.claimed >= self.options.max_runs

    def _wind_down(self, now: float) -> None:
        """Stopping: once the grace is over (or at a second signal), cancel what still runs."""
        if not self.stop_requests:
            return  # max_runs reached: the children finish on their own
        if self.stopping_since is None:
            self.stopping_since = now
        if self.stop_requests > 1 or now - self.stopping_since >= self.options.grace:
            for child in self.children.values():
                self._cancel(child, "the fleet worker is stopping")

    def _quietly(self, step: Any) -> None:
        """A step of the loop; an API that fails now is tried again at the next tick, the worker goes on."""
        try:
            step()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("fleet worker %s: %s failed: %s: %s", self.options.name, step.__name__,
                           exc.__class__.__name__, exc)

    def _heartbeat(self) -> None:
        self.api.call("POST", f"/work_pools/{self.options.pool}/workers/heartbeat",
                      json={"name": self.options.name, "heartbeat_interval_seconds": HEARTBEAT_SECONDS})

    # ---- claiming ----------------------------------------------------------------------------------------------

    def _claim_due_runs(self) -> None:
        free = self.options.limit - len(self.children)
        if free <= 0:
            return
        due = self.api.call("POST", f"/work_pools/{self.options.pool}/get_scheduled_flow_runs", json={
            "scheduled_before": datetime.now(UTC).isoformat(), "limit": free * 2 + 2})
        for item in due or []:
            if len(self.children) >= self.options.limit or self.stop_requests or self._done_claiming():
                return
            flow_run = item["flow_run"]
            if flow_run["id"] in self.children or not self._claim(flow_run["id"]):
                continue
            self.claimed += 1
            self._start(flow_run)

    def _claim(self, flow_run_id: str) -> bool:
        """Propose Pending; True when Prefect accepted it (this worker now owns the run)."""
        result = self.api.call("POST", f"/flow_runs/{flow_run_id}/set_state",
                               json={"state": {"type": "PENDING", "name": "Pending"}, "force": False})
        state = (result or {}).get("state") or {}
        return (result or {}).get("status") == "ACCEPT" and state.get("type") == "PENDING"

    def _start(self, flow_run: dict[str, Any]) -> None:
        try:
            deployment = self._deployment(flow_run)
            env, working_dir = self._job_variables(flow_run, deployment)
            resolved = self._resolve(deployment)
            child = self._fork(fleet_child.execute, flow_run["id"], "run", env, working_dir,
                               (flow_run["id"], env, working_dir, resolved))
        except BaseException as exc:  # claimed but not started: never leave it Pending for ever
            crashed = {"state": {"type": "CRASHED", "name": "Crashed", "message": "The fleet worker could not start "
                                 f"it: {exc.__class__.__name__}: {exc}"}, "force": True}
            self._quietly(lambda: self.api.call("POST", f"/flow_runs/{flow_run['id']}/set_state", json=crashed))
            raise
        self.children[flow_run["id"]] = child
        logger.info("fleet worker %s: flow run %s (%s) in process %s", self.options.name, flow_run["id"],
                    flow_run.get("name"), child.process.pid)
        self._quietly(lambda: self.api.call("PATCH", f"/flow_runs/{flow_run['id']}", json={
            "infrastructure_pid": f"{socket.gethostname()}:{child.process.pid}"}))

    def _fork(self, target: Any, flow_run_id: str, kind: str, env: dict[str, str], working_dir: str | None,
              args: tuple[Any, ...]) -> Child:
        assert_fork_safe()
        process = self.context.Process(target=target, args=args, name=f"{kind} {flow_run_id}", daemon=False)
        process.start()
        return Child(flow_run_id, process, kind, env, working_dir)

    def _deployment(self, flow_run: dict[str, Any]) -> dict[str, Any]:
        """The run's deployment as it is now (read for every run, so a redeploy is seen by the next one; the last
        read when the API does not answer); {} for a run without one."""
        deployment_id = flow_run.get("deployment_id")
        if not deployment_id:
            return {}
        try:
            self.deployments[str(deployment_id)] = self.api.call("GET", f"/deployments/{deployment_id}") or {}
        except httpx.HTTPError:
            if str(deployment_id) not in self.deployments:
                raise
            logger.warning("deployment %s could not be read; using it as last read", deployment_id)
        return self.deployments[str(deployment_id)]

    def _resolve(self, deployment: dict[str, Any]) -> Resolved | None:
        """The deployment's flow, resolved once per version (flows/fleet_flows.py); None: Prefect loads it per run."""
        if not deployment:
            return None
        loads = self.flows.loads
        resolved = self.flows.resolve(deployment)
        if self.flows.loads > loads:
            logger.info("fleet worker %s: loaded %s of deployment %s (updated %s) for its runs", self.options.name,
                        deployment.get("entrypoint"), deployment.get("id"), deployment.get("updated"))
        return resolved

    def _job_variables(self, flow_run: dict[str, Any], deployment: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """The run's `env` and `working_dir`: the pool's defaults, the deployment's job variables, the run's own
        (the order a process worker merges them in). Other job variables (a command, a stream setting) are a
        process worker's and ignored here."""
        merged: dict[str, Any] = dict(deployment.get("job_variables") or {})
        merged.update(flow_run.get("job_variables") or {})
        env = {**self.pool_env, **{k: str(v) for k, v in (merged.get("env") or {}).items() if v is not None}}
        return env, merged.get("working_dir") or None

    # ---- cancellation and the end of children ------------------------------------------------------------------

    def _watch_cancellations(self) -> None:
        if not self.children:
            return
        cancelling = self.api.call("POST", "/flow_runs/filter", json={
            "flow_runs": {"id": {"any_": list(self.children)}, "state": {"type": {"any_": ["CANCELLING"]}}},
            "limit": len(self.children)})
        for flow_run in cancelling or []:
            child = self.children.get(str(flow_run["id"]))
            if child is not None:
                self._cancel(child, "its flow run is Cancelling")

    def _cancel(self, child: Child, why: str) -> None:
        if child.cancel_sent is not None or child.process.pid is None:
            return
        child.cancel_sent = time.monotonic()
        logger.info("fleet worker %s: cancelling flow run %s (%s)", self.options.name, child.flow_run_id, why)
        _signal(child.process.pid, fleet_child.CANCEL_SIGNAL)

    def _kill_overdue(self, now: float) -> None:
        for child in self.children.values():
            if child.cancel_sent is not None and now - child.cancel_sent >= self.options.cancel_grace:
                _signal(child.process.pid, signal.SIGKILL)
        for settler in self.settlers:
            if now - settler.started >= SETTLE_TIMEOUT:
                _signal(settler.process.pid, signal.SIGKILL)

    def _reap(self) -> bool:
        """Join the children that exited (settling their runs if need be); True when a run's child was among them."""
        freed = False
        for flow_run_id, child in list(self.children.items()):
            if child.process.is_alive():
                continue
            child.process.join()
            del self.children[flow_run_id]
            freed = True
            self._after(child)
        for settler in list(self.settlers):
            if not settler.process.is_alive():
                settler.process.join()
                self.settlers.remove(settler)
        return freed

    def _after(self, child: Child) -> None:
        """A run's child exited: settle its flow run unless it reached a state of its own."""
        exitcode = child.process.exitcode
        try:
            flow_run = self.api.call("GET", f"/flow_runs/{child.flow_run_id}") or {}
        except httpx.HTTPError as exc:  # the API is away: settle anyway; the settling child reads the state again
            logger.warning("flow run %s: its state could not be read (%s)", child.flow_run_id, exc)
            flow_run = {}
        state_type = (flow_run.get("state") or {}).get("type")
        decided = after_exit(state_type, exitcode, child.cancel_sent is not None)
        logger.info("fleet worker %s: flow run %s ended %s, its process %s", self.options.name, child.flow_run_id,
                    state_type, describe_exit(exitcode))
        if decided is None:
            return
        outcome, message = decided
        self.settlers.append(self._fork(fleet_child.settle, child.flow_run_id, "settle", child.env,
                                        child.working_dir, (child.flow_run_id, outcome, message, child.env,
                                                            child.working_dir)))


def _signal(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _template_env(base_job_template: dict[str, Any]) -> dict[str, str]:
    """The `env` default of a process pool's base job template (what a process worker gives every run)."""
    default = ((base_job_template.get("variables") or {}).get("properties") or {}).get("env", {}).get("default")
    return {str(k): str(v) for k, v in (default or {}).items() if v is not None}


def _secret(value: Any) -> str | None:
    """A setting's value, a SecretStr's unwrapped; None when unset."""
    if value is None:
        return None
    return str(value.get_secret_value() if hasattr(value, "get_secret_value") else value) or None


def serve(options: Options) -> int:
    """Warm the flow code, then serve the pool until stopped (`harvest sources worker`); how many runs it claimed."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ValueError("the fleet worker needs a Prefect server: set PREFECT_API_URL (as for `prefect worker`)")
    missing = warm()
    warm_resources()
    prepare_runs()
    if missing:
        logger.info("fleet worker: not installed, imported by the runs that need them: %s", ", ".join(missing))
    api = Api(url, _secret(PREFECT_API_KEY.value()), _secret(PREFECT_API_AUTH_STRING.value()))
    try:
        assert_fork_safe()
        worker = FleetWorker(api, options)
        worker.run()
        return worker.claimed
    finally:
        api.close()
