"""How one URL becomes a page: the SSRF guard and robots.txt (with its Crawl-delay), the page memory (reused when
unchanged), a plain fetch, and the browser when the page needs it. In auto mode the need is judged per page and
learned per host (`learn_after`); a host that mostly needs it is rendered directly from then on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

from harvest.crawl.browser import (
    MISSING_BROWSER,
    BrowserLaunchFailed,
    BrowserRenderer,
    PrefetchedDocument,
    RenderFailed,
)
from harvest.crawl.frontier import FrontierItem, normalize_url, site_of
from harvest.crawl.http_fetch import PAGE_TYPES, FetchFailed, FetchResult, HttpFetcher
from harvest.crawl.links import extract_links
from harvest.crawl.options import CrawlOptions
from harvest.crawl.outcomes import Fetched, Outcome, Render, Skipped, Step
from harvest.crawl.page import FailedURL, Page
from harvest.crawl.politeness import HostGate, HostGates
from harvest.crawl.reuse import PageReuse
from harvest.crawl.revalidate import response_time
from harvest.crawl.robots import RobotsPolicy, fetch_robots, origin_of
from harvest.crawl.tally import Tally
from harvest.errors import DisallowedURLError
from harvest.net.conditional import Validators

log = logging.getLogger(__name__)


class Fetching:
    """One URL at a time, for the crawl's scheduler (see the module docstring); never raises for a URL's own
    problems: they come back as a FailedURL or a Skipped."""

    def __init__(
        self, options: CrawlOptions, mode: str, needs_browser: Callable[[Page], bool], gates: HostGates,
        reuse: PageReuse, tally: Tally, fetcher: HttpFetcher, renderer: BrowserRenderer | None,
    ) -> None:
        self.options = options
        self.mode = mode
        self.needs_browser = needs_browser
        self.gates = gates
        self.reuse = reuse
        self.tally = tally
        self.fetcher = fetcher
        self.renderer = renderer
        self.robots: dict[str, RobotsPolicy] = {}
        self.robots_locks: dict[str, asyncio.Lock] = {}
        self.browser_needed: Counter[str] = Counter()
        self.http_checked: Counter[str] = Counter()

    async def robots_for(self, url: str) -> RobotsPolicy:
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

    async def process(self, item: FrontierItem) -> Step:
        """Fetch one URL (or reuse it from the page memory), or say it must be rendered (`Render`); never raises
        for per-URL problems."""
        url = item.url
        try:
            allowed = await self._allowed(url)
            if not isinstance(allowed, HostGate):
                return allowed
            gate, host = allowed, urlsplit(url).netloc
            render_directly = self.mode == "browser" or (
                self.mode == "auto"
                and self.renderer is not None
                and not self.renderer.launch_failures  # while the browser fails to start, each page is judged
                and self._host_needs_browser(host)
            )
            reused, result = await self.reuse.attempt(url, item, gate)
            if reused is not None:
                return reused
            if render_directly:
                return self._render_directly(item, result, learned=self.mode == "auto")
            if result is None:
                async with gate.slot():
                    result = await self.fetcher.fetch(url)
            return await self._from_response(item, result, host)
        except DisallowedURLError as exc:
            return FailedURL(url, str(exc), None)
        except BrowserLaunchFailed as exc:
            return self.tally.unrendered(url, exc.cause)
        except (FetchFailed, RenderFailed) as exc:
            return FailedURL(url, exc.reason, exc.status)

    async def _allowed(self, url: str) -> HostGate | Outcome:
        """The host's gate (set to robots.txt's Crawl-delay) when `url` may be fetched, else why not. The SSRF
        guard first, so a refused host is reported as refused (not as a robots.txt problem); raises
        DisallowedURLError for it."""
        await self.fetcher.check_allowed(url)
        policy = await self.robots_for(url)
        if policy.disallow_all and policy.reason:
            # robots.txt could not be read: a failure of this URL, not a rule the site chose.
            return FailedURL(url, policy.reason, None)
        if not policy.can_fetch(url):
            return Skipped("robots", f"{url} disallowed by robots.txt")
        gate = self.gates.get(urlsplit(url).netloc)
        gate.delay = policy.crawl_delay or 0.0
        return gate

    @staticmethod
    def _render_directly(item: FrontierItem, result: FetchResult | None, *, learned: bool) -> Render:
        """A URL of a host rendered directly: the conditional response fetched just now (a 200) is served to the
        browser instead of a second request. `learned`: sent by the host's learned rule, not by `render=browser`."""
        if result is not None and result.url == item.url and result.status == 200 and not result.truncated:
            return Render(item, document=PrefetchedDocument.from_response(
                result.url, result.status, result.headers, result.body
            ), validators=Validators.from_headers(result.headers), fetched_at=response_time(result.headers),
                budget_spent_s=result.elapsed_s, learned=learned)
        return Render(item, budget_spent_s=result.elapsed_s if result is not None else 0.0, learned=learned)

    async def _from_response(self, item: FrontierItem, result: FetchResult, host: str) -> Step:
        """A plain response as the page, or as a render when (auto mode) its content needs the browser."""
        url = item.url
        if result.status >= 400:
            return FailedURL(url, f"HTTP {result.status}", result.status)
        if not result.is_page:
            return Skipped("not_html", f"{url} is {result.content_type or 'of unknown type'}, not an HTML page")
        page = Page(
            url=normalize_url(result.url) or result.url,
            requested_url=url,
            status=result.status,
            html=result.text(),
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
        if self.mode != "auto" or not await self._page_needs_browser(page):
            return await self._finish(page)
        if self.renderer is None:
            return self.tally.unrendered(url, self._no_browser())
        self.browser_needed[host] += 1
        if self._host_needs_browser(host) and self.browser_needed[host] == self.options.learn_after:
            log.info("%d pages on %s needed the browser: rendering its pages directly from now on",
                     self.options.learn_after, host)
        raw = await self._finish(page)
        keys = frozenset({url, page.url, normalize_url(result.url) or result.url, raw.page.url})
        document = None if result.truncated else PrefetchedDocument.from_response(
            result.url, result.status, result.headers, result.body
        )
        return Render(FrontierItem(result.url, item.depth), requested_url=url, keys=keys, document=document,
                      validators=page.validators, fetched_at=page.fetched_at, budget_spent_s=result.elapsed_s)

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
            self.tally.problems([f"needs_browser failed for {page.url}: {type(exc).__name__}: {exc}"])
            return False

    def _no_browser(self) -> str:
        path = self.options.browser_path
        return f"{MISSING_BROWSER} (not an executable: {path!r})" if path else MISSING_BROWSER

    async def render_step(self, step: Render) -> Outcome:
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
            if isinstance(outcome, Fetched) and step.document is not None:
                # Rendered from the response fetched just now: its validators describe this very document.
                outcome.page.validators = step.validators
                outcome.page.fetched_at = step.fetched_at or outcome.page.fetched_at
            return outcome
        except DisallowedURLError as exc:
            return FailedURL(url, str(exc), None)
        except BrowserLaunchFailed as exc:
            if step.learned:  # never shown to need scripts: fetched plainly instead (no direct renders now)
                judged = await self.process(step.item)
                return self.tally.unrendered(url, exc.cause) if isinstance(judged, Render) else judged
            return self.tally.unrendered(url, exc.cause)
        except (FetchFailed, RenderFailed) as exc:
            return FailedURL(url, exc.reason, exc.status)

    async def _render(
        self, item: FrontierItem, *, requested_url: str | None = None, document: PrefetchedDocument | None = None,
        spent_s: float = 0.0,
    ) -> Outcome:
        if self.renderer is None:
            return self.tally.unrendered(requested_url or item.url, self._no_browser())
        rendered = await self.renderer.render(item.url, document=document, spent_s=spent_s)
        if rendered.status >= 400:
            return FailedURL(requested_url or item.url, f"HTTP {rendered.status}", rendered.status)
        if rendered.content_type and rendered.content_type not in PAGE_TYPES:
            return Skipped("not_html", f"{item.url} is {rendered.content_type}, not an HTML page")
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

    async def _finish(self, page: Page) -> Fetched:
        """Extract links and adopt a same-site canonical URL as the page's identity (for dedupe)."""
        links = await asyncio.to_thread(extract_links, page.html, page.final_url)
        page.links, page.pagination = links.links, links.pagination
        if links.canonical:
            canonical = normalize_url(links.canonical)
            if canonical and site_of(canonical) == site_of(page.final_url):
                page.url = canonical
        return Fetched(page, links)
