"""The SSRF guard as the crawler uses it: off the event loop (it resolves DNS) and cached per host."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from harvest.errors import DisallowedURLError
from harvest.urls import check_fetch_allowed

GUARD_CACHE_SECONDS = 60.0


class HostGuard:
    """Remembers each scheme+host's verdict briefly, so a 500-page crawl does not resolve one name 500 times."""

    def __init__(self, *, allow_private_networks: bool) -> None:
        self.allow_private_networks = allow_private_networks
        self._verdicts: dict[tuple[str, str], tuple[float, str | None]] = {}

    async def refusal(self, url: str) -> str | None:
        """None if `url` may be fetched, else the guard's refusal message."""
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.netloc.lower())
        cached = self._verdicts.get(key)
        if cached is not None and time.monotonic() - cached[0] < GUARD_CACHE_SECONDS:
            return cached[1]
        try:
            await asyncio.to_thread(check_fetch_allowed, url, allow_private_networks=self.allow_private_networks)
            verdict = None
        except DisallowedURLError as exc:
            verdict = str(exc)
        self._verdicts[key] = (time.monotonic(), verdict)
        return verdict

    async def check(self, url: str) -> None:
        """Raise DisallowedURLError unless `url` may be fetched."""
        refusal = await self.refusal(url)
        if refusal is not None:
            raise DisallowedURLError(refusal)
