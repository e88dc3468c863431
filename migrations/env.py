"""Alembic environment: the URL comes from the caller (harvest.db.migrate) or HARVEST_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from harvest.db.schema import metadata
from harvest.settings import HarvestSettings

config = context.config
url = config.get_main_option("sqlalchemy.url") or HarvestSettings().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
