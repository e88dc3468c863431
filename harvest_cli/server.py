"""The Prefect API a `harvest` command runs its flows against, when no PREFECT_API_URL is configured.

Why: Prefect's own answer to "no API configured" is a temporary server started inside every command, in the
command's process group: 5-20 s per command before anything runs (a new PREFECT_HOME migrates its database
first), and a Ctrl-C at the terminal killed it mid-run, so the run could not record its end (issue 28).

`HARVEST_PREFECT_SERVER` chooses:
- `background` (the default): a local `prefect server start` kept running under HARVEST_HOME, started by the first
  command that needs it, reused by every later one (its address and process in HARVEST_HOME/prefect-server.json,
  its log in prefect-server.log), UI included. `harvest server status|start|stop` manage it.
- `temporary`: the same server started for this command only and stopped when it ends (CI, scripts: nothing is
  left running).
- `prefect`: leave it to Prefect (its temporary server inside this command's process group, as before).
In the first two the server runs in a session of its own, so Ctrl-C at the terminal reaches harvest, not the server,
and uses PREFECT_HOME's database, the one Prefect's temporary server used, so earlier runs stay resumable. If
it cannot start, the command falls back to Prefect's own temporary server and says so.

Nothing here imports Prefect: the API address must be in the environment before Prefect reads its settings.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

MODE_VARIABLE = "HARVEST_PREFECT_SERVER"
Mode = Literal["background", "temporary", "prefect"]
MODES: tuple[Mode, ...] = ("background", "temporary", "prefect")
DEFAULT_STARTUP_SECONDS = 180.0  # a first start migrates a new database: 30 s and more on a loaded 2-core machine
HEALTH_TIMEOUT_SECONDS = 2.0


def harvest_home() -> Path:
    return Path(os.environ.get("HARVEST_HOME") or Path.home() / ".harvest").expanduser()


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def mode() -> Mode:
    value = os.environ.get(MODE_VARIABLE, "background").strip().lower()
    for known in MODES:
        if value == known:
            return known
    from harvest_cli.errors import CliError

    raise CliError(f"{MODE_VARIABLE}={value!r}: use background (a local Prefect server kept running), temporary "
                   "(one per command) or prefect (Prefect's own temporary server)")


@dataclass
class LocalServer:
    """A `prefect server start` harvest started: the leader of its own process group."""

    pid: int
    port: int
    prefect_home: str
    prefect_version: str
    log: str
    started_at: float
    mode: str = "background"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def healthy(self) -> bool:
        # Here: urllib.request (http.client, ssl, email) cost every command ~0.04 CPU-s at startup (harvest_cli.main
        # imports this module), most of which never ask the server anything.
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=HEALTH_TIMEOUT_SECONDS) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float) -> bool:
        """Poll /health until it answers (True), the process dies or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return True
            if not self.alive():
                return False
            time.sleep(0.2)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its process group (the server and what it started), SIGKILL if it lingers."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, os.WNOHANG)  # reap it when it is our child (a temporary server)
                if not self.alive():
                    return
                time.sleep(0.1)


def record_path() -> Path:
    return harvest_home() / "prefect-server.json"


def log_path() -> Path:
    return harvest_home() / "prefect-server.log"


def recorded() -> LocalServer | None:
    """The background server this HARVEST_HOME recorded, if the record is readable."""
    try:
        data = json.loads(record_path().read_text("utf-8"))
        return LocalServer(**data)
    except (OSError, ValueError, TypeError):
        return None


def _prefect_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect")
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One command at a time decides whether to start the background server (two at once would start two)."""
    home = harvest_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "prefect-server.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(server_mode: str) -> LocalServer:
    """Start `prefect server start` on a free loopback port in a session of its own, its output to the log."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    harvest_home().mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"})
    with open(log_path(), "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} harvest starts prefect server on port {port} "
                  f"({server_mode})\n".encode())
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            close_fds=True,
        )
    return LocalServer(pid=process.pid, port=port, prefect_home=str(home), prefect_version=_prefect_version(),
                       log=str(log_path()), started_at=time.time(), mode=server_mode)


def reusable(server: LocalServer | None) -> bool:
    """A recorded server this command may use: same PREFECT_HOME and Prefect version, alive."""
    return (server is not None and server.prefect_home == str(prefect_home())
            and server.prefect_version == _prefect_version() and server.alive())


@dataclass
class Api:
    """What a command uses: the server (None: Prefect's own temporary one) and whether this command started it."""

    server: LocalServer | None
    started: bool

    def ready(self, timeout: float) -> bool:
        return self.server is None or self.server.wait_healthy(timeout)


def startup_seconds() -> float:
    try:
        return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or DEFAULT_STARTUP_SECONDS)
    except ValueError:
        return DEFAULT_STARTUP_SECONDS


def begin() -> Api:
    """Point this process at a Prefect API before Prefect is imported; the server may still be starting (wait
    with `Api.ready`, so its start overlaps this command's imports). PREFECT_API_URL in the environment wins."""
    server_mode = mode()
    if os.environ.get("PREFECT_API_URL") or profile_api_url() or server_mode == "prefect":
        return Api(None, started=False)
    if "prefect" in sys.modules:  # imported already (a test's CliRunner): its settings are read, leave them be
        return Api(None, started=False)
    if server_mode == "temporary":
        server = launch("temporary")
        atexit.register(server.stop)
        os.environ["PREFECT_API_URL"] = server.api_url
        return Api(server, started=True)
    with _lock():
        existing = recorded()
        if reusable(existing):
            assert existing is not None
            os.environ["PREFECT_API_URL"] = existing.api_url
            return Api(existing, started=False)
        if existing is not None and existing.alive():
            existing.stop()  # another PREFECT_HOME or Prefect version: replaced, not shared
        server = launch("background")
        record_path().write_text(json.dumps(asdict(server), indent=2) + "\n", "utf-8")
    os.environ["PREFECT_API_URL"] = server.api_url
    return Api(server, started=True)


def fall_back(api: Api) -> None:
    """The server did not come up: forget it and let Prefect start its own temporary one for this command."""
    if api.server is not None:
        api.server.stop()
        if api.server.mode == "background" and recorded() == api.server:
            with contextlib.suppress(OSError):
                record_path().unlink()
    os.environ.pop("PREFECT_API_URL", None)


def stop_background() -> LocalServer | None:
    """Stop the recorded background server (if any); the server it was."""
    with _lock():
        server = recorded()
        if server is not None:
            server.stop()
            with contextlib.suppress(OSError):
                record_path().unlink()
    return server


def profile_api_url() -> str | None:
    """PREFECT_API_URL from the active Prefect profile (PREFECT_HOME/profiles.toml), read without Prefect."""
    import tomllib

    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = (data.get("profiles") or {}).get(active) or {}
    value = profile.get("PREFECT_API_URL")
    return str(value) if value else None
