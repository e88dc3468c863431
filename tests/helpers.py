"""Helpers shared by test modules (no side effects at import, unlike conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_OPENAI_KEY = "sk-test-openai-secret-123456"


def process_elsewhere(pid: int = 4242) -> str:
    """A run row's process identity (harvest/liveness.py) of a process on another machine (another kernel's boot
    id): its liveness cannot be judged from here, so Prefect's state or the run's heartbeat decides."""
    import uuid

    return f"{uuid.uuid4()}/4026531836/{pid}/1000"


def reset_harvest_caches() -> None:
    """Forget settings and stores built from the previous test's environment."""
    from blocks.storage import _cached_store
    from harvest.settings import get_settings

    get_settings.cache_clear()
    _cached_store.cache_clear()


# What a server on a seeded home (seed_prefect_home) skips on start, set for the whole session in conftest: the
# template database is at Prefect's head with every block type registered (a server start built it), so migrating
# and registering again find nothing to do, at ~3 of a start's ~12 CPU-s here (alembic loads every migration script;
# registration builds every block type's schema to compare them). A first start on a new home does both: the tests
# of that (tests/test_first_run.py, tests/flows/test_embedded_defaults.py, the e2e stack) leave these out.
SEEDED_HOME_SERVER_SETTINGS = {
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
}

_BUILD_TEMPLATE = """
import sqlite3, sys
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
server.start()  # healthy: migrated and its block types registered
server.stop()
with sqlite3.connect(sys.argv[1]) as db:  # everything in the file itself, none of it in a write-ahead log
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
"""


def prefect_database_template() -> Path:
    """A Prefect SQLite database as a first server start leaves it (migrated to the installed Prefect's head, its
    block types registered), built once per machine and Prefect version under a file lock, so the xdist workers
    share one build.

    Why: a Prefect server on a new PREFECT_HOME migrates its database before it answers, ~21.6 CPU-s to healthy
    against ~9 once migrated; the suite starts a dozen of them (each worker's temporary API, the CLI tests'
    own servers). Tests whose point is a first start on a new machine (tests/test_first_run.py,
    tests/flows/test_embedded_defaults.py) do not use it."""
    import fcntl
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from importlib.metadata import version

    root = Path(tempfile.gettempdir()) / f"harvest-test-prefect-db-{version('prefect')}-{os.getuid()}"
    database = root / "prefect-started.db"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not database.exists():
            building = Path(tempfile.mkdtemp(prefix="building-", dir=root))
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(building),
                   "PREFECT_HOME": str(building), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
            done = subprocess.run([sys.executable, "-c", _BUILD_TEMPLATE, str(building / "prefect.db")], env=env,
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0 or not (building / "prefect.db").is_file():
                raise RuntimeError(f"could not build the migrated Prefect database:\n{done.stdout}{done.stderr}")
            os.replace(building / "prefect.db", database)  # whole or absent: a build cut short is not used
            shutil.rmtree(building, ignore_errors=True)
    return database


def seed_prefect_home(home: Path) -> Path:
    """`home` as a PREFECT_HOME whose database a server already started on, as on a user's second start: a copy of
    prefect_database_template()."""
    import shutil

    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prefect_database_template(), home / "prefect.db")
    return home


def session_prefect_api_url() -> str:
    """The URL of this session's Prefect API: the temporary server its in-process flows use, started here if no
    flow has started it yet. `harvest` subprocesses given it as PREFECT_API_URL talk to it, where each on a new
    PREFECT_HOME first started and migrated a temporary server of its own (18-27 s a command on a loaded
    machine). Tests whose point is a fresh machine (tests/test_first_run.py,
    tests/flows/test_embedded_defaults.py) keep a home of their own."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one Prefect's ephemeral client uses in this process (no port given)
    server.start()  # once per process
    return server.api_url


def run_cli(args: list[str], env: dict[str, str]) -> CliOutcome:
    """`harvest ARGS` in this process (Typer's CliRunner) with `env` over the environment: the exit code, stdout
    and stderr a terminal would get, without the seconds a new process spends importing Prefect. For commands
    whose test is about what they print and return, not about the console script or a process of their own."""
    from typer.testing import CliRunner

    from harvest_cli import app

    reset_harvest_caches()  # settings are read once per process: read them with `env`
    try:
        result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    finally:
        reset_harvest_caches()
    return CliOutcome(result.exit_code, result.stdout, result.stderr)


@dataclass(frozen=True)
class CliOutcome:
    """What `run_cli` saw, named as subprocess.CompletedProcess names it, so a test reads the same either way."""

    returncode: int
    stdout: str
    stderr: str


def database_url(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> str:
    """The URL of an empty, migrated database: this session's Postgres ("postgres", emptied by `clean_db`) or a
    new SQLite file in `tmp_path` ("sqlite", the embedded default)."""
    if kind == "postgres":
        return str(request.getfixturevalue("clean_db"))
    if kind != "sqlite":
        raise ValueError(f"unknown test database {kind!r}")
    from harvest.db.engine import upgrade

    url = f"sqlite:///{tmp_path / 'harvest.db'}"
    upgrade(url)
    return url


def self_signed_certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(cert.pem, key.pem): a certificate for `name` that is its own CA, as a site with a real certificate for
    its name would have (trust it by pointing SSL_CERT_FILE at cert.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt = x509.DNSName(name)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
