"""The crawl's work in progress, for its breadth-first scheduler: plain fetches in flight, renders running,
renders waiting for a render slot (the backlog), and renders of a page another render is already doing.

Renders run as tasks of their own (at most `render_slots` at once, the rest in a bounded backlog), so a slow
browser never occupies the HTTP slots. Render de-duplication: a render whose keys (the URLs its page is known by)
meet a running render's waits for it; when that one ends, the waiting renders go back to the front of the
backlog, where those whose page has been emitted meanwhile are dropped as duplicates. Results are handed back
in dispatch order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from harvest.crawl.frontier import Frontier, FrontierItem
from harvest.crawl.outcomes import Emitted, Render, Step


class Dispatch:
    def __init__(self, render_slots: int, max_concurrency: int) -> None:
        self.render_slots = max(1, render_slots)
        self.max_concurrency = max_concurrency
        self.backlog_limit = max(self.render_slots, max_concurrency)
        self.in_flight: dict[asyncio.Task[Step], tuple[int, FrontierItem]] = {}
        self.rendering: dict[asyncio.Task[Step], tuple[int, FrontierItem]] = {}
        self.rendering_keys: dict[asyncio.Task[Step], frozenset[str]] = {}
        self.backlog: deque[tuple[int, Render]] = deque()
        self.waiting: list[tuple[int, Render]] = []  # renders of a page another render is already doing
        self.sequence = 0

    def load(self) -> int:
        """URLs dispatched and not yet handed back (each may still become a page)."""
        return len(self.in_flight) + len(self.rendering) + len(self.backlog) + len(self.waiting)

    async def start_renders(self, emitted: Emitted, render: Callable[[Render], Coroutine[Any, Any, Step]],
                            duplicate: Callable[[Render], Awaitable[None]]) -> None:
        """Start backlogged renders while a render slot is free: a page emitted meanwhile is a duplicate (handed
        to `duplicate`), one another render is doing waits for it."""
        while self.backlog and len(self.rendering) < self.render_slots:
            seq, step = self.backlog.popleft()
            if emitted.knows(step.keys):
                await duplicate(step)
                continue
            if any(step.keys & keys for keys in self.rendering_keys.values()):
                self.waiting.append((seq, step))
                continue
            task: asyncio.Task[Step] = asyncio.create_task(render(step))
            self.rendering[task] = (seq, step.item)
            self.rendering_keys[task] = step.keys

    def start_fetches(
        self, frontier: Frontier, room: int, fetch: Callable[[FrontierItem], Coroutine[Any, Any, Step]]
    ) -> None:
        """Start fetches of queued URLs while a slot is free, the backlog has room, and the URLs dispatched stay
        within `room` (the pages the crawl may still emit)."""
        while (
            len(self.in_flight) < self.max_concurrency and len(self.backlog) < self.backlog_limit
            and self.load() < room
        ):
            item = frontier.pop()
            if item is None:
                break
            self.in_flight[asyncio.create_task(fetch(item))] = (self.sequence, item)
            self.sequence += 1

    def release_waiting(self) -> None:
        """No render is running: the waiting ones go to the backlog (there is nothing left to wait for)."""
        if not self.rendering and self.waiting:
            self.backlog.extend(self.waiting)
            self.waiting.clear()

    def running(self) -> bool:
        return bool(self.in_flight or self.rendering)

    async def wait(self, timeout: float) -> set[asyncio.Task[Step]]:
        done, _ = await asyncio.wait(set(self.in_flight) | set(self.rendering), timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        return done

    def take(self, done: set[asyncio.Task[Step]]) -> Iterator[tuple[int, FrontierItem, asyncio.Task[Step]]]:
        """The finished tasks in dispatch order, each taken off the books as it is handed back (a render's end
        sends the renders waiting on its keys to the front of the backlog)."""
        for task in sorted(done, key=lambda t: (self.in_flight.get(t) or self.rendering[t])[0]):
            seq, item = self.in_flight.pop(task) if task in self.in_flight else self.rendering.pop(task)
            if task in self.rendering_keys:
                done_keys = self.rendering_keys.pop(task)
                released = [w for w in self.waiting if w[1].keys & done_keys]
                self.waiting[:] = [w for w in self.waiting if not w[1].keys & done_keys]
                self.backlog.extendleft(reversed(released))  # skipped as duplicates if this one succeeded
            yield seq, item, task

    def defer(self, seq: int, step: Render) -> None:
        """A fetch that found the page needs the browser: its render joins the backlog."""
        self.backlog.append((seq, step))

    def unfinished(self) -> list[str]:
        """URLs whose page was not accepted: still being fetched or rendered, finished but not yet taken (the
        deadline can fall between the two: left out, they were counted nowhere), or waiting to be rendered."""
        running = [item.url for _, item in (self.in_flight | self.rendering).values()]
        return running + [step.item.url for _, step in [*self.backlog, *self.waiting]]

    async def cancel(self) -> None:
        pending = set(self.in_flight) | set(self.rendering)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
