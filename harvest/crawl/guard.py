"""The SSRF guard as the crawler uses it: off the event loop (it resolves DNS), on the crawl's address book.

The book is shared with the crawl's HTTP transport and the browser's guard proxy, so the addresses
checked here are the ones every connection to that host dials (`harvest.net.pinned`).
"""

from __future__ import annotations

import asyncio

from harvest.errors import DisallowedURLError
from harvest.net.pinned import AddressBook

GUARD_CACHE_SECONDS = 60.0


class HostGuard:
    """Checks URLs against the SSRF rules; each host is resolved once per `GUARD_CACHE_SECONDS` (the book's TTL)."""

    def __init__(self, *, allow_private_networks: bool, book: AddressBook | None = None) -> None:
        self.allow_private_networks = allow_private_networks
        self.book = book if book is not None else AddressBook(
            allow_private_networks=allow_private_networks, ttl_s=GUARD_CACHE_SECONDS)

    async def refusal(self, url: str) -> str | None:
        """None if `url` may be fetched, else the guard's refusal message."""
        try:
            await asyncio.to_thread(self.book.check, url)
        except DisallowedURLError as exc:
            return str(exc)
        return None

    async def check(self, url: str) -> None:
        """Raise DisallowedURLError unless `url` may be fetched."""
        await asyncio.to_thread(self.book.check, url)
