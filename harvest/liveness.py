"""Is the process that runs a run still alive? Answered only where the answer is sound.

A pid alone says little: pids repeat (after a restart, and all the time in containers, where a flow run is pid ~7),
and a container with host networking reports the host's hostname with its own pid. So a run records its process
*identity*: the kernel's boot id, the pid namespace, the pid and the process's start time (in clock ticks since
boot, from /proc). Another process can judge it only when it shares that kernel and that pid namespace: then the
pid means the same process table, and a pid that is missing, or that now belongs to a process started at another
time, is proof of death. Anywhere else (another machine, another container, a kernel booted since, a system
without /proc) the verdict is UNKNOWN, and the caller lets the heartbeat decide (Prefect's flow-run heartbeats and
its zombie automation, or the run row's own heartbeat: docs/operating.md, "Liveness").
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

PROC = Path("/proc")


class Verdict(Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProcessIdentity:
    """Who runs a run: enough to tell that very process from any later one with the same pid."""

    boot_id: str
    pid_namespace: str
    pid: int
    started: int
    """Start time in clock ticks since boot (/proc/<pid>/stat, field 22)."""

    def key(self) -> str:
        """The stored form (`scrape_runs.process`): `<boot id>/<pid namespace>/<pid>/<start ticks>`."""
        return f"{self.boot_id}/{self.pid_namespace}/{self.pid}/{self.started}"

    @classmethod
    def parse(cls, key: str | None) -> ProcessIdentity | None:
        """The identity a key names; None for a missing or malformed key (a row from before it was recorded)."""
        parts = (key or "").split("/")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit() or not all(parts[:2]):
            return None
        return cls(boot_id=parts[0], pid_namespace=parts[1], pid=int(parts[2]), started=int(parts[3]))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@cache
def _kernel() -> tuple[str, str] | None:
    """(boot id, pid namespace) of this process; None without a Linux /proc. Neither changes while it lives."""
    boot_id = _read(PROC / "sys/kernel/random/boot_id")
    try:
        namespace = os.readlink(PROC / "self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return None
    if not boot_id:
        return None
    return boot_id, namespace.removeprefix("pid:").strip("[]")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a process in this process's pid namespace; None when /proc has no such pid."""
    text = _read(PROC / str(pid) / "stat")
    if text is None:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": the command may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def this_process() -> ProcessIdentity | None:
    """This process's identity; None where it cannot be known (no /proc: the heartbeat alone will judge it)."""
    kernel = _kernel()
    stat = _stat(os.getpid())
    if kernel is None or stat is None:
        return None
    return ProcessIdentity(boot_id=kernel[0], pid_namespace=kernel[1], pid=os.getpid(), started=stat[1])


def this_host() -> str:
    return socket.gethostname()


def judge(key: str | None, host: str | None = None) -> tuple[Verdict, str]:
    """Whether the process a stored key names is alive, and why (`host`, its recorded hostname, only names it).
    DEAD and ALIVE only on proof (see the module docstring); UNKNOWN whenever this process cannot see that
    process's table."""
    recorded = ProcessIdentity.parse(key)
    if recorded is None:
        return Verdict.UNKNOWN, "no process identity recorded"
    kernel = _kernel()
    if kernel is None:
        return Verdict.UNKNOWN, "this system has no /proc to check a process in"
    if recorded.boot_id != kernel[0]:
        return Verdict.UNKNOWN, "it ran under another kernel (another machine, or before a reboot)"
    if recorded.pid_namespace != kernel[1]:
        return Verdict.UNKNOWN, "it ran in another pid namespace (a container)"
    process = f"its process {recorded.pid}" + (f" on {host}" if host else "")
    stat = _stat(recorded.pid)
    if stat is None:
        try:
            os.kill(recorded.pid, 0)
        except ProcessLookupError:
            return Verdict.DEAD, f"{process} is gone"
        except PermissionError:
            pass
        return Verdict.UNKNOWN, f"{process} exists but /proc does not show it"
    state, started = stat
    if started != recorded.started:
        return Verdict.DEAD, f"{process} is gone (that pid is another process now)"
    if state in ("Z", "X"):
        return Verdict.DEAD, f"{process} has exited"
    return Verdict.ALIVE, f"{process} is running"
