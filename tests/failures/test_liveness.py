"""Liveness that survives pid reuse and containers (issue 27, item 3): real processes, real pid namespaces (the
kind a container runs in, made with `unshare --pid --fork --mount-proc`), real Postgres.

- A dead run whose recorded pid now belongs to another live process is reconciled: inside a private pid
  namespace the kernel hands out the next pid after /proc/sys/kernel/ns_last_pid, so the dead run's pid is given to
  a new process for real; judged from that namespace, the start time tells them apart. Judged from the host, the
  pid means nothing (another namespace): the run is left to its heartbeat.
- A live run in another pid namespace (a container with host networking: the host's hostname, its own pid) is never
  reconciled from the host, even when its pid is free on the host; once it dies, its heartbeat stops and it is.
- A run whose process ran on this machine and exited, zombie or reaped, is dead; this one is alive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from harvest.db import runs as run_rows
from harvest.db.engine import utcnow
from harvest.liveness import ProcessIdentity, Verdict, judge, this_process
from harvest.retention.policy import RetentionPolicy, sweep
from harvest.storage import LocalStore

POLICY = RetentionPolicy(grace=timedelta(seconds=30))
PREFECT_SAYS_RUNNING = {"flow_run_state": lambda _: "RUNNING"}  # a killed `harvest scrape`'s own API died with it

# Runs as pid 1 of a fresh pid namespace. It starts processes at the pids the test asks for, records runs from them
# the way the flow does (run_rows.create_run), and answers one command per line on stdin.
IN_NAMESPACE = r"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
from datetime import timedelta

db_url = sys.argv[1]
RECORD = '''
import sys, time
from harvest.db import runs
from harvest.db.engine import get_engine
from harvest.liveness import this_process
engine = get_engine(sys.argv[1])
runs.create_run(engine, sys.argv[2], sys.argv[3], {})
print(this_process().key(), flush=True)
while True:  # beat like a running flow (flows/heartbeat.py) until killed
    time.sleep(0.5)
    runs.heartbeat(engine, sys.argv[2])
'''
children = {}


def spawn_at(pid, args):
    # The kernel gives the next process ns_last_pid + 1: this process has no other threads, so nothing else takes it.
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(pid - 1))
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert child.pid == pid, (child.pid, pid)
    return child


def say(**document):
    print(json.dumps(document), flush=True)


for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "record":  # a run whose process lives at `pid`
        child = spawn_at(command["pid"], [sys.executable, "-c", RECORD, db_url, command["run_id"], command["url"]])
        children[command["pid"]] = child
        say(process=child.stdout.readline().strip())
    elif command["do"] == "kill":
        child = children.pop(command["pid"])
        child.send_signal(signal.SIGKILL)
        child.wait()
        say(killed=command["pid"])
    elif command["do"] == "occupy":  # another process, not a run, at `pid`
        children[command["pid"]] = spawn_at(command["pid"], ["sleep", "600"])
        say(occupied=command["pid"])
    elif command["do"] == "sweep":  # the sweep, judging from inside this namespace
        from harvest.db.engine import get_engine
        from harvest.retention.policy import RetentionPolicy, sweep
        from harvest.storage import LocalStore

        report = sweep(get_engine(db_url), LocalStore(Path(command["store"])), RetentionPolicy(grace=timedelta(seconds=30)),
                       flow_run_state=lambda _: "RUNNING")
        say(reconciled=report.reconciled)
    elif command["do"] == "exit":
        break
for child in children.values():
    child.kill()
    child.wait()
"""


class Namespace:
    """A private pid namespace (what a container runs in) driven one command at a time."""

    def __init__(self, db_url: str) -> None:
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", IN_NAMESPACE, db_url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the namespace stopped: {self.process.communicate(timeout=30)[1][-3000:]}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask(do="exit")
            except (AssertionError, BrokenPipeError, ValueError):
                pass
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.process.communicate(timeout=30)


def _can_make_pid_namespaces() -> str | None:
    """Why private pid namespaces cannot be made here, or None when they can."""
    if shutil.which("unshare") is None:
        return "no unshare(1) (util-linux)"
    tried = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "echo 41 > /proc/sys/kernel/ns_last_pid"],
                           capture_output=True, text=True)
    if tried.returncode != 0:
        return f"cannot make a pid namespace and set its next pid (needs CAP_SYS_ADMIN): {tried.stderr.strip()}"
    return None


@pytest.fixture
def namespace(engine) -> Iterator[Namespace]:  # noqa: ANN001
    reason = _can_make_pid_namespaces()
    if reason:
        pytest.skip(reason)
    space = Namespace(engine.url.render_as_string(hide_password=False))
    yield space
    space.close()


def free_host_pid() -> int:
    """A pid no process on the host has right now (the host's old liveness check called such a pid dead)."""
    taken = {int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(pid for pid in range(min(pid_max - 1, 30000), 300, -1) if pid not in taken)


def test_a_dead_run_whose_pid_another_process_took_is_reconciled(engine, namespace, tmp_path) -> None:  # noqa: ANN001
    run_id, pid = str(uuid.uuid4()), 4321
    recorded = namespace.ask(do="record", pid=pid, run_id=run_id, url="https://reused.example/")["process"]
    namespace.ask(do="kill", pid=pid)  # SIGKILLed: nothing recorded its end
    namespace.ask(do="occupy", pid=pid)  # the pid goes to an unrelated process, as pids do
    assert run_rows.get_run(engine, run_id)["status"] == "running"
    assert ProcessIdentity.parse(recorded).pid == pid

    # From the host the pid means nothing (another namespace), and the run beat a moment ago: left alone.
    store = LocalStore(tmp_path)
    assert sweep(engine, store, POLICY, **PREFECT_SAYS_RUNNING).reconciled == []
    assert judge(recorded)[0] is Verdict.UNKNOWN

    # From inside its namespace, pid 4321 is alive, but it is another process (another start time): the run is dead.
    reconciled = namespace.ask(do="sweep", store=str(tmp_path))["reconciled"]
    assert [(item["run_id"], item["status"]) for item in reconciled] == [(run_id, "crashed")]
    assert "that pid is another process now" in reconciled[0]["reason"]
    row = run_rows.get_run(engine, run_id)
    assert (row["status"], row["retention"]) == ("crashed", "kept")


def test_a_live_run_in_another_pid_namespace_is_never_reconciled_from_the_host(
    engine, namespace, tmp_path  # noqa: ANN001
) -> None:
    """The container-style run: the host's hostname, a pid of its own namespace that is free on the host."""
    run_id, pid = str(uuid.uuid4()), free_host_pid()
    recorded = namespace.ask(do="record", pid=pid, run_id=run_id, url="https://container.example/")["process"]
    row = run_rows.get_run(engine, run_id)
    assert (row["host"], row["pid"]) == (os.uname().nodename, pid)
    store = LocalStore(tmp_path)

    for prefect_says in ("RUNNING", None):
        report = sweep(engine, store, POLICY, flow_run_state=lambda _, says=prefect_says: says)
        assert report.reconciled == [], "a live run in a container was reconciled from the host"
    verdict, why = judge(recorded)
    assert verdict is Verdict.UNKNOWN and "another pid namespace" in why
    # Inside its namespace it is seen alive.
    assert namespace.ask(do="sweep", store=str(tmp_path))["reconciled"] == []

    # It dies: its heartbeat stops, and once a grace period has passed without one, the host reconciles it.
    namespace.ask(do="kill", pid=pid)
    later = utcnow() + POLICY.grace + timedelta(seconds=5)
    reconciled = sweep(engine, store, POLICY, now=later, **PREFECT_SAYS_RUNNING).reconciled
    assert [(item["run_id"], item["status"]) for item in reconciled] == [(run_id, "crashed")]
    assert "no heartbeat" in reconciled[0]["reason"] and "another pid namespace" in reconciled[0]["reason"]


def test_a_process_on_this_machine_is_judged_by_its_pid_and_start_time() -> None:
    mine = this_process()
    assert mine is not None and mine.pid == os.getpid()
    assert judge(mine.key())[0] is Verdict.ALIVE

    child = subprocess.Popen([sys.executable, "-c", "from harvest.liveness import this_process;"
                              "print(this_process().key(), flush=True); import time; time.sleep(600)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    key = child.stdout.readline().strip()
    assert judge(key)[0] is Verdict.ALIVE
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert judge(key) == (Verdict.DEAD, f"its process {child.pid} has exited")
    child.wait()
    assert judge(key, "this-host") == (Verdict.DEAD, f"its process {child.pid} on this-host is gone")
    # The same pid with another start time is another process.
    other = ProcessIdentity(mine.boot_id, mine.pid_namespace, mine.pid, mine.started + 1).key()
    assert judge(other)[0] is Verdict.DEAD
    # Rows from before identities were recorded, or from another machine, cannot be judged here.
    assert judge(None)[0] is Verdict.UNKNOWN
    assert judge(f"{uuid.uuid4()}/{mine.pid_namespace}/{mine.pid}/{mine.started}")[0] is Verdict.UNKNOWN
