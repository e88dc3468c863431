"""What every task and hook needs, built once per process from the environment: settings, store, database."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from pydantic import SecretStr
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
    settings = with_block_secrets(get_settings())
    upgrade(settings.database_url)
    return Resources(settings=settings, store=resolve_store(settings), engine=get_engine(settings.database_url))


@lru_cache(maxsize=8)
def _secret_block_value(name: str) -> str:
    from prefect.blocks.system import Secret

    block = cast(Secret[str], Secret.load(name))  # sync call: Prefect types its dispatch as value-or-coroutine
    return str(block.get())


def with_block_secrets(settings: HarvestSettings) -> HarvestSettings:
    """Fill API keys that the environment leaves unset from the Secret blocks it names
    (HARVEST_OPENAI_API_KEY_BLOCK, HARVEST_GOOGLE_MAPS_API_KEY_BLOCK): workers carry block names, not keys."""
    updates = {}
    if settings.openai_api_key is None and settings.openai_api_key_block:
        updates["openai_api_key"] = SecretStr(_secret_block_value(settings.openai_api_key_block))
    if settings.google_maps_api_key is None and settings.google_maps_api_key_block:
        updates["google_maps_api_key"] = SecretStr(_secret_block_value(settings.google_maps_api_key_block))
    return settings.model_copy(update=updates) if updates else settings
