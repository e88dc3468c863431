"""Helpers shared by test modules (no side effects at import, unlike conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_OPENAI_KEY = "sk-test-openai-secret-123456"


def reset_harvest_caches() -> None:
    """Forget settings and stores built from the previous test's environment."""
    from blocks.storage import _cached_store
    from harvest.settings import get_settings

    get_settings.cache_clear()
    _cached_store.cache_clear()


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
