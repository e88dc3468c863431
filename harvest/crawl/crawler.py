"""The crawler: frontier + robots + sitemaps + HTTP fetcher + browser, behind a plain synchronous iterator.

Callers are synchronous Prefect tasks running in worker threads that may or may not already have an
asyncio loop, so the async machinery runs on its own loop in a dedicated thread and hands pages back
through a bounded queue: a slow consumer pauses the crawl instead of buffering a whole site in memory.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal
from urllib.parse import urlsplit

from harvest.crawl.browser import (
    MISSING_BROWSER,
    BrowserRenderer,
    browser_available,
)
from harvest.crawl.fetching import Fetching
from harvest.crawl.frontier import UNFOLLOWED_EXAMPLES, Frontier, FrontierItem
from harvest.crawl.heuristics import needs_browser as default_needs_browser
from harvest.crawl.http_fetch import HttpFetcher
from harvest.crawl.options import CrawlOptions
from harvest.crawl.outcomes import Emitted, Outcome, Render, Skipped, Step
from harvest.crawl.page import CrawlStats, FailedURL, Page
from harvest.crawl.politeness import HostGates
from harvest.crawl.reuse import PageReuse
from harvest.crawl.revalidate import PageMemory
from harvest.crawl.robots import origin_of
from harvest.crawl.schedule import Dispatch
from harvest.crawl.sitemap import collect_sitemap_urls
from harvest.crawl.tally import Tally
from harvest.errors import CrawlError
from harvest.models import RunConfig
from harvest.net.pinned import AddressBook
from harvest.urls import validate_start_url

log = logging.getLogger(__name__)

Mode = Literal["auto", "browser", "http"]
_POLL_S = 0.05
_DONE = object()


class _Engine:
    """The async crawl. All frontier/stat decisions happen on the scheduler task, so they need no locks
    except the one that lets the consumer thread read a consistent stats snapshot (the Tally's).

    Its collaborators: the work in progress and render de-duplication (harvest/crawl/schedule.py), the page
    memory's reuse (harvest/crawl/reuse.py), the counters (harvest/crawl/tally.py)."""

    def __init__(
        self,
        start_url: str,
        config: RunConfig,
        options: CrawlOptions,
        needs_browser: Callable[[Page], bool],
        out: queue.Queue[object],
        stop: threading.Event,
        stats: CrawlStats,
        stats_lock: threading.Lock,
        memory: PageMemory | None = None,
    ) -> None:
        self.start_url = start_url
        self.config = config
        self.options = options
        self.mode: Mode = config.render
        self.needs_browser = needs_browser
        self.out = out
        self.stop = stop
        self.tally = Tally(stats, stats_lock)
        self.frontier = Frontier(start_url, config, trap_limit=options.trap_limit)
        self.gates = HostGates(options.per_host_concurrency)
        self.emitted = Emitted(track_origin=memory is not None)
        self.reuse = PageReuse(memory, self.gates, self.tally, self.emitted)
        self.stop_reason: str | None = None  # set by the consumer that stops the crawl early (max_extractions)
        self.deadline_passed = False  # max_crawl_seconds ran out: the crawl stopped, the run goes on
        self.cut_mid_fetch: list[str] = []  # URLs in flight when the deadline stopped the crawl
        self.fetcher: HttpFetcher | None = None
        self.renderer: BrowserRenderer | None = None
        self.fetching: Fetching | None = None  # one URL at a time, once the fetcher (and browser) exist

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        options = self.options
        # One address book for the whole crawl: the fetcher's guard and transport and the browser's proxy
        # all connect to the addresses checked for a host, never to a second DNS answer.
        book = AddressBook(allow_private_networks=options.allow_private_networks)
        async with HttpFetcher(
            user_agent=options.user_agent,
            allow_private_networks=options.allow_private_networks,
            timeout_s=options.timeout_s,
            max_bytes=options.max_page_bytes,
            retries=options.retries,
            backoff_s=options.backoff_s,
            max_connections=max(options.max_concurrency, options.per_host_concurrency) * 2,
            url_budget_s=options.url_budget_s,
            min_body_rate=options.min_body_rate,
            book=book,
        ) as fetcher:
            self.fetcher = self.reuse.fetcher = fetcher
            if self.mode != "http":
                self.renderer = self._renderer(book, fetcher.url_budget_s)
            self.fetching = Fetching(self.options, self.mode, self.needs_browser, self.gates, self.reuse, self.tally,
                                     fetcher, self.renderer)
            try:
                await self._crawl_until_stopped()
            finally:
                self._record_limits()
                if self.renderer is not None:
                    await self.renderer.close()
                    self.tally.browser(self.renderer)

    def _renderer(self, book: AddressBook, url_budget_s: float) -> BrowserRenderer | None:
        """The browser pages that need scripts are rendered in, or None (warned) when there is no Chromium."""
        options = self.options
        if not browser_available(options.browser_path):
            log.warning("render=%s but %s (%r): pages that need scripts will fail", self.mode, MISSING_BROWSER,
                        options.browser_path)
            return None
        return BrowserRenderer(
            str(options.browser_path), user_agent=options.user_agent,
            allow_private_networks=options.allow_private_networks, max_pages=options.browser_pages,
            timeout_s=options.timeout_s, settle_s=options.settle_s, max_chars=options.max_page_bytes, book=book,
            url_budget_s=url_budget_s,
        )

    async def _crawl_until_stopped(self) -> None:
        """Run the crawl, cancelling it promptly when the consumer closes (even mid-fetch or mid-backoff) or
        when `max_crawl_seconds` has passed (then the pages so far go on to the rest of the run)."""
        deadline = time.monotonic() + self.config.max_crawl_seconds
        task = asyncio.create_task(self._crawl())
        while not task.done():
            await asyncio.wait({task}, timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            if task.done():
                break
            if self.stopping():
                task.cancel()
            elif time.monotonic() >= deadline:
                self.deadline_passed = True
                if self.emitted.count:
                    log.warning("max_crawl_seconds=%g passed: stopping the crawl with %d page(s) fetched",
                                self.config.max_crawl_seconds, self.emitted.count)
                else:
                    log.warning("max_crawl_seconds=%g passed before the start page %s was fetched: nothing crawled",
                                self.config.max_crawl_seconds, self.start_url)
                task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not (self.stopping() or self.deadline_passed):
                raise

    async def _crawl(self) -> None:
        start = self.frontier.start_url
        self.frontier.mark_seen(start)
        # A deadline passing before the start page is in leaves it unfetched: counted like a page cut mid-fetch.
        self.cut_mid_fetch = [start]
        assert self.fetching is not None
        step = await self.fetching.process(FrontierItem(start, 0))
        outcome = await self.fetching.render_step(step) if isinstance(step, Render) else step
        self.cut_mid_fetch = []
        if isinstance(outcome, FailedURL):
            raise CrawlError(f"start URL {start} could not be crawled: {outcome.reason}")
        if isinstance(outcome, Skipped):
            raise CrawlError(f"start URL {start} could not be crawled: {outcome.detail}")
        self.frontier.add_site(outcome.page.final_url)
        if outcome.page.url != start:
            self.frontier.add_site(outcome.page.url)
        if not await self._accept(outcome, 0):
            return
        if self.config.max_depth >= 1:
            await self._seed_from_sitemaps(start)
        await self._schedule()

    def stopping(self) -> bool:
        return self.stop.is_set()

    # ---- scheduling ------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Breadth-first dispatch with bounded concurrency; results are handled in dispatch order (the work in
        progress and the render de-duplication: harvest/crawl/schedule.py)."""
        assert self.fetching is not None
        fetching = self.fetching
        work = Dispatch(self.options.browser_pages, self.options.max_concurrency)
        try:
            while not self.stopping():
                await work.start_renders(self.emitted, fetching.render_step, self._render_duplicate)
                with self.tally.frontier_skips(self.frontier):  # pages a calendar feed covered: skipped on pop
                    work.start_fetches(self.frontier, self.config.max_pages - self.emitted.count, fetching.process)
                work.release_waiting()
                if not work.running() and not work.backlog:
                    break
                if not work.running():
                    continue  # the backlog starts at the top of the loop
                for seq, item, task in work.take(await work.wait(timeout=0.25)):
                    outcome = self._result_of(task, item)
                    if isinstance(outcome, Render):
                        work.defer(seq, outcome)
                        continue
                    if not await self._accept(outcome, item.depth):
                        return
            left = len(self.frontier)
            if left and self.emitted.count >= self.config.max_pages:
                log.warning("max_pages=%d reached; %d queued URLs not fetched", self.config.max_pages, left)
                self.tally.skip("max_pages", left)
                self.tally.unfollowed("max_pages", left, self.frontier.queued())
        finally:
            if self.deadline_passed:
                self.cut_mid_fetch = work.unfinished()
            await work.cancel()

    @staticmethod
    def _result_of(task: asyncio.Task[Step], item: FrontierItem) -> Step:
        try:
            return task.result()
        except Exception as exc:  # a bug or an unforeseen library error: record it, keep crawling
            log.exception("unexpected error while crawling %s", item.url)
            return FailedURL(item.url, f"unexpected error: {type(exc).__name__}: {exc}", None)

    async def _accept(self, outcome: Outcome, depth: int) -> bool:
        """Record an outcome; emit a new page and queue its links. False when the crawl must stop."""
        if isinstance(outcome, FailedURL):
            log.warning("crawl failed for %s: %s", outcome.url, outcome.reason)
            self.tally.failed(outcome)
            return True
        if isinstance(outcome, Skipped):
            log.info("skipped: %s", outcome.detail)
            self.tally.skip(outcome.reason)
            return True
        page = outcome.page
        keys = self.emitted.keys_of(page)
        self.frontier.mark_seen(page.final_url)
        self.frontier.mark_seen(page.url)
        if self.emitted.knows(keys):
            log.info("skipped %s: duplicate of an already crawled page (%s)", page.requested_url, page.url)
            self.tally.skip("duplicate")
            await self.reuse.remember_duplicate(page)
            return True
        self.emitted.add(keys, page.requested_url)
        self.tally.emitted(page)
        if outcome.links.nofollow_links:
            self.tally.skip("nofollow", outcome.links.nofollow_links)
        pagination = set(outcome.links.pagination)
        # Another page of the same listing is no deeper than this one: pagination must not use up max_depth, or a
        # listing split over many pages loses every item past the first few. But only while the listing keeps
        # giving something new: a "next month" calendar that shows no events and links nothing new would
        # otherwise be followed until max_pages (issue 26); its next page then costs depth like any link.
        page.led_somewhere_new = any(
            link not in pagination and self.frontier.is_new(link) for link in outcome.links.links
        )
        inherit = bool(pagination) and (page.led_somewhere_new or _has_event_markup(page))
        with self.tally.frontier_skips(self.frontier):
            for link in outcome.links.links:
                self.frontier.add(link, depth if link in pagination and inherit else depth + 1)
        self.tally.queued(len(self.frontier))
        return await self._emit(page)

    async def _emit(self, page: Page) -> bool:
        """Hand a page to the consumer thread, waiting while its queue is full (backpressure)."""
        while not self.stopping():
            try:
                self.out.put_nowait(page)
                return True
            except queue.Full:
                await asyncio.sleep(_POLL_S)
        return False

    async def _render_duplicate(self, step: Render) -> None:
        """A backlogged render of a page emitted meanwhile: skipped, and remembered as a duplicate."""
        log.info("skipped %s: duplicate of an already crawled page", step.requested_url or step.item.url)
        self.tally.skip("duplicate")
        await self.reuse.remember_render_duplicate(step)

    def _record_limits(self) -> None:
        """Say which links a limit left unfollowed: max_depth refusals, and what was still queued when the
        consumer stopped the crawl (`stop_reason`, e.g. max_extractions)."""
        refused = self.frontier.beyond_depth()
        if refused:
            log.warning("max_depth=%d left %d links unfollowed", self.config.max_depth, len(refused))
            self.tally.unfollowed("max_depth", len(refused), refused[:UNFOLLOWED_EXAMPLES])
        left = len(self.frontier)
        if left and self.stopping() and self.stop_reason:
            self.tally.unfollowed(self.stop_reason, left, self.frontier.queued())
        if self.deadline_passed:
            unfetched = self.cut_mid_fetch + self.frontier.queued()
            self.tally.unfollowed("max_crawl_seconds", len(self.cut_mid_fetch) + left,
                                  unfetched[:UNFOLLOWED_EXAMPLES])
            self.tally.cut_in_flight(len(self.cut_mid_fetch))

    async def _seed_from_sitemaps(self, start: str) -> None:
        """Queue the URLs the site lists in its sitemaps (robots.txt Sitemap: lines, else /sitemap.xml)."""
        assert self.fetcher is not None and self.fetching is not None
        robots = await self.fetching.robots_for(start)
        candidates = robots.sitemaps or [f"{origin_of(start)}/sitemap.xml"]
        lastmods = self.reuse.lastmods if self.reuse.memory is not None else None
        self.gates.get(urlsplit(start).netloc).delay = robots.crawl_delay or 0.0  # sitemaps are requests too
        urls, problems = await collect_sitemap_urls(self.fetcher, candidates, lastmods=lastmods, gates=self.gates)
        if problems:
            for problem in problems:
                log.warning("%s", problem)
            self.tally.problems(problems)
        with self.tally.frontier_skips(self.frontier):
            added = sum(self.frontier.add(url, 1) for url in urls)
        if urls:
            log.info("sitemap listed %d URLs; %d queued", len(urls), added)


_EVENT_MARKUP_RE = re.compile(
    r"""["']@type["']\s*:\s*\[?\s*["'](?:https?://schema\.org/)?\w*Event["']"""
    r"""|itemtype\s*=\s*["'][^"']*schema\.org/\w*Event|class\s*=\s*["'][^"']*\b(?:h-event|vevent)\b""",
    re.IGNORECASE,
)


def _has_event_markup(page: Page) -> bool:
    """Items marked up as events on the page: a listing page that shows them gives something new even when every
    link it has was seen already."""
    return bool(page.html) and bool(_EVENT_MARKUP_RE.search(page.html))


class Crawl:
    """A running crawl: iterate it for Pages, then read `.stats`. Close it (or use `with`) to stop early.

    The crawl starts on first iteration. Iterating raises CrawlError if the start URL fails.
    """

    def __init__(
        self,
        start_url: str,
        config: RunConfig,
        options: CrawlOptions,
        *,
        needs_browser: Callable[[Page], bool] | None = None,
        on_progress: Callable[[CrawlStats], None] | None = None,
        memory: PageMemory | None = None,
    ) -> None:
        self.start_url = start_url
        self.config = config
        self.options = options
        self._on_progress = on_progress
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, options.queue_size))
        self._stop = threading.Event()
        self._stats = CrawlStats()
        self._stats_lock = threading.Lock()
        self._engine = _Engine(
            start_url,
            config,
            options,
            needs_browser or default_needs_browser,
            self._queue,
            self._stop,
            self._stats,
            self._stats_lock,
            memory,
        )
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._finished = False

    # ---- iteration -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Page]:
        self._start()
        return self

    def __next__(self) -> Page:
        if self._finished:
            raise StopIteration
        self._start()
        while True:
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                assert self._thread is not None
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                self._finish()
                raise CrawlError("the crawl thread ended without reporting a result") from None
            if isinstance(item, Page):
                self._report_progress()
                return item
            self._finish()
            if isinstance(item, BaseException):
                raise item
            raise StopIteration

    def _start(self) -> None:
        if self._thread is not None or self._finished:
            return
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"harvest-crawl {self.start_url}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        result: object = _DONE
        try:
            asyncio.run(self._engine.run())
        except BaseException as exc:  # handed to the consumer thread, which re-raises it
            result = exc
        finally:
            self._ended_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._queue.put(result, timeout=0.1)
                return
            except queue.Full:
                continue

    def _finish(self) -> None:
        """The crawl ended (or is being closed): stop and join the thread, report final stats once."""
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        if self._thread is not None:
            self._drain()
            self._thread.join(timeout=60)
            if self._thread.is_alive():
                log.error("crawl thread for %s did not stop within 60s", self.start_url)
        self._report_progress()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _report_progress(self) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(self.stats)
        except Exception:
            log.exception("on_progress callback failed (ignored)")

    # ---- public ----------------------------------------------------------------------------------

    @property
    def stats(self) -> CrawlStats:
        """A consistent snapshot of the counters (safe to keep; later progress does not change it)."""
        with self._stats_lock:
            snapshot = self._stats.snapshot()
        if self._started_at is not None:
            end = self._ended_at if self._ended_at is not None else time.monotonic()
            snapshot.seconds = round(end - self._started_at, 3)
        return snapshot

    def cover(self, urls: list[str]) -> None:
        """Pages of this site not to fetch any more: a calendar feed already gave what they would (counted as
        skipped `covered_by_feed`)."""
        self._engine.frontier.cover(urls)

    def close(self, reason: str | None = None) -> None:
        """Stop the crawl now (pages not yet consumed are dropped); shuts the browser and loop down.

        `reason` (e.g. "max_extractions") names the limit that stopped it: the URLs still queued are then
        reported in `stats.unfollowed` under that name."""
        if reason and not self._finished:
            self._engine.stop_reason = reason
        self._finish()

    def __enter__(self) -> Crawl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never join from a finalizer; signalling is enough for the thread to wind down on its own.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


def crawl(
    start_url: str,
    config: RunConfig,
    options: CrawlOptions,
    *,
    needs_browser: Callable[[Page], bool] | None = None,
    on_progress: Callable[[CrawlStats], None] | None = None,
    memory: PageMemory | None = None,
) -> Crawl:
    """Prepare a crawl of `start_url` under `config`; iterate the result for pages.

    Raises ConfigError for a malformed start URL and CrawlError when render="browser" has no Chromium,
    before anything is fetched. `needs_browser` (auto mode) and the crawl itself run on the crawl's own
    thread; `on_progress` runs on the iterating thread after each page and once at the end.
    Build `options` with `CrawlOptions.from_settings(settings)` (or directly, in tests and tools).
    With `memory` (what earlier crawls kept, `harvest.crawl.revalidate`), a page the last crawl fetched is
    asked for conditionally (a 304 is reused), or not at all when the sitemap's `<lastmod>` is older than
    that fetch; a reused page comes back with `reused` set and no HTML. The caller remembers the pages it
    consumed (`memory.remember`); the crawl remembers the duplicates it drops and confirms every entry it
    reuses (`memory.confirm`), so the sweep's pruning of the memory spares what the site still links to.
    """
    start = validate_start_url(start_url)
    if config.render == "browser" and not browser_available(options.browser_path):
        raise CrawlError(
            f"render='browser' needs Chromium but {MISSING_BROWSER} (browser_path={options.browser_path!r})"
        )
    return Crawl(start, config, options, needs_browser=needs_browser, on_progress=on_progress, memory=memory)
