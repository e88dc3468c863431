"""The crawler: frontier + robots + sitemaps + HTTP fetcher + browser, behind a plain synchronous iterator.

Callers are synchronous Prefect tasks running in worker threads that may or may not already have an
asyncio loop, so the async machinery runs on its own loop in a dedicated thread and hands pages back
through a bounded queue: a slow consumer pauses the crawl instead of buffering a whole site in memory.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from harvest.crawl.browser import (
    MISSING_BROWSER,
    BrowserRenderer,
    PrefetchedDocument,
    RenderFailed,
    browser_available,
)
from harvest.crawl.frontier import UNFOLLOWED_EXAMPLES, Frontier, FrontierItem, normalize_url, site_of
from harvest.crawl.heuristics import needs_browser as default_needs_browser
from harvest.crawl.http_fetch import PAGE_TYPES, FetchFailed, HttpFetcher
from harvest.crawl.links import PageLinks, extract_links
from harvest.crawl.options import CrawlOptions
from harvest.crawl.page import CrawlStats, FailedURL, Page
from harvest.crawl.politeness import HostGates
from harvest.crawl.revalidate import (
    PageMemory,
    Remembered,
    entry_for,
    parse_lastmod,
    response_time,
    unchanged_since,
)
from harvest.crawl.robots import RobotsPolicy, fetch_robots, origin_of
from harvest.crawl.sitemap import collect_sitemap_urls
from harvest.errors import CrawlError, DisallowedURLError
from harvest.models import RunConfig
from harvest.net.conditional import Validators
from harvest.net.pinned import AddressBook
from harvest.urls import validate_start_url

log = logging.getLogger(__name__)

Mode = Literal["auto", "browser", "http"]
_POLL_S = 0.05


@dataclass
class _Fetched:
    page: Page
    links: PageLinks


@dataclass
class _Skipped:
    reason: str
    detail: str


@dataclass
class _Render:
    """This URL must be rendered by the browser: done by a render task of its own, off the HTTP slots."""

    item: FrontierItem
    requested_url: str | None = None
    # URLs this page is known by before rendering (requested, fetched, same-site canonical): a render whose
    # keys another render already covers waits for it and is skipped as a duplicate if that one succeeds.
    keys: frozenset[str] = frozenset()
    # The page's plain HTTP response, served to the browser instead of fetching the page again.
    document: PrefetchedDocument | None = None
    # What that response said about its version, kept with the rendered page for the next crawl.
    validators: Validators | None = None
    fetched_at: datetime | None = None
    # Of the URL's budget, what its plain fetch used: the render gets the rest.
    budget_spent_s: float = 0.0


_Outcome = _Fetched | _Skipped | FailedURL
_Step = _Outcome | _Render
_DONE = object()


class _Engine:
    """The async crawl. All frontier/stat decisions happen on the scheduler task, so they need no locks
    except the one that lets the consumer thread read a consistent stats snapshot."""

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
        self.memory = memory
        # Sitemap <lastmod> per normalized URL, read only when there is a memory to compare it with.
        self.lastmods: dict[str, str] = {}
        self.config = config
        self.options = options
        self.mode: Mode = config.render
        self.needs_browser = needs_browser
        self.out = out
        self.stop = stop
        self.stats = stats
        self.stats_lock = stats_lock
        self.frontier = Frontier(start_url, config, trap_limit=options.trap_limit)
        self.gates = HostGates(options.per_host_concurrency)
        self.robots: dict[str, RobotsPolicy] = {}
        self.robots_locks: dict[str, asyncio.Lock] = {}
        self.browser_needed: Counter[str] = Counter()
        self.http_checked: Counter[str] = Counter()
        self.emitted_keys: set[str] = set()
        # Which requested URL emitted each key, when there is a memory: a remembered duplicate names its original.
        self.emitted_by: dict[str, str] = {}
        self.pages_emitted = 0
        self.stop_reason: str | None = None  # set by the consumer that stops the crawl early (max_extractions)
        self.deadline_passed = False  # max_crawl_seconds ran out: the crawl stopped, the run goes on
        self.cut_mid_fetch: list[str] = []  # URLs in flight when the deadline stopped the crawl
        self.fetcher: HttpFetcher | None = None
        self.renderer: BrowserRenderer | None = None

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
            self.fetcher = fetcher
            if self.mode != "http":
                if browser_available(options.browser_path):
                    self.renderer = BrowserRenderer(
                        str(options.browser_path),
                        user_agent=options.user_agent,
                        allow_private_networks=options.allow_private_networks,
                        max_pages=options.browser_pages,
                        timeout_s=options.timeout_s,
                        settle_s=options.settle_s,
                        max_chars=options.max_page_bytes,
                        book=book,
                        url_budget_s=fetcher.url_budget_s,
                    )
                else:
                    log.warning(
                        "render=%s but %s (%r): pages that need scripts will fail",
                        self.mode,
                        MISSING_BROWSER,
                        options.browser_path,
                    )
            try:
                await self._crawl_until_stopped()
            finally:
                self._record_limits()
                if self.renderer is not None:
                    await self.renderer.close()
                    with self.stats_lock:
                        self.stats.browser_launches = self.renderer.launches
                        if self.renderer.refused:
                            self.stats.skipped["browser_request_refused"] = sum(self.renderer.refused.values())

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
                if self.pages_emitted:
                    log.warning("max_crawl_seconds=%g passed: stopping the crawl with %d page(s) fetched",
                                self.config.max_crawl_seconds, self.pages_emitted)
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
        step = await self._process(FrontierItem(start, 0))
        outcome = await self._render_step(step) if isinstance(step, _Render) else step
        self.cut_mid_fetch = []
        if isinstance(outcome, FailedURL):
            raise CrawlError(f"start URL {start} could not be crawled: {outcome.reason}")
        if isinstance(outcome, _Skipped):
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
        """Breadth-first dispatch with bounded concurrency; results are handled in dispatch order.

        Renders run as tasks of their own (at most `browser_pages` at once, the rest waiting in a bounded
        backlog), so a slow browser never occupies the HTTP slots: plain pages keep being fetched meanwhile.
        """
        in_flight: dict[asyncio.Task[_Step], tuple[int, FrontierItem]] = {}
        rendering: dict[asyncio.Task[_Step], tuple[int, FrontierItem]] = {}
        backlog: deque[tuple[int, _Render]] = deque()
        rendering_keys: dict[asyncio.Task[_Step], frozenset[str]] = {}
        waiting: list[tuple[int, _Render]] = []  # renders of a page another render is already doing
        render_slots = max(1, self.options.browser_pages)
        backlog_limit = max(render_slots, self.options.max_concurrency)
        sequence = 0
        try:
            while not self.stopping():
                while backlog and len(rendering) < render_slots:
                    seq, step = backlog.popleft()
                    if step.keys & self.emitted_keys:
                        self._accept_duplicate(step.requested_url or step.item.url)
                        await self._remember_render_duplicate(step)
                        continue
                    if any(step.keys & keys for keys in rendering_keys.values()):
                        waiting.append((seq, step))
                        continue
                    render: asyncio.Task[_Step] = asyncio.create_task(self._render_step(step))
                    rendering[render] = (seq, step.item)
                    rendering_keys[render] = step.keys
                while (
                    len(in_flight) < self.options.max_concurrency
                    and len(backlog) < backlog_limit
                    and self.pages_emitted + len(in_flight) + len(rendering) + len(backlog) + len(waiting)
                    < self.config.max_pages
                ):
                    item = self.frontier.pop()
                    if item is None:
                        break
                    in_flight[asyncio.create_task(self._process(item))] = (sequence, item)
                    sequence += 1
                if not rendering and waiting:
                    backlog.extend(waiting)
                    waiting.clear()
                if not in_flight and not rendering and not backlog:
                    break
                if not in_flight and not rendering:
                    continue  # the backlog starts at the top of the loop
                tasks = set(in_flight) | set(rendering)
                done, _ = await asyncio.wait(tasks, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                for finished in sorted(done, key=lambda t: (in_flight.get(t) or rendering[t])[0]):
                    seq, item = in_flight.pop(finished) if finished in in_flight else rendering.pop(finished)
                    outcome = self._result_of(finished, item)
                    if finished in rendering_keys:
                        done_keys = rendering_keys.pop(finished)
                        released = [w for w in waiting if w[1].keys & done_keys]
                        waiting[:] = [w for w in waiting if not w[1].keys & done_keys]
                        backlog.extendleft(reversed(released))  # skipped as duplicates if this one succeeded
                    if isinstance(outcome, _Render):
                        backlog.append((seq, outcome))
                        continue
                    if not await self._accept(outcome, item.depth):
                        return
            left = len(self.frontier)
            if left and self.pages_emitted >= self.config.max_pages:
                log.warning("max_pages=%d reached; %d queued URLs not fetched", self.config.max_pages, left)
                self._skip("max_pages", left)
                self._unfollowed("max_pages", left, self.frontier.queued())
        finally:
            pending = set(in_flight) | set(rendering)
            if self.deadline_passed:
                # Every task still here is one whose page was not accepted: in flight, or finished in the
                # moment the deadline cancelled the loop (those were left out once, and lost from the counts).
                self.cut_mid_fetch = [item.url for _, item in (in_flight | rendering).values()]
                self.cut_mid_fetch += [step.item.url for _, step in [*backlog, *waiting]]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    def _result_of(task: asyncio.Task[_Step], item: FrontierItem) -> _Step:
        try:
            return task.result()
        except Exception as exc:  # a bug or an unforeseen library error: record it, keep crawling
            log.exception("unexpected error while crawling %s", item.url)
            return FailedURL(item.url, f"unexpected error: {type(exc).__name__}: {exc}", None)

    async def _accept(self, outcome: _Outcome, depth: int) -> bool:
        """Record an outcome; emit a new page and queue its links. False when the crawl must stop."""
        if isinstance(outcome, FailedURL):
            log.warning("crawl failed for %s: %s", outcome.url, outcome.reason)
            with self.stats_lock:
                self.stats.failed_urls.append(outcome)
            return True
        if isinstance(outcome, _Skipped):
            log.info("skipped: %s", outcome.detail)
            self._skip(outcome.reason)
            return True
        page = outcome.page
        keys = {page.url, normalize_url(page.final_url) or page.final_url}
        self.frontier.mark_seen(page.final_url)
        self.frontier.mark_seen(page.url)
        if keys & self.emitted_keys:
            log.info("skipped %s: duplicate of an already crawled page (%s)", page.requested_url, page.url)
            self._skip("duplicate")
            await self._remember_duplicate(page)
            return True
        self.emitted_keys |= keys
        if self.memory is not None:
            self.emitted_by.update(dict.fromkeys(keys, page.requested_url))
        self.pages_emitted += 1
        with self.stats_lock:
            self.stats.pages_fetched += 1
            if page.reuse_reason == "not_modified":
                self.stats.pages_not_modified += 1
            elif page.reuse_reason == "lastmod":
                self.stats.pages_lastmod_unchanged += 1
            elif page.rendered:
                self.stats.pages_rendered += 1
            else:
                self.stats.pages_http += 1
        if outcome.links.nofollow_links:
            self._skip("nofollow", outcome.links.nofollow_links)
        before = Counter(self.frontier.skipped)
        pagination = set(outcome.links.pagination)
        for link in outcome.links.links:
            # Another page of the same listing is no deeper than this one: pagination must not use up
            # max_depth, or a listing split over many pages loses every item past the first few.
            self.frontier.add(link, depth if link in pagination else depth + 1)
        self._sync_frontier_skips(before)
        with self.stats_lock:
            self.stats.pages_queued = len(self.frontier)
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

    def _unfollowed(self, reason: str, count: int, examples: list[str]) -> None:
        with self.stats_lock:
            entry = self.stats.unfollowed.setdefault(reason, {"count": 0, "examples": []})
            entry["count"] += count
            entry["examples"] = (entry["examples"] + examples)[:UNFOLLOWED_EXAMPLES]

    def _record_limits(self) -> None:
        """Say which links a limit left unfollowed: max_depth refusals, and what was still queued when the
        consumer stopped the crawl (`stop_reason`, e.g. max_extractions)."""
        refused = self.frontier.beyond_depth()
        if refused:
            log.warning("max_depth=%d left %d links unfollowed", self.config.max_depth, len(refused))
            self._unfollowed("max_depth", len(refused), refused[:UNFOLLOWED_EXAMPLES])
        left = len(self.frontier)
        if left and self.stopping() and self.stop_reason:
            self._unfollowed(self.stop_reason, left, self.frontier.queued())
        if self.deadline_passed:
            unfetched = self.cut_mid_fetch + self.frontier.queued()
            self._unfollowed("max_crawl_seconds", len(self.cut_mid_fetch) + left, unfetched[:UNFOLLOWED_EXAMPLES])
            with self.stats_lock:
                self.stats.deadline_cut_in_flight = len(self.cut_mid_fetch)

    def _accept_duplicate(self, url: str) -> None:
        log.info("skipped %s: duplicate of an already crawled page", url)
        self._skip("duplicate")

    def _skip(self, reason: str, count: int = 1) -> None:
        with self.stats_lock:
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + count

    def _sync_frontier_skips(self, before: Counter[str]) -> None:
        for reason, count in self.frontier.skipped.items():
            if count > before.get(reason, 0):
                self._skip(reason, count - before.get(reason, 0))

    async def _seed_from_sitemaps(self, start: str) -> None:
        """Queue the URLs the site lists in its sitemaps (robots.txt Sitemap: lines, else /sitemap.xml)."""
        assert self.fetcher is not None
        robots = await self._robots_for(start)
        candidates = robots.sitemaps or [f"{origin_of(start)}/sitemap.xml"]
        lastmods = self.lastmods if self.memory is not None else None
        urls, problems = await collect_sitemap_urls(self.fetcher, candidates, lastmods=lastmods)
        if problems:
            for problem in problems:
                log.warning("%s", problem)
            with self.stats_lock:
                self.stats.problems.extend(problems)
        before = Counter(self.frontier.skipped)
        added = sum(self.frontier.add(url, 1) for url in urls)
        self._sync_frontier_skips(before)
        if urls:
            log.info("sitemap listed %d URLs; %d queued", len(urls), added)

    # ---- one URL ---------------------------------------------------------------------------------

    async def _robots_for(self, url: str) -> RobotsPolicy:
        assert self.fetcher is not None
        origin = origin_of(url)
        lock = self.robots_locks.setdefault(origin, asyncio.Lock())
        async with lock:
            policy = self.robots.get(origin)
            if policy is None:
                policy = await fetch_robots(self.fetcher, url, self.options.user_agent)
                self.robots[origin] = policy
                if policy.crawl_delay:
                    log.info("%s asks for Crawl-delay %gs: honoured", origin, policy.crawl_delay)
        return policy

    async def _process(self, item: FrontierItem) -> _Step:
        """Fetch one URL, or say it must be rendered (`_Render`); never raises for per-URL problems."""
        url = item.url
        assert self.fetcher is not None
        try:
            # The SSRF guard first, so a refused host is reported as refused (not as a robots.txt problem).
            await self.fetcher.check_allowed(url)
            policy = await self._robots_for(url)
            if policy.disallow_all and policy.reason:
                # robots.txt could not be read: a failure of this URL, not a rule the site chose.
                return FailedURL(url, policy.reason, None)
            if not policy.can_fetch(url):
                return _Skipped("robots", f"{url} disallowed by robots.txt")
            host = urlsplit(url).netloc
            gate = self.gates.get(host)
            gate.delay = policy.crawl_delay or 0.0
            render_directly = self.mode == "browser" or (
                self.mode == "auto"
                and self.renderer is not None
                and self._host_needs_browser(host)
            )
            remembered = await self._recall(url)
            original_url = None  # the URL whose entry gives the activities, when not this one's
            if remembered is not None and remembered.duplicate and not self._emitted(remembered):
                # Its activities are another page's, not emitted (yet) in this crawl: take that page's.
                original_url = remembered.original_url
                remembered = await self._as_original(remembered)
            result = None
            if remembered is not None and not remembered.duplicate and not await self._loaded_unchanged(remembered):
                remembered = None  # drawn from something that changed: fetched (and rendered) in full
            if remembered is not None:
                if unchanged_since(parse_lastmod(self.lastmods.get(url)), remembered.fetched_at):
                    await self._confirm(url, original_url)
                    return self._reuse(remembered, item, "lastmod", remembered.fetched_at)
                if remembered.validators is not None:
                    async with gate.slot():
                        result = await self.fetcher.fetch(url, headers=remembered.validators.request_headers())
                    if result.status == 304:
                        await self._confirm(url, original_url)
                        return self._reuse(remembered, item, "not_modified", response_time(result.headers))
            if render_directly:
                if result is not None and result.url == url and result.status == 200 and not result.truncated:
                    return _Render(item, document=PrefetchedDocument.from_response(
                        result.url, result.status, result.headers, result.body
                    ), validators=Validators.from_headers(result.headers), fetched_at=response_time(result.headers),
                        budget_spent_s=result.elapsed_s)
                return _Render(item, budget_spent_s=result.elapsed_s if result is not None else 0.0)
            if result is None:
                async with gate.slot():
                    result = await self.fetcher.fetch(url)
            if result.status >= 400:
                return FailedURL(url, f"HTTP {result.status}", result.status)
            if not result.is_page:
                return _Skipped("not_html", f"{url} is {result.content_type or 'of unknown type'}, not an HTML page")
            html = result.text()
            page = Page(
                url=normalize_url(result.url) or result.url,
                requested_url=url,
                status=result.status,
                html=html,
                depth=item.depth,
                rendered=False,
                content_type=result.content_type,
                final_url=result.url,
                truncated=result.truncated,
                validators=Validators.from_headers(result.headers),
                fetched_at=response_time(result.headers),
            )
            if self.mode == "auto":
                self.http_checked[host] += 1
            if self.mode == "auto" and await self._page_needs_browser(page):
                if self.renderer is None:
                    return FailedURL(url, f"page needs a browser to render its content but {MISSING_BROWSER}", None)
                self.browser_needed[host] += 1
                if self._host_needs_browser(host) and self.browser_needed[host] == self.options.learn_after:
                    log.info(
                        "%d pages on %s needed the browser: rendering its pages directly from now on",
                        self.options.learn_after,
                        host,
                    )
                raw = await self._finish(page)
                keys = frozenset({url, page.url, normalize_url(result.url) or result.url, raw.page.url})
                document = None if result.truncated else PrefetchedDocument.from_response(
                    result.url, result.status, result.headers, result.body
                )
                return _Render(FrontierItem(result.url, item.depth), requested_url=url, keys=keys, document=document,
                               validators=page.validators, fetched_at=page.fetched_at, budget_spent_s=result.elapsed_s)
            return await self._finish(page)
        except DisallowedURLError as exc:
            return FailedURL(url, str(exc), None)
        except (FetchFailed, RenderFailed) as exc:
            return FailedURL(url, exc.reason, exc.status)

    async def _recall(self, url: str) -> Remembered | None:
        """What the last crawl kept for `url` (off the event loop: the memory may be a database)."""
        if self.memory is None:
            return None
        try:
            return await asyncio.to_thread(self.memory.recall, url)
        except Exception as exc:  # the memory only saves bandwidth: without it, the page is fetched as new
            log.warning("page memory unavailable for %s (%s: %s): fetching it in full", url, type(exc).__name__, exc)
            return None

    @staticmethod
    def _reuse(remembered: Remembered, item: FrontierItem, reason: str, fetched_at: datetime) -> _Fetched:
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
        return _Fetched(page, PageLinks(links=list(remembered.links), pagination=list(remembered.pagination)))

    async def _loaded_unchanged(self, remembered: Remembered) -> bool:
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
            with self.stats_lock:
                self.stats.pages_scripts_changed += 1
        return unchanged

    async def _remember_render_duplicate(self, step: _Render) -> None:
        """A page that would need the browser but duplicates one already emitted: remember its validators, so
        the next crawl gets a 304 for it (then a duplicate again) instead of downloading and maybe rendering it."""
        known = step.keys & self.emitted_keys
        if self.memory is None or step.validators is None or not known or step.fetched_at is None:
            return
        key = min(known)
        entry = Remembered(
            url=step.requested_url or step.item.url, page_url=key, final_url=step.item.url,
            validators=step.validators, fetched_at=step.fetched_at, duplicate=True,
            original_url=self.emitted_by.get(key),
        )
        await self._remember(entry)

    async def _confirm(self, *urls: str | None) -> None:
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

    async def _remember(self, entry: Remembered) -> None:
        assert self.memory is not None
        try:
            await asyncio.to_thread(self.memory.remember, entry)
        except Exception as exc:
            log.warning("could not remember %s (%s: %s)", entry.url, type(exc).__name__, exc)

    async def _remember_duplicate(self, page: Page) -> None:
        """A duplicate is never emitted, so the consumer cannot remember it: remember it here (no activities:
        the page it duplicates holds them), so the next crawl revalidates it instead of downloading it."""
        entry = entry_for(page, []) if self.memory is not None and page.reused is None else None
        if entry is not None:
            entry.duplicate = True
            known = sorted({page.url, normalize_url(page.final_url) or page.final_url} & self.emitted_keys)
            entry.original_url = self.emitted_by.get(known[0]) if known else None
            await self._remember(entry)

    async def _as_original(self, duplicate: Remembered) -> Remembered | None:
        """A remembered duplicate as the page it duplicated (its activities and links), asked for under its own
        URL and validators; None when that page is not remembered (the duplicate is then fetched in full)."""
        original = await self._recall(duplicate.original_url) if duplicate.original_url else None
        if original is None or original.duplicate:
            return None
        return replace(original, url=duplicate.url, final_url=duplicate.final_url, validators=duplicate.validators,
                       fetched_at=duplicate.fetched_at, duplicate=False, original_url=None)

    def _emitted(self, remembered: Remembered) -> bool:
        return bool({remembered.page_url, normalize_url(remembered.final_url) or remembered.final_url}
                    & self.emitted_keys)

    def _host_needs_browser(self, host: str) -> bool:
        """Learned rule: render a host's pages directly once at least `learn_after` of them, and at least half
        of those checked, needed the browser. A few script-built pages on a mostly static site (a common
        shape) must not switch the whole site to the browser, which costs 10-50x a plain fetch."""
        needed = self.browser_needed[host]
        return needed >= self.options.learn_after and needed * 2 >= self.http_checked[host]

    async def _page_needs_browser(self, page: Page) -> bool:
        try:
            return bool(await asyncio.to_thread(self.needs_browser, page))
        except Exception as exc:
            log.warning("needs_browser(%s) raised %s: treating the page as not needing a browser", page.url, exc)
            with self.stats_lock:
                self.stats.problems.append(f"needs_browser failed for {page.url}: {type(exc).__name__}: {exc}")
            return False

    async def _render_step(self, step: _Render) -> _Outcome:
        """Render one URL; never raises for per-URL problems.

        The host's gate is passed through before navigating (a free slot, and Crawl-delay spacing), but not
        held while the page settles: the browser's own concurrency is bounded by `browser_pages`."""
        url = step.requested_url or step.item.url
        try:
            gate = self.gates.get(urlsplit(step.item.url).netloc)
            async with gate.slot():
                pass
            outcome = await self._render(step.item, requested_url=step.requested_url, document=step.document,
                                         spent_s=step.budget_spent_s)
            if isinstance(outcome, _Fetched) and step.document is not None:
                # Rendered from the response fetched just now: its validators describe this very document.
                outcome.page.validators = step.validators
                outcome.page.fetched_at = step.fetched_at or outcome.page.fetched_at
            return outcome
        except DisallowedURLError as exc:
            return FailedURL(url, str(exc), None)
        except (FetchFailed, RenderFailed) as exc:
            return FailedURL(url, exc.reason, exc.status)

    async def _render(
        self, item: FrontierItem, *, requested_url: str | None = None, document: PrefetchedDocument | None = None,
        spent_s: float = 0.0,
    ) -> _Outcome:
        if self.renderer is None:
            return FailedURL(item.url, MISSING_BROWSER, None)
        rendered = await self.renderer.render(item.url, document=document, spent_s=spent_s)
        if rendered.status >= 400:
            return FailedURL(requested_url or item.url, f"HTTP {rendered.status}", rendered.status)
        if rendered.content_type and rendered.content_type not in PAGE_TYPES:
            return _Skipped("not_html", f"{item.url} is {rendered.content_type}, not an HTML page")
        page = Page(
            url=normalize_url(rendered.url) or rendered.url,
            requested_url=requested_url or item.url,
            status=rendered.status,
            html=rendered.html,
            depth=item.depth,
            rendered=True,
            content_type=rendered.content_type or "text/html",
            final_url=rendered.url,
            truncated=rendered.truncated,
            # The document the browser navigated to, like a plain fetch's: a re-crawl revalidates it over HTTP.
            validators=Validators.from_headers(rendered.headers),
            fetched_at=response_time(rendered.headers),
            subresources=rendered.subresources,
        )
        return await self._finish(page)

    async def _finish(self, page: Page) -> _Fetched:
        """Extract links and adopt a same-site canonical URL as the page's identity (for dedupe)."""
        links = await asyncio.to_thread(extract_links, page.html, page.final_url)
        page.links, page.pagination = links.links, links.pagination
        if links.canonical:
            canonical = normalize_url(links.canonical)
            if canonical and site_of(canonical) == site_of(page.final_url):
                page.url = canonical
        return _Fetched(page, links)


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
