"""Ctrl-C during a run: the first stops it cleanly, a second forces.

The first SIGINT settles this process's running runs in the database right away, from a thread of its own:
status `cancelled`, files kept, open budget holds released (harvest.retention.reconcile_run, the sweep's own
step). Only then is the main thread unwound (KeyboardInterrupt), which stops the crawl, the task runner and
Prefect's engine. The settle needs nothing from Prefect on purpose: when Ctrl-C reaches the whole process group
(a terminal sends it to every process of the foreground job), Prefect's temporary API server may be dying with
it, and waiting on it took minutes and left the row `running`. If unwinding has not finished GRACE_SECONDS
later, or on a second Ctrl-C, the process leaves at once (os._exit: threads blocked on a dead API are not waited
for). Either way it exits 130 with one line naming the run and the command that resumes it.

The forced exit runs on the watchdog thread, never in the signal handler: a handler runs on the main thread in
the middle of whatever it was doing, and the exit's own steps (stopping Prefect's temporary server waits on its
Popen's lock; saying the outcome takes a lock) could wait forever on a lock that interrupted code held, with the
watchdog then stuck behind the same lock. That is the likely cause of a CI run where `harvest` was still running
120 s after two Ctrl-C (1 run in 4; not reproduced alone in 24 runs, while tests/test_cli_interrupt.py reproduces
the deadlock itself). The handler only wakes the watchdog, and every step before os._exit has a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from harvest_cli.errors import ExitCode

GRACE_SECONDS = 20.0  # from the first Ctrl-C to a forced exit, if the run has not stopped by then
SETTLE_WAIT_SECONDS = 15.0  # how long a forced exit waits for the database write that settles the run
CALLBACKS_WAIT_SECONDS = 10.0  # how long a forced exit waits for its callbacks (a temporary server's stop)
WHY = "stopped by an interrupt (Ctrl-C)"
_BEFORE_EXIT: list[Callable[[], None]] = []


def before_exit(callback: Callable[[], None]) -> None:
    """Run `callback` before a forced exit too (os._exit skips atexit): stopping a temporary server."""
    _BEFORE_EXIT.append(callback)


class Interrupts:
    """SIGINT handling for one command that runs flows in this process (use `guard()`)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.count = 0
        self.settled: list[str] = []
        self._settle_done = threading.Event()
        self._force_now = threading.Event()
        self._said = threading.Lock()
        self._done_saying = False

    @property
    def triggered(self) -> bool:
        return self.count > 0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            _silence()
            with contextlib.suppress(RuntimeError):  # a write to stderr that this signal interrupted (reentrant)
                sys.stderr.write("\nharvest: stopping (Ctrl-C again to force) ...\n")
                sys.stderr.flush()
            threading.Thread(target=self._settle, name="harvest-settle", daemon=True).start()
            threading.Thread(target=self._watchdog, name="harvest-interrupt-watchdog", daemon=True).start()
            raise KeyboardInterrupt
        self._force_now.set()  # the watchdog leaves now; nothing here may wait (see the module's docstring)

    def force(self) -> None:
        """Leave now: wait (bounded) for the settle, say what became of the run, run the exit callbacks (bounded),
        exit 130. Called on the watchdog thread, never from the signal handler."""
        self._settle_done.wait(SETTLE_WAIT_SECONDS)
        self.say()
        callbacks = threading.Thread(target=_run_exit_callbacks, name="harvest-exit-callbacks", daemon=True)
        callbacks.start()
        callbacks.join(CALLBACKS_WAIT_SECONDS)
        os._exit(int(ExitCode.INTERRUPTED))

    def finish(self) -> str:
        """The main thread unwound: wait for the settle; what became of the run (the caller says it with `say()`
        once the live display is gone, and exits 130)."""
        self._settle_done.wait(SETTLE_WAIT_SECONDS)
        return self.outcome()

    def say(self, text: str | None = None) -> None:
        """Print what became of the run (`text`, else asked of the database now), once: by the main thread at its
        end, or by a forced exit, whichever comes first (the other then prints nothing)."""
        if text is None:
            try:
                text = self.outcome()
            except Exception:  # noqa: BLE001 - the exit goes on whatever the database does
                text = "harvest: interrupted"
        with self._said:
            if self._done_saying:
                return
            with contextlib.suppress(Exception):
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            self._done_saying = True

    def outcome(self) -> str:
        if not self.settled:
            return "harvest: interrupted before a run was recorded; nothing to resume"
        return "\n".join(f"harvest: run {run_id} {status}; its files are kept. Resume it with: harvest runs resume "
                         f"{run_id}" for run_id, status in _statuses(self.database_url, self.settled).items())

    def _watchdog(self) -> None:
        self._force_now.wait(GRACE_SECONDS)  # a second Ctrl-C, or the grace ran out
        self.force()

    def _settle(self) -> None:
        try:
            self.settled = settle_running_runs(self.database_url)
        except Exception as exc:  # noqa: BLE001 - the line must still be said; the sweep settles the row later
            sys.stderr.write(f"harvest: could not record the cancellation ({exc}); `harvest sweep` will\n")
        finally:
            self._settle_done.set()


def settle_running_runs(database_url: str, attempts: int = 20) -> list[str]:
    """Mark every run this process is running as `cancelled` (files kept, holds released); their ids.

    A row another thread of the run holds locked right now is skipped by reconcile_run (SKIP LOCKED), so it is
    tried again shortly, a few times; a row that ended meanwhile (its flow's hook got there first) is left as
    it is, and still named."""
    from harvest.db.engine import get_engine, utcnow
    from harvest.db.runs import get_run, list_runs
    from harvest.retention.policy import policy_from, reconcile_run
    from harvest.settings import get_settings

    engine = get_engine(database_url)
    policy = policy_from(get_settings())
    host, pid = socket.gethostname(), os.getpid()
    mine = [row["id"] for row in list_runs(engine, limit=1000, status="running")
            if row.get("host") == host and row.get("pid") == pid]
    for run_id in mine:
        for _ in range(attempts):
            if reconcile_run(engine, policy, run_id, "cancelled", WHY, utcnow()):
                break
            row = get_run(engine, run_id)
            if row is None or row["status"] != "running":
                break
            time.sleep(0.1)
    return mine


def _statuses(database_url: str, run_ids: list[str]) -> dict[str, str]:
    """Each run's status now (after the engine's own handling of the interrupt)."""
    try:
        from harvest.db.engine import get_engine
        from harvest.db.runs import get_run

        engine = get_engine(database_url)
        return {run_id: str((get_run(engine, run_id) or {}).get("status", "unknown")) for run_id in run_ids}
    except Exception:  # noqa: BLE001 - the line is said anyway
        return {run_id: "cancelled" for run_id in run_ids}


def _run_exit_callbacks() -> None:
    """What atexit would have done, which a forced exit skips; a failing callback does not stop the others."""
    for callback in [*_BEFORE_EXIT, _stop_prefect_temporary_servers]:
        with contextlib.suppress(Exception):
            callback()


def _stop_prefect_temporary_servers() -> None:
    """Prefect's own temporary API server (HARVEST_PREFECT_SERVER=prefect) is stopped by an atexit hook, which a
    forced exit skips: stop it here, or it outlives the command when the Ctrl-C reached harvest alone."""
    module = sys.modules.get("prefect.server.api.server")
    for server in list(getattr(getattr(module, "SubprocessASGIServer", None), "_instances", {}).values()):
        server.stop()


def _silence() -> None:
    """After Ctrl-C, what is being torn down must not print: Prefect's log lines about a crash it is recording,
    and tracebacks of threads that lose their API (the interrupt's own line says what happened)."""
    logging.disable(logging.CRITICAL)
    threading.excepthook = lambda args: None


@contextmanager
def guard(database_url: str) -> Iterator[Interrupts]:
    """Handle Ctrl-C as above while the block runs (in the main thread; elsewhere it is a plain block)."""
    interrupts = Interrupts(database_url)
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous: Any = signal.signal(signal.SIGINT, interrupts.handle)
    try:
        yield interrupts
    finally:
        if not interrupts.triggered:
            signal.signal(signal.SIGINT, previous)
