"""Engines, migrations and transactions for the metadata database.

Every module of `harvest.db` opens its transactions here, so a restarting database and driver errors are
handled the same way everywhere. `Engine` and `Connection` are importable from here for annotations by
callers that hold a transaction open around storage work (`harvest.retention.policy`).
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from tenacity import Retrying, retry_if_exception_type, stop_before_delay, wait_exponential

from harvest.errors import DatabaseError
from harvest.settings import get_settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_upgraded: set[str] = set()
_UPGRADE_GUARD = threading.Lock()


def utcnow() -> datetime:
    return datetime.now(UTC)


def migrations_dir() -> Path:
    """`migrations/` beside the package (a source checkout or the Docker image's /app), or HARVEST_MIGRATIONS_DIR."""
    override = get_settings().migrations_dir
    return Path(override) if override else Path(__file__).resolve().parents[2] / "migrations"


def get_engine(url: str) -> Engine:
    """One pooled engine per URL per process; pre-ping so a restarted Postgres is reconnected transparently."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = make_url(url)
            kwargs: dict[str, object] = {"pool_pre_ping": True, "future": True}
            if parsed.get_backend_name() == "sqlite":
                database = parsed.database
                if database and database != ":memory:":
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                # Several task threads write run rows: wait for the lock instead of failing at once.
                kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            else:
                kwargs["pool_size"] = 5
                kwargs["connect_args"] = {"connect_timeout": 10}
            engine = sa.create_engine(url, **kwargs)
            if parsed.get_backend_name() == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_pragmas)
                sa.event.listen(engine, "begin", _sqlite_begin_immediate)
            _engines[url] = engine
        return engine


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # Design choice: SQLite ignores FOR UPDATE, so a read-modify-write of a run row (record_step, add_warnings)
    # from two threads lost one update (12 threads x 20 calls kept 20 of 240). pysqlite's own transaction
    # handling is switched off (SQLAlchemy's documented recipe) and every transaction starts with BEGIN
    # IMMEDIATE (see _sqlite_begin_immediate): it takes the database's write lock at once, so a transaction's
    # reads and writes are atomic against every other writer, the way the row lock is on Postgres. Writers
    # queue on the busy timeout (30 s); WAL keeps plain readers outside transactions unblocked.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    """Start each SQLite transaction holding the write lock (see _sqlite_pragmas for why)."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision`. Cheap when already there (checked once per process).

    One call at a time per process: Alembic's commands keep their context in module globals, so two threads
    migrating at once (the first tasks of a fresh Dask worker process) failed with KeyError('script')."""
    with _UPGRADE_GUARD:
        _upgrade(url, revision)


def _upgrade(url: str, revision: str) -> None:
    if revision == "head" and url in _upgraded:
        return
    if revision == "head" and _at_head(url):
        _upgraded.add(url)
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    try:
        with get_engine(url).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate {make_url(url).render_as_string(hide_password=True)}: {exc}") from exc
    if revision == "head":
        _upgraded.add(url)


_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def script_head(versions: Path) -> str | None:
    """The one head revision of the migration scripts in `versions`, read from their text. None unless every
    script names its revision and down_revision as plain literals in one line and they form one head: then the
    caller asks Alembic, which imports every script (and what they import) to find out."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in versions.glob("*.py"):
        found = {name: value for name, value in _ASSIGNMENT.findall(script.read_text(encoding="utf-8"))}
        try:
            revision, parent = (ast.literal_eval(found[name]) for name in ("revision", "down_revision"))
        except (KeyError, ValueError, SyntaxError):
            return None
        if not isinstance(revision, str) or not (parent is None or isinstance(parent, str)):
            return None
        revisions.add(revision)
        if parent is not None:
            parents.add(parent)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(url: str) -> bool:
    """Whether the database is already at the scripts' head, asked without Alembic: importing it and loading the
    scripts cost every command (`harvest runs list`) about 0.3 CPU-s for nothing to do."""
    head = script_head(migrations_dir() / "versions")
    if head is None:
        return False
    try:
        with get_engine(url).connect() as connection:
            current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    except sa.exc.SQLAlchemyError:
        return False  # no alembic_version yet (a new database) or not readable: Alembic says what is wrong
    return current == [head]


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _upgraded.clear()


def _connect(engine: Engine) -> Connection:
    """A connection, waiting out a database that is restarting: connecting is retried (0.2 s doubling to 2 s)
    for HARVEST_DB_RECONNECT_SECONDS (default 20), so a Postgres restart does not fail the run's next write
    or its final status. Only connecting is retried: nothing of the transaction has run yet."""
    retrying = Retrying(
        retry=retry_if_exception_type(sa.exc.OperationalError),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        stop=stop_before_delay(get_settings().db_reconnect_seconds),  # never sleeps past the deadline
        reraise=True,
    )
    return retrying(engine.connect)


def database_error(exc: BaseException) -> DatabaseError:
    """`exc` (SQLAlchemy's, or the driver's own from a raw cursor) as a DatabaseError naming it and its cause."""
    text = str(exc)
    return DatabaseError(f"database error: {exc.__class__.__name__}: {text.splitlines()[0] if text else ''}")


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction whose driver errors surface as DatabaseError with the cause in the message."""
    try:
        with _connect(engine) as connection, connection.begin():
            yield connection
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(exc) from exc
