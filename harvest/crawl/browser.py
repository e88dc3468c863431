"""Rendering pages whose content is built by scripts, with Playwright driving a local Chromium.

One browser and one context are launched lazily (a crawl that never needs them never pays for them)
and reused for every page; pages are bounded by a semaphore. Only the DOM matters, so images, fonts,
media and stylesheets are never downloaded. Every request the page makes is checked by the SSRF
guard twice over: in the route handler (first hop, cheap abort) and in `GuardProxy`, which Chromium
must use for all traffic and which also sees redirect hops the route handler never does.

A page the crawler already fetched over plain HTTP (and found to need scripts) is not fetched a second time:
its document is served to the browser from that response (`PrefetchedDocument`, fulfilled in the route
handler), which saves the site a request and the render a round trip through the proxy. Either way the
document's response headers come back with the rendered HTML (`RenderResult.headers`): the crawler keeps their
validators and Date, so the next crawl can revalidate a rendered page with a plain conditional request.

Readiness: Playwright's "networkidle" waits for 500 ms without network traffic, which dominated the cost of
a render. Instead a page counts as ready after its `load` event once, for a short quiet window (100 ms),
no request of the page has been in flight and its DOM has not changed (a MutationObserver installed before
any page script runs), with a hard cap. That still waits out pages that fetch JSON and then build the DOM:
the fetch keeps a request in flight, and building the DOM resets the quiet window. The DOM's quiet window is
waited out inside the page, by the same call that then reads the DOM; that call has a deadline of its own, so a
page whose scripts never yield (an endless loop) fails that page instead of hanging the crawl.

Time: a render is bounded by what is left of its URL's budget (`url_budget_s`, as for a plain fetch; the fetch
that found the page needs scripts has used part of it), counted from when the render has a tab. Navigation and
every wait get at most that as their timeouts, and `asyncio.timeout` bounds the whole render, so a page whose
document dribbles or whose blocking script stalls fails with "the per-URL budget ... is spent" instead of holding
a tab for the browser's own timeouts. A page still settling when the budget is nearly spent is read as it is,
as at the settle cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvest.crawl.guard import HostGuard
from harvest.crawl.guard_proxy import REFUSED_HEADER, GuardProxy
from harvest.crawl.http_fetch import media_type
from harvest.crawl.page import PageFailed
from harvest.crawl.revalidate import MAX_SUBRESOURCES, Subresource
from harvest.errors import DisallowedURLError
from harvest.net.conditional import Validators
from harvest.net.pinned import AddressBook

log = logging.getLogger(__name__)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BLOCKED_RESOURCE_TYPES = frozenset({"image", "font", "media", "stylesheet"})
# What a page's scripts are and fetch: it can change under an unchanged document, so it is revalidated too.
REVALIDATED_RESOURCE_TYPES = frozenset({"script", "xhr", "fetch"})
MISSING_BROWSER = "no Chromium found: set HARVEST_BROWSER_PATH"
# A launch that failed this many times in a row is not tried again in the same crawl: every page that needs the
# browser then fails at once with the same cause (a broken browser would otherwise cost a launch, up to its
# timeout, per page).
MAX_LAUNCH_ATTEMPTS = 2
QUIET_S = 0.1  # no request in flight and no DOM change for this long: the page is ready
RESPOND_S = 5.0  # a page that does not answer for this long past its settle cap is busy in a script: given up
READ_RESERVE_S = 0.25  # of a URL's budget, kept for reading the DOM: settling stops this long before it is spent
_READY = "harvest.readWhenQuiet"
# Installed before any page script runs. It records when the DOM last changed and defines one function that
# waits, inside the page, until the DOM has been quiet for a while (or a cap passes) and then returns the DOM as
# HTML the way page.content() does (doctype, then the root element). Reading in the page's own world matters:
# page.content() runs in a separate world Chromium builds for every new document (~60 ms of renderer CPU per
# page), and waiting in the page saves a round trip per check. Everything it uses is captured here, before the
# page's scripts could replace it; the function itself cannot be redefined.
_READ_WHEN_QUIET_INIT = """(() => {
  const now = performance.now.bind(performance);
  const wait = setTimeout.bind(window);
  const Serializer = XMLSerializer;
  const serializeToString = XMLSerializer.prototype.serializeToString;
  const outerHTML = Object.getOwnPropertyDescriptor(Element.prototype, "outerHTML").get;
  let lastMutation = now();
  try {
    new MutationObserver(() => { lastMutation = now(); }).observe(
      document, {childList: true, subtree: true, attributes: true, characterData: true});
  } catch (e) {}
  const serialize = () => {
    const doctype = document.doctype ? serializeToString.call(new Serializer(), document.doctype) : "";
    const root = document.documentElement;
    return root ? doctype + outerHTML.call(root) : doctype;
  };
  const readWhenQuiet = (quietMs, maxMs) => new Promise((resolve, reject) => {
    const end = now() + maxMs;
    const check = () => {
      try {
        const at = now();
        const quietFor = at - lastMutation;
        if (quietFor >= quietMs || at >= end) { resolve(serialize()); return; }
        wait(check, Math.min(quietMs - quietFor, end - at) + 1);
      } catch (e) { reject(e); }
    };
    check();
  });
  try { Object.defineProperty(window, Symbol.for("%s"), {value: readWhenQuiet}); } catch (e) {}
})();""" % _READY  # noqa: UP031 - a JavaScript body full of braces: %-format keeps it readable
# Calls the function above; a document the init script did not reach (none expected) is read as it is.
_READ_WHEN_QUIET = """([quietMs, maxMs]) => {
  const read = window[Symbol.for("%s")];
  if (read) return read(quietMs, maxMs);
  const doctype = document.doctype ? new XMLSerializer().serializeToString(document.doctype) : "";
  return document.documentElement ? doctype + document.documentElement.outerHTML : doctype;
}""" % _READY  # noqa: UP031 - see above


class RenderFailed(PageFailed):
    """One page could not be rendered (navigation error, timeout, browser crash)."""


class BrowserLaunchFailed(RenderFailed):
    """Chromium could not be started for this crawl: not an executable, its launch failed, or Playwright's driver
    did not start. Every page that needs the browser fails the same way, so the crawl reports `cause` once for the
    run (CrawlStats.browser_error) rather than as many unrelated page failures."""

    def __init__(self, cause: str) -> None:
        super().__init__("(browser)", cause)
        self.cause = cause


class _RenderBudget:
    """What is left of one URL's budget (`total_s`, less `spent_s` by its plain fetch) while it renders.

    The clock starts with `start()`, once the render has a tab: waiting for a tab, opening one or launching
    Chromium is the crawl's cost, not this URL's. `bound` is the hard limit around the whole render."""

    def __init__(self, total_s: float, spent_s: float) -> None:
        self.total_s = total_s
        self.spent_s = spent_s
        self.end: float | None = None  # time.monotonic() when it is spent, once started
        self.bound = asyncio.timeout(None)

    def start(self) -> None:
        left = self.total_s - self.spent_s
        self.end = time.monotonic() + left
        self.bound.reschedule(asyncio.get_running_loop().time() + left)

    def left(self) -> float:
        return self.total_s - self.spent_s if self.end is None else self.end - time.monotonic()

    def cap(self, seconds: float) -> float:
        """`seconds`, or the time left if that is sooner (at least 1 ms: Playwright reads 0 as no timeout)."""
        return max(0.001, min(seconds, self.left()))

    def spent(self, url: str) -> RenderFailed:
        """The failure of a render that ran out, worded like a plain fetch's."""
        by_fetch = f" ({self.spent_s:.1f}s of it by the plain fetch)" if self.spent_s >= 0.05 else ""
        return RenderFailed(url, f"gave up rendering: the per-URL budget of {self.total_s:g}s is spent{by_fetch}")


@dataclass(frozen=True)
class PrefetchedDocument:
    """A page's response as the HTTP fetcher got it (every hop already passed the SSRF guard)."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def from_response(cls, url: str, status: int, headers: Mapping[str, str], body: bytes) -> PrefetchedDocument:
        """Keep the headers a browser needs; drop those that described the bytes on the wire (httpx has
        already decoded them) and hop-by-hop ones."""
        kept = {name.lower(): value for name, value in headers.items() if name.lower() not in _WIRE_HEADERS}
        return cls(url=url, status=status, headers=kept, body=body)


_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class RenderResult:
    url: str
    status: int
    html: str
    content_type: str
    truncated: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    """The main document's response headers (lower-case names), as the browser got them: its validators and
    Date describe the rendered page like a plain fetch's do, so the next crawl can ask whether it changed."""
    subresources: list[Subresource] | None = None
    """The scripts, and the data they fetched, that the page loaded, with their validators (see
    harvest.crawl.revalidate): None when one of them cannot be asked about again."""


def use_node_compile_cache() -> None:
    """Let Playwright's Node driver keep its compiled code on disk between crawls.

    Starting the driver (Node loading Playwright) was 0.5-0.65 s of CPU per crawl that renders, the largest
    part of a launch; with the cache it is ~0.13 s less. The driver takes its environment from this process,
    hence `os.environ`. NODE_COMPILE_CACHE set by the operator wins; NODE_DISABLE_COMPILE_CACHE=1 turns
    the cache off. Node skips the cache silently when the folder cannot be written.
    """
    if "NODE_COMPILE_CACHE" in os.environ:
        return
    cache_home = os.environ.get("XDG_CACHE_HOME")
    if not cache_home:
        try:
            cache_home = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory to speak of: start uncached
            return
    os.environ["NODE_COMPILE_CACHE"] = str(Path(cache_home) / "harvest" / "node-compile-cache")


def browser_available(executable_path: str | None) -> bool:
    """True when `executable_path` names an existing executable file."""
    if not executable_path:
        return False
    path = Path(executable_path)
    return path.is_file() and bool(path.stat().st_mode & 0o111)


class BrowserRenderer:
    """Renders URLs to HTML in a shared Chromium. Call `close()` (always) when done."""

    def __init__(
        self,
        executable_path: str,
        *,
        user_agent: str,
        allow_private_networks: bool,
        max_pages: int,
        timeout_s: float,
        settle_s: float,
        max_chars: int,
        quiet_s: float = QUIET_S,
        book: AddressBook | None = None,
        url_budget_s: float | None = None,
    ) -> None:
        self.executable_path = executable_path
        self.user_agent = user_agent
        self.allow_private_networks = allow_private_networks
        self.timeout_s = timeout_s
        self.url_budget_s = url_budget_s if url_budget_s is not None else 2 * timeout_s  # as HttpFetcher's
        self.settle_s = settle_s  # hard cap on waiting for the page to become ready after DOMContentLoaded
        self.quiet_s = quiet_s
        self.max_chars = max_chars
        self.launches = 0
        self.launch_failures = 0  # in a row; reset by a launch that works
        self.launch_error: str | None = None  # why the last launch failed, as the run's warning says it
        # Requests of pages refused in the route handler (by host)...
        self.refused: Counter[str] = Counter()
        # ...and connections refused by the proxy: redirect hops, but also Chromium's own background
        # traffic (update/sign-in checks), so these are not reported as page problems.
        self.proxy_refused: Counter[str] = Counter()
        self._pages = asyncio.Semaphore(max_pages)
        self._start_lock = asyncio.Lock()
        # One address book for the route handler and the proxy (and the crawl's fetcher, when it passes its
        # own): the address checked for a host is the address the proxy dials.
        self._guard = HostGuard(allow_private_networks=allow_private_networks, book=book)
        self._playwright: Any = None
        self._browser: Any = None
        self._context: Any = None
        self._proxy: GuardProxy | None = None
        # Tabs kept open between renders: navigating a tab again is much cheaper than opening a new one.
        self._idle: list[tuple[Any, _NetworkWatch]] = []
        # Documents to serve from an earlier HTTP fetch, by tab: used once, for that tab's next navigation.
        self._prefetched: dict[Any, PrefetchedDocument] = {}

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if self._browser is not None and self._browser.is_connected():
                return
            await self._shutdown()
            if self.gave_up and self.launch_error is not None:
                raise BrowserLaunchFailed(self.launch_error)
            if not browser_available(self.executable_path):
                raise BrowserLaunchFailed(f"{MISSING_BROWSER} (not an executable: {self.executable_path!r})")
            from playwright.async_api import async_playwright

            use_node_compile_cache()
            self._proxy = GuardProxy(allow_private_networks=self.allow_private_networks, refused=self.proxy_refused,
                                     book=self._guard.book)
            proxy_url = await self._proxy.start()
            try:
                self._playwright = await async_playwright().start()
            except Exception as exc:
                await self._shutdown()
                # The driver's own error goes to this process's stderr; the exception only says the pipe closed.
                cause = await asyncio.to_thread(driver_problem) or _first_line(exc)
                raise self._launch_failed(f"Playwright's driver did not start: {cause}") from exc
            try:
                self._browser = await self._playwright.chromium.launch(
                    executable_path=self.executable_path,
                    headless=True,
                    args=CHROMIUM_ARGS,
                    proxy={"server": proxy_url},
                    timeout=max(self.timeout_s, 30.0) * 1000,
                )
                self._context = await self._browser.new_context(
                    user_agent=self.user_agent,
                    service_workers="block",  # a service worker would fetch past our route handler
                    accept_downloads=False,
                    ignore_https_errors=False,
                )
                await self._context.route("**/*", self._route)
                await self._context.add_init_script(_READ_WHEN_QUIET_INIT)
            except Exception as exc:
                await self._shutdown()
                raise self._launch_failed(
                    f"could not launch Chromium at {self.executable_path}: {launch_failure_cause(exc)}"
                ) from exc
            self.launches += 1
            self.launch_failures = 0
            log.info("launched Chromium %s for rendering", self.executable_path)

    @property
    def gave_up(self) -> bool:
        """True once launches have failed MAX_LAUNCH_ATTEMPTS times in a row: renders now fail at once."""
        return self.launch_failures >= MAX_LAUNCH_ATTEMPTS

    def _launch_failed(self, cause: str) -> BrowserLaunchFailed:
        """Count a failed launch and keep its cause; logged once per crawl, not once per page."""
        self.launch_failures += 1
        if cause != self.launch_error:
            log.warning("the browser could not start: %s", cause)
        self.launch_error = cause
        return BrowserLaunchFailed(cause)

    async def _guard_verdict(self, url: str) -> str | None:
        """None if the SSRF guard allows `url`, else its refusal message (cached per scheme+host)."""
        return await self._guard.refusal(url)

    async def _route(self, route: Any) -> None:
        request = route.request
        try:
            if request.resource_type in BLOCKED_RESOURCE_TYPES:
                await route.abort("blockedbyclient")
                return
            if self._prefetched and request.resource_type == "document" and request.is_navigation_request():
                document = self._prefetched_for(request)
                if document is not None:
                    await route.fulfill(status=document.status, headers=document.headers, body=document.body)
                    return
            url = request.url
            if not url.startswith(("data:", "blob:")):
                verdict = await self._guard_verdict(url)
                if verdict is not None:
                    self.refused[urlsplit(url).netloc or url] += 1
                    log.warning("browser request refused by the SSRF guard: %s", verdict)
                    await route.abort("blockedbyclient")
                    return
            await route.continue_()
        except Exception as exc:  # the page may have closed while we decided; nothing left to route
            log.debug("route handler for %s ended: %s", request.url, _first_line(exc))

    def _prefetched_for(self, request: Any) -> PrefetchedDocument | None:
        """The prefetched document for this main-frame navigation, if its tab has one for exactly this URL."""
        frame = request.frame
        if frame.parent_frame is not None:
            return None
        document = self._prefetched.get(frame.page)
        if document is None or document.url != request.url:
            return None
        del self._prefetched[frame.page]  # once: a script that reloads or navigates gets the network
        return document

    async def render(
        self, url: str, *, document: PrefetchedDocument | None = None, spent_s: float = 0.0
    ) -> RenderResult:
        """Navigate to `url`, wait until it is ready (see the module docstring), return the rendered HTML.

        `document`, the page's response from a plain HTTP fetch, is served to the browser instead of fetching
        `url` again (only when the browser asks for exactly `document.url`; otherwise it goes to the network).
        The render ends within what is left of the URL's budget once `spent_s` (its plain fetch) is taken off.
        Raises DisallowedURLError if the SSRF guard refuses the URL or a redirect hop, RenderFailed otherwise.
        """
        budget = _RenderBudget(self.url_budget_s, spent_s)
        try:
            async with budget.bound:
                return await self._render(url, document, budget)
        except TimeoutError as exc:
            if not budget.bound.expired():
                raise
            raise budget.spent(url) from exc

    async def _render(self, url: str, document: PrefetchedDocument | None, budget: _RenderBudget) -> RenderResult:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeoutError

        verdict = await self._guard_verdict(url)
        if verdict is not None:
            raise DisallowedURLError(verdict)
        if budget.left() <= 0:
            raise budget.spent(url)
        await self._ensure_started()
        async with self._pages:
            if self._idle:
                page, network = self._idle.pop()
                network.reset()
            else:
                page = await self._context.new_page()
                network = _NetworkWatch(page)
            budget.start()
            reusable = False
            if document is not None:
                self._prefetched[page] = document
            try:
                navigation_s = budget.cap(self.timeout_s)
                try:
                    response = await page.goto(url, wait_until="domcontentloaded", timeout=navigation_s * 1000)
                except PlaywrightTimeoutError as exc:
                    if navigation_s < self.timeout_s:
                        raise budget.spent(url) from exc
                    raise RenderFailed(url, f"navigation timed out after {self.timeout_s:g}s") from exc
                except PlaywrightError as exc:
                    raise RenderFailed(url, f"navigation failed: {_first_line(exc)}") from exc
                if response is None:
                    raise RenderFailed(url, "navigation produced no response")
                refused = response.headers.get(REFUSED_HEADER.lower())
                if response.status == 403 and refused:
                    raise DisallowedURLError(f"redirect refused while rendering {url}: {refused}")
                status = response.status
                headers = dict(response.headers)
                content_type = media_type(headers.get("content-type"))
                if status >= 400:
                    return RenderResult(url=page.url, status=status, html="", content_type=content_type,
                                        headers=headers)
                html = await self._read_when_settled(page, network, url, budget)
                truncated = len(html) > self.max_chars
                if truncated:
                    log.warning("rendered %s is larger than %d characters: truncated", url, self.max_chars)
                    html = html[: self.max_chars]
                reusable = True
                return RenderResult(
                    url=page.url, status=status, html=html, content_type=content_type, truncated=truncated,
                    headers=headers, subresources=network.subresources(),
                )
            finally:
                self._prefetched.pop(page, None)
                if reusable and not page.is_closed():
                    self._idle.append((page, network))
                else:
                    with contextlib.suppress(Exception):
                        await page.close()

    async def _read_when_settled(self, page: Any, network: _NetworkWatch, url: str, budget: _RenderBudget) -> str:
        """The rendered DOM as HTML, once the page is ready: after `load`, no request in flight and the DOM
        unchanged for `quiet_s`; at the latest `settle_s` after the document loaded, or `READ_RESERVE_S` before
        the URL's budget is spent, whichever comes first (read as it is then).

        Raises RenderFailed when the page stops answering (a script keeps it busy past the cap plus
        RESPOND_S) or keeps navigating while it is read."""
        from playwright.async_api import Error as PlaywrightError

        assert budget.end is not None
        deadline = min(time.monotonic() + self.settle_s, budget.end - READ_RESERVE_S)
        with contextlib.suppress(PlaywrightError):
            await page.wait_for_load_state("load", timeout=max(deadline - time.monotonic(), 0.001) * 1000)
        navigations = 0
        while True:
            now = time.monotonic()
            left = max(0.0, deadline - now)
            quiet_for = network.quiet_for(now)
            if quiet_for < self.quiet_s and left > 0:
                await asyncio.sleep(min(self.quiet_s - quiet_for, left) + 0.001)
                continue
            asked = time.monotonic()
            reading = page.evaluate(_READ_WHEN_QUIET, [self.quiet_s * 1000, left * 1000])
            try:
                html = await asyncio.wait_for(reading, left + RESPOND_S)
            except TimeoutError:
                raise RenderFailed(
                    url, f"the page stopped responding: a script kept it busy for over {left + RESPOND_S:.0f}s"
                ) from None
            except PlaywrightError as exc:  # navigated while we asked: read the new document
                navigations += 1
                if navigations > 2:
                    raise RenderFailed(url, f"could not read the rendered DOM: {_first_line(exc)}") from exc
                with contextlib.suppress(PlaywrightError):
                    await page.wait_for_load_state("domcontentloaded", timeout=budget.cap(self.timeout_s) * 1000)
                continue
            if not isinstance(html, str):
                raise RenderFailed(url, f"could not read the rendered DOM: got {type(html).__name__}")
            if left <= 0 or network.quiet_since(asked):
                if left <= 0:
                    log.debug("%s still busy after %gs: read as it is", page.url, self.settle_s)
                return html
            # A request started or ended while the DOM settled: it may change the page again.

    async def close(self) -> None:
        """Close the browser, Playwright and the proxy; never raises (called from finally blocks)."""
        async with self._start_lock:
            await self._shutdown()

    async def _shutdown(self) -> None:
        # Closing the browser closes its context too (closing the context first cost a round trip, ~50 ms).
        for closer in (
            self._browser.close if self._browser else None,
            self._playwright.stop if self._playwright else None,
            self._proxy.close if self._proxy else None,
        ):
            if closer is None:
                continue
            try:
                await asyncio.wait_for(closer(), 15)
            except Exception as exc:
                log.warning("error while shutting the browser down: %s", _first_line(exc))
        self._context = self._browser = self._playwright = None
        self._idle.clear()
        self._prefetched.clear()
        self._proxy = None


class _NetworkWatch:
    """Requests of one page in flight, and when the last one started or ended (from the page's events); and
    what its scripts loaded, for the next crawl to ask about (`subresources`)."""

    def __init__(self, page: Any) -> None:
        self.in_flight: set[Any] = set()
        self.last_change = time.monotonic()
        # Each script or script-fetched request → what it answered (None until answered, or when it cannot be
        # asked about again: not a GET, not a success, no validators).
        self.loaded: dict[Any, Subresource | None] = {}
        page.on("request", self._started)
        page.on("response", self._answered)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def reset(self) -> None:
        """A new navigation of the same tab: requests of the previous document no longer count."""
        self.in_flight.clear()
        self.loaded.clear()
        self.last_change = time.monotonic()

    def subresources(self) -> list[Subresource] | None:
        """What the page's scripts loaded so far, once per URL; None if anything of it cannot be revalidated
        (or is still unanswered), or there is more than MAX_SUBRESOURCES of it."""
        found: dict[str, Subresource] = {}
        for loaded in self.loaded.values():
            if loaded is None:
                return None
            found[loaded.url] = loaded
        return list(found.values()) if len(found) <= MAX_SUBRESOURCES else None

    def _started(self, request: Any) -> None:
        self.in_flight.add(request)
        self.last_change = time.monotonic()
        if request.resource_type in REVALIDATED_RESOURCE_TYPES and not request.url.startswith(("data:", "blob:")):
            self.loaded[request] = None

    def _answered(self, response: Any) -> None:
        request = response.request
        if request not in self.loaded:
            return
        validators = Validators.from_headers(response.headers)
        answered = request.method == "GET" and (200 <= response.status < 300 or response.status == 304)
        self.loaded[request] = Subresource(request.url, validators) if answered and validators else None

    def _ended(self, request: Any) -> None:
        self.in_flight.discard(request)
        self.last_change = time.monotonic()

    def quiet_since(self, moment: float) -> bool:
        """True when no request has been in flight, started or ended since `moment` (a monotonic time)."""
        return not self.in_flight and self.last_change <= moment

    def quiet_for(self, now: float) -> float:
        """Seconds since the network went quiet (0 while a request is in flight)."""
        return 0.0 if self.in_flight else max(0.0, now - self.last_change)


def launch_failure_cause(exc: BaseException) -> str:
    """What a person needs from a failed launch: Playwright's first line plus what the browser printed on stderr
    (e.g. "error while loading shared libraries: ..."), without the long command line and call log."""
    text = str(exc)
    first = _first_line(exc).removeprefix("BrowserType.launch: ")
    said = [line.split("[err] ", 1)[1].strip() for line in text.splitlines() if "][err] " in line]
    said = list(dict.fromkeys(line for line in said if line))[-3:]  # the browser log and the call log both hold them
    return f"{first}; the browser printed: {' / '.join(said)}"[:600] if said else first


def driver_problem() -> str | None:
    """Why Playwright's driver (its bundled Node.js) cannot start here, from its own stderr; None if it starts.

    Run on a failed start only: Playwright's exception says nothing but "Connection closed while reading from the
    driver", while the cause (e.g. `libatomic.so.1: cannot open shared object file`) goes to stderr."""
    try:
        from playwright._impl._driver import compute_driver_executable, get_driver_env

        node, cli = compute_driver_executable()
        done = subprocess.run([node, cli, "--version"], capture_output=True, text=True, timeout=60,
                              env=get_driver_env())
    except subprocess.TimeoutExpired:
        return "the driver did not answer `--version` within 60 s"
    except Exception as exc:  # noqa: BLE001 - no driver at all, not executable, ...: that is the answer
        return _first_line(exc)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    loader = [line for line in lines if "error while loading shared libraries" in line]
    detail = (loader or lines or [f"exit status {done.returncode}"])[-1]
    return f"{node}: {detail}"[:600]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
