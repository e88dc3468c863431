"""The page memory's side of a crawl (the rules are in harvest/crawl/revalidate.py): a page the last crawl kept
is asked for conditionally, or not at all when the sitemap's `<lastmod>` is older than that fetch, and reused as
it was when unchanged; duplicates are remembered as such; every entry a reuse rests on is confirmed.

The memory only saves bandwidth: when it fails, the page is fetched in full and the crawl goes on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime
from urllib.parse import urlsplit

from harvest.crawl.frontier import FrontierItem, normalize_url
from harvest.crawl.http_fetch import FetchFailed, FetchResult, HttpFetcher
from harvest.crawl.links import PageLinks
from harvest.crawl.outcomes import Emitted, Fetched, Render
from harvest.crawl.page import Page, entry_for
from harvest.crawl.politeness import HostGate, HostGates
from harvest.crawl.revalidate import PageMemory, Remembered, parse_lastmod, response_time, unchanged_since
from harvest.crawl.tally import Tally
from harvest.errors import DisallowedURLError

log = logging.getLogger(__name__)


class PageReuse:
    """What the last crawl left, as this crawl asks for it (see the module docstring). `lastmods`: the sitemaps'
    `<lastmod>` per normalized URL; `fetcher` is set once the crawl has one."""

    def __init__(self, memory: PageMemory | None, gates: HostGates, tally: Tally, emitted: Emitted) -> None:
        self.memory = memory
        self.gates = gates
        self.tally = tally
        self.emitted = emitted
        self.lastmods: dict[str, str] = {}
        self.fetcher: HttpFetcher | None = None

    async def attempt(self, url: str, item: FrontierItem, gate: HostGate) -> tuple[Fetched | None, FetchResult | None]:
        """`url` as the memory has it when unchanged: (the reused page, None). Else (None, the response of the
        conditional request when one was sent and the page changed: it is the page's fetch), or (None, None)."""
        remembered = await self.recall(url)
        original_url = None  # the URL whose entry gives the activities, when not this one's
        if remembered is not None and remembered.duplicate and not self._emitted(remembered):
            # Its activities are another page's, not emitted (yet) in this crawl: take that page's.
            original_url = remembered.original_url
            remembered = await self.as_original(remembered)
        if remembered is not None and not remembered.duplicate and not await self.loaded_unchanged(remembered):
            remembered = None  # drawn from something that changed: fetched (and rendered) in full
        if remembered is None:
            return None, None
        if unchanged_since(parse_lastmod(self.lastmods.get(url)), remembered.fetched_at):
            await self.confirm(url, original_url)
            return self.reused(remembered, item, "lastmod", remembered.fetched_at), None
        if remembered.validators is None:
            return None, None
        assert self.fetcher is not None
        async with gate.slot():
            result = await self.fetcher.fetch(url, headers=remembered.validators.request_headers())
        if result.status == 304:
            await self.confirm(url, original_url)
            return self.reused(remembered, item, "not_modified", response_time(result.headers)), None
        return None, result

    async def recall(self, url: str) -> Remembered | None:
        """What the last crawl kept for `url` (off the event loop: the memory may be a database)."""
        if self.memory is None:
            return None
        try:
            return await asyncio.to_thread(self.memory.recall, url)
        except Exception as exc:  # the memory only saves bandwidth: without it, the page is fetched as new
            log.warning("page memory unavailable for %s (%s: %s): fetching it in full", url, type(exc).__name__, exc)
            return None

    @staticmethod
    def reused(remembered: Remembered, item: FrontierItem, reason: str, fetched_at: datetime) -> Fetched:
        """The page as the last crawl left it: no download, no parsing, no rendering; its links are followed."""
        page = Page(
            url=remembered.page_url,
            requested_url=item.url,
            status=200,
            html="",
            depth=item.depth,
            rendered=remembered.rendered,
            content_type="text/html",
            final_url=remembered.final_url,
            validators=remembered.validators,
            fetched_at=fetched_at,
            links=remembered.links,
            pagination=remembered.pagination,
            reused=remembered,
            reuse_reason=reason,
            subresources=remembered.subresources,
        )
        return Fetched(page, PageLinks(links=list(remembered.links), pagination=list(remembered.pagination)))

    async def loaded_unchanged(self, remembered: Remembered) -> bool:
        """For a rendered page: whether everything its scripts loaded last time is unchanged (a conditional GET
        of each answered 304), so that its document's 304 may stand for the page. False when that is unknown
        (the page is then rendered again); always True for a plain page.

        Asked with the fetcher, so the SSRF guard and pinned addresses apply, through each host's gate. Not
        robots.txt: a browser rendering the page loads these without asking it either."""
        if not remembered.rendered:
            return True
        assert self.fetcher is not None
        unchanged = remembered.revalidatable  # for a rendered page: what its scripts loaded is known
        for loaded in remembered.subresources or []:
            try:
                async with self.gates.get(urlsplit(loaded.url).netloc).slot():
                    answer = await self.fetcher.fetch(loaded.url, headers=loaded.validators.request_headers())
                unchanged = answer.status == 304
            except (DisallowedURLError, FetchFailed):
                unchanged = False
            if not unchanged:
                break
        if not unchanged:
            self.tally.scripts_changed()
        return unchanged

    async def remember_render_duplicate(self, step: Render) -> None:
        """A page that would need the browser but duplicates one already emitted: remember its validators, so
        the next crawl gets a 304 for it (then a duplicate again) instead of downloading and maybe rendering it."""
        key = self.emitted.first_known(step.keys)
        if self.memory is None or step.validators is None or key is None or step.fetched_at is None:
            return
        entry = Remembered(
            url=step.requested_url or step.item.url, page_url=key, final_url=step.item.url,
            validators=step.validators, fetched_at=step.fetched_at, duplicate=True,
            original_url=self.emitted.by.get(key),
        )
        await self.remember(entry)

    async def confirm(self, *urls: str | None) -> None:
        """Keep the entries a reuse rests on alive in the memory (the sweep prunes entries no crawl confirms).
        Here rather than in the consumer: a reused page skipped by `<lastmod>`, or dropped as a duplicate, is
        never remembered again, and its entry would be pruned and the page downloaded anew."""
        assert self.memory is not None
        for url in urls:
            if url is None:
                continue
            try:
                await asyncio.to_thread(self.memory.confirm, url)
            except Exception as exc:  # the memory only saves bandwidth: a lost confirmation costs a download later
                log.warning("could not confirm %s in the page memory (%s: %s)", url, type(exc).__name__, exc)

    async def remember(self, entry: Remembered) -> None:
        assert self.memory is not None
        try:
            await asyncio.to_thread(self.memory.remember, entry)
        except Exception as exc:
            log.warning("could not remember %s (%s: %s)", entry.url, type(exc).__name__, exc)

    async def remember_duplicate(self, page: Page) -> None:
        """A duplicate is never emitted, so the consumer cannot remember it: remember it here (no activities:
        the page it duplicates holds them), so the next crawl revalidates it instead of downloading it."""
        entry = entry_for(page, []) if self.memory is not None and page.reused is None else None
        if entry is not None:
            entry.duplicate = True
            key = self.emitted.first_known(self.emitted.keys_of(page))
            entry.original_url = self.emitted.by.get(key) if key is not None else None
            await self.remember(entry)

    async def as_original(self, duplicate: Remembered) -> Remembered | None:
        """A remembered duplicate as the page it duplicated (its activities and links), asked for under its own
        URL and validators; None when that page is not remembered (the duplicate is then fetched in full)."""
        original = await self.recall(duplicate.original_url) if duplicate.original_url else None
        if original is None or original.duplicate:
            return None
        return replace(original, url=duplicate.url, final_url=duplicate.final_url, validators=duplicate.validators,
                       fetched_at=duplicate.fetched_at, duplicate=False, original_url=None)

    def _emitted(self, remembered: Remembered) -> bool:
        return self.emitted.knows({remembered.page_url, normalize_url(remembered.final_url) or remembered.final_url})
