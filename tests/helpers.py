"""Helpers shared by test modules (no side effects at import, unlike conftest)."""

from __future__ import annotations

TEST_OPENAI_KEY = "sk-test-openai-secret-123456"


def reset_harvest_caches() -> None:
    """Forget settings and stores built from the previous test's environment."""
    from blocks.storage import _cached_store
    from harvest.settings import get_settings

    get_settings.cache_clear()
    _cached_store.cache_clear()
