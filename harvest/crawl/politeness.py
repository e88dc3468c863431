"""Per-host politeness: at most N requests in flight to one host, and robots.txt's Crawl-delay between starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class HostGate:
    """Limits concurrency to one host and spaces request starts by `delay` seconds when the site asks."""

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._spacing = asyncio.Lock()
        self._next_start = 0.0
        self.delay = 0.0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            if self.delay > 0:
                async with self._spacing:
                    wait = self._next_start - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._next_start = time.monotonic() + self.delay
            yield


class HostGates:
    """One HostGate per host (netloc), created on first use."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._gates: dict[str, HostGate] = {}

    def get(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = HostGate(self.concurrency)
        return gate
