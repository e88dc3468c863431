"""What every task and hook needs, built once per process from the environment: settings, store, database."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from blocks.storage import resolve_store
from harvest.db.engine import get_engine, upgrade
from harvest.settings import HarvestSettings, get_settings
from harvest.storage import ObjectStore


@dataclass(frozen=True)
class Resources:
    settings: HarvestSettings
    store: ObjectStore
    engine: Engine


def resources() -> Resources:
    """Settings from the environment, the configured object store, and a migrated database engine.

    Tasks and hooks call this rather than receiving it as a parameter: parameters are hashed into cache
    keys and shown in the UI, and settings carry secrets.
    """
    settings = get_settings()
    upgrade(settings.database_url)
    return Resources(settings=settings, store=resolve_store(settings), engine=get_engine(settings.database_url))
