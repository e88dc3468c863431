"""Issue 28: Ctrl-C at a terminal stops a run cleanly. The terminal sends SIGINT to the whole foreground process
group (harvest, Prefect's temporary API server it started, Chromium, the image workers), so that is what these
tests send, to a `harvest scrape` whose stdin, stdout and stderr are a pseudo-terminal in a session of its own.

The first Ctrl-C settles the run row as `cancelled` (files kept), prints one line naming the run and the command
that resumes it, and exits 130; nothing is left `running`, and no process of the group outlives it. Mid-crawl
(pages that take seconds each) and mid-enrichment (an embeddings batch that never completes).
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.hostile_site import HostileSite
from tests.cli_support import HARVEST
from tests.failures.support import all_runs, run_row, wait_for
from tests.helpers import seed_prefect_home

SLOW_PAGES = 40


class Terminal:
    """`harvest` on a pseudo-terminal, in a new session (so its process group is its own, as a shell job's)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        # PYTHONFAULTHANDLER: a hang is diagnosed by SIGABRT, which then prints every thread's stack (wait())
        self.process = subprocess.Popen([HARVEST, *args], env={**env, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"},
                                        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            if not data:
                return
            self._chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def ctrl_c(self) -> float:
        """SIGINT to the whole process group, as the terminal sends it; returns when it was sent."""
        os.killpg(self.process.pid, signal.SIGINT)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        """The exit code; a command still running after `timeout` fails the test with every thread's stack."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler dumps the threads to the terminal
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            self._reader.join(timeout=5)
            pytest.fail(f"harvest did not exit within {timeout:.0f}s; its threads:\n{self.text[-12000:]}")
        self._reader.join(timeout=5)
        return code

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self.process.poll() is None or self.group_alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)
        os.close(self._master)


@pytest.fixture
def slow_site() -> Iterator[tuple[HostileSite, threading.Event]]:
    """A site whose pages each take 3 s while `slow` is set (a resumed crawl later finds it fast)."""
    slow = threading.Event()
    slow.set()
    links = "".join(f'<li><a href="/page/{n}">activity {n}</a></li>' for n in range(SLOW_PAGES))
    with HostileSite() as site:
        site.page("/", f"<html><body><ul>{links}</ul></body></html>")
        body = ('<html><head><script type="application/ld+json">{{"@context": "https://schema.org", "@type": "Event",'
                ' "name": "Story time {n}", "startDate": "2031-05-01"}}</script></head><body>Story time</body></html>')

        def page(req) -> None:  # noqa: ANN001 - the loopback handler
            if slow.is_set():
                time.sleep(3)
            number = req.path.rsplit("/", 1)[-1]
            req.send_bytes(200, body.format(n=number).encode(), "text/html; charset=utf-8")

        for n in range(SLOW_PAGES):
            site.route(f"/page/{n}", page)
        yield site, slow


def _cli_env(harvest_env: dict[str, str], tmp_path: Path, server: str) -> dict[str, str]:
    """The test services, a PREFECT_HOME and HARVEST_HOME of its own, and how the command gets its Prefect API
    (HARVEST_PREFECT_SERVER: a server of its own session, or Prefect's temporary one inside the job)."""
    return {**os.environ, **harvest_env, "PREFECT_HOME": str(seed_prefect_home(tmp_path / "prefect-cli")),
            "HARVEST_HOME": str(tmp_path / "harvest-home"), "HARVEST_PREFECT_SERVER": server}


def _assert_cancelled_cleanly(terminal: Terminal, sent: float, db_url: str, *, quiet: bool = True) -> str:
    code = terminal.wait(120)
    took = time.monotonic() - sent
    text = terminal.text
    assert code == 130, text[-4000:]
    rows = all_runs(db_url)
    assert len(rows) == 1, rows
    run_id = rows[0]["id"]
    assert (rows[0]["status"], rows[0]["retention"]) == ("cancelled", "kept"), rows[0]
    assert rows[0]["expires_at"] is not None
    assert f"run {run_id} cancelled" in text and f"harvest runs resume {run_id}" in text, text[-4000:]
    if quiet:  # nothing but the command's own lines: no traceback from harvest, its workers or its server
        assert "Traceback" not in text and "ConnectError" not in text, text[-4000:]
    assert took < 60, f"the first Ctrl-C took {took:.0f}s to stop the run"
    try:
        wait_for(lambda: not terminal.group_alive(), 30, "every process of the job to end")  # and no stray worker
    except AssertionError:  # which processes stayed, for whoever reads the failure
        print(subprocess.run(["ps", "-ww", "-o", "pid,ppid,pgid,stat,etime,args", "-g", str(terminal.process.pid)],
                             capture_output=True, text=True).stdout)
        raise
    return run_id


def test_ctrl_c_mid_crawl_cancels_the_run_and_it_resumes(harvest_env, slow_site, tmp_path) -> None:
    site, slow = slow_site
    env = _cli_env(harvest_env, tmp_path, "temporary")
    terminal = Terminal(["scrape", site.base_url + "/", "--max-pages", str(SLOW_PAGES + 1), "--render", "http"], env)
    try:
        wait_for(lambda: terminal.process.poll() is not None or len(site.hits()) >= 4 and all_runs(
            harvest_env["HARVEST_DATABASE_URL"]), 300, "the crawl to be under way", interval=0.2)
        assert terminal.process.poll() is None, terminal.text[-4000:]
        sent = terminal.ctrl_c()
        run_id = _assert_cancelled_cleanly(terminal, sent, harvest_env["HARVEST_DATABASE_URL"])
    finally:
        terminal.close()
    fetched = len(site.hits())
    time.sleep(2)
    assert len(site.hits()) == fetched, "nothing fetches after the run stopped"

    slow.clear()
    resumed = subprocess.run([HARVEST, "runs", "resume", run_id, "--json"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_row(harvest_env["HARVEST_DATABASE_URL"], run_id)["status"] == "completed"


@pytest.mark.parametrize("server", ["background", "prefect"])
def test_ctrl_c_mid_enrichment_cancels_the_run(harvest_env, demo_site, openai_server, tmp_path, server) -> None:
    """background: the server is out of the job and keeps running; prefect: Prefect's temporary server is in the
    job and dies with the Ctrl-C (its own dying words reach the terminal), and the run is settled without it."""
    openai_server.configure(polls_until_complete=1_000_000)  # the embeddings batch never completes
    db_url = harvest_env["HARVEST_DATABASE_URL"]
    # The image workers are started as a big run's are (a run with few images converts them in its threads).
    env = {**_cli_env(harvest_env, tmp_path, server), "HARVEST_BATCH_MAX_WAIT_SECONDS": "900",
           "HARVEST_IMAGE_POOL_FROM": "0"}
    terminal = Terminal(["scrape", demo_site.base_url + "/", "--max-pages", "30", "--max-extractions", "10"], env)
    try:
        def polling() -> bool:
            if terminal.process.poll() is not None:
                raise AssertionError(f"harvest ended early: {terminal.text[-3000:]}")
            return len(all_runs(db_url)) == 1 and openai_server.stats().get("batches.retrieve", 0) >= 2

        wait_for(polling, 300, "the run to sit in its embeddings poll", interval=0.2)
        sent = terminal.ctrl_c()
        run_id = _assert_cancelled_cleanly(terminal, sent, db_url, quiet=server != "prefect")
    finally:
        terminal.close()
        if server == "background":
            status = subprocess.run([HARVEST, "server", "status", "--json"], env=env, capture_output=True, text=True)
            stopped = subprocess.run([HARVEST, "server", "stop"], env=env, capture_output=True, text=True)
    row = run_row(db_url, run_id)
    assert row["steps"].get("crawl") and row["steps"].get("standardize"), "the finished steps are recorded"
    if server == "background":
        assert '"running": true' in status.stdout, "the server outlived the Ctrl-C, for the next command"
        assert "stopped the local Prefect server" in stopped.stdout


@pytest.mark.parametrize("how", ["harvest-alone", "twice"])
def test_ctrl_c_to_harvest_alone_or_twice(harvest_env, slow_site, tmp_path, how) -> None:
    """SIGINT to harvest's process only (a `kill -INT`; Prefect's temporary server, in the job, stays up), or a
    second Ctrl-C right after the first (it forces the exit): the run is settled `cancelled` either way."""
    site, _ = slow_site
    env = _cli_env(harvest_env, tmp_path, "prefect")
    terminal = Terminal(["scrape", site.base_url + "/", "--max-pages", str(SLOW_PAGES + 1), "--render", "http"], env)
    try:
        wait_for(lambda: terminal.process.poll() is not None or len(site.hits()) >= 4 and all_runs(
            harvest_env["HARVEST_DATABASE_URL"]), 300, "the crawl to be under way", interval=0.2)
        assert terminal.process.poll() is None, terminal.text[-4000:]
        if how == "harvest-alone":
            terminal.process.send_signal(signal.SIGINT)
            sent = time.monotonic()
        else:
            sent = terminal.ctrl_c()
            wait_for(lambda: "Ctrl-C again to force" in terminal.text, 30, "the first Ctrl-C to be seen")
            terminal.ctrl_c()
        _assert_cancelled_cleanly(terminal, sent, harvest_env["HARVEST_DATABASE_URL"], quiet=how == "harvest-alone")
    finally:
        terminal.close()


HELD_LOCK = textwrap.dedent("""
    import sys, threading, time
    from harvest_cli import interrupt

    held = threading.Lock()
    interrupt.before_exit(lambda: held.acquire())  # an exit step that needs what the interrupted code holds
    with interrupt.guard(sys.argv[1]):
        try:
            with held:
                print("ready", flush=True)
                while True:
                    time.sleep(0.05)
        except KeyboardInterrupt:
            with held:  # unwinding takes the lock again, and the second Ctrl-C lands while it is held
                print("unwinding", flush=True)
                while True:
                    time.sleep(0.05)
""")


def test_a_second_ctrl_c_leaves_while_the_interrupted_code_holds_a_lock_the_exit_needs(harvest_env, tmp_path) -> None:
    """The forced exit runs on the watchdog thread with a deadline for each step, not in the signal handler: run
    inside the handler, an exit step waiting on a lock the interrupted main thread holds (Popen's wait lock while
    Prefect's temporary server is stopped) deadlocked the main thread, and the watchdog then waited on the same lock
    for ever (a CI run: `harvest` still running 120 s after two Ctrl-C)."""
    script = tmp_path / "held_lock.py"
    script.write_text(HELD_LOCK)
    process = subprocess.Popen([sys.executable, str(script), harvest_env["HARVEST_DATABASE_URL"]], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        assert process.stdout.readline().strip() == "unwinding"
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(120)
        except subprocess.TimeoutExpired:
            pytest.fail("a second Ctrl-C did not make the process leave")
        stderr = process.stderr.read() if process.stderr else ""
        assert code == 130, stderr
        assert stderr.count("harvest: interrupted before a run was recorded") == 1, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
