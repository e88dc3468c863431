"""Engines and migrations for the metadata database."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from harvest.errors import DatabaseError

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_upgraded: set[str] = set()


def migrations_dir() -> Path:
    """`migrations/` beside the package (a source checkout or the Docker image's /app), or HARVEST_MIGRATIONS_DIR."""
    override = os.environ.get("HARVEST_MIGRATIONS_DIR")
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
            _engines[url] = engine
        return engine


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision`. Cheap when already there (checked once per process)."""
    if revision == "head" and url in _upgraded:
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


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _upgraded.clear()
