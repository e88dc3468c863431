"""Rendering pages whose content is built by scripts, with Playwright driving a local Chromium.

One browser and one context are launched lazily (a crawl that never needs them never pays for them)
and reused for every page; pages are bounded by a semaphore. Only the DOM matters, so images, fonts,
media and stylesheets are never downloaded. Every request the page makes is checked by the SSRF
guard twice over: in the route handler (first hop, cheap abort) and in `GuardProxy`, which Chromium
must use for all traffic and which also sees redirect hops the route handler never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harvest.crawl.guard_proxy import REFUSED_HEADER, GuardProxy
from harvest.crawl.guard import HostGuard
from harvest.crawl.http_fetch import DEFAULT_MAX_BYTES, media_type
from harvest.crawl.page import PageFailed
from harvest.errors import DisallowedURLError

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
MISSING_BROWSER = "no Chromium found: set HARVEST_BROWSER_PATH"


class RenderFailed(PageFailed):
    """One page could not be rendered (navigation error, timeout, browser crash)."""


@dataclass
class RenderResult:
    url: str
    status: int
    html: str
    content_type: str
    truncated: bool = False


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
        max_pages: int = 2,
        timeout_s: float = 20.0,
        networkidle_s: float = 2.0,
        max_chars: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.executable_path = executable_path
        self.user_agent = user_agent
        self.allow_private_networks = allow_private_networks
        self.timeout_s = timeout_s
        self.networkidle_s = networkidle_s
        self.max_chars = max_chars
        self.launches = 0
        # Requests of pages refused in the route handler (by host)...
        self.refused: Counter[str] = Counter()
        # ...and connections refused by the proxy: redirect hops, but also Chromium's own background
        # traffic (update/sign-in checks), so these are not reported as page problems.
        self.proxy_refused: Counter[str] = Counter()
        self._pages = asyncio.Semaphore(max_pages)
        self._start_lock = asyncio.Lock()
        self._guard = HostGuard(allow_private_networks=allow_private_networks)
        self._playwright: Any = None
        self._browser: Any = None
        self._context: Any = None
        self._proxy: GuardProxy | None = None

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if self._browser is not None and self._browser.is_connected():
                return
            await self._shutdown()
            if not browser_available(self.executable_path):
                raise RenderFailed("(browser)", f"{MISSING_BROWSER} (not an executable: {self.executable_path!r})")
            from playwright.async_api import async_playwright

            self._proxy = GuardProxy(allow_private_networks=self.allow_private_networks, refused=self.proxy_refused)
            proxy_url = await self._proxy.start()
            self._playwright = await async_playwright().start()
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
            except Exception as exc:
                await self._shutdown()
                raise RenderFailed(
                    "(browser)", f"could not launch Chromium at {self.executable_path}: {_first_line(exc)}"
                ) from exc
            self.launches += 1
            log.info("launched Chromium %s for rendering", self.executable_path)

    async def _guard_verdict(self, url: str) -> str | None:
        """None if the SSRF guard allows `url`, else its refusal message (cached per scheme+host)."""
        return await self._guard.refusal(url)

    async def _route(self, route: Any) -> None:
        request = route.request
        try:
            if request.resource_type in BLOCKED_RESOURCE_TYPES:
                await route.abort("blockedbyclient")
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

    async def render(self, url: str) -> RenderResult:
        """Navigate to `url`, wait for the DOM (plus a bounded network-idle wait), return the rendered HTML.

        Raises DisallowedURLError if the SSRF guard refuses the URL or a redirect hop, RenderFailed otherwise.
        """
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeoutError

        verdict = await self._guard_verdict(url)
        if verdict is not None:
            raise DisallowedURLError(verdict)
        await self._ensure_started()
        async with self._pages:
            page = await self._context.new_page()
            try:
                try:
                    response = await page.goto(url, wait_until="domcontentloaded", timeout=self.timeout_s * 1000)
                except PlaywrightTimeoutError as exc:
                    raise RenderFailed(url, f"navigation timed out after {self.timeout_s:g}s") from exc
                except PlaywrightError as exc:
                    raise RenderFailed(url, f"navigation failed: {_first_line(exc)}") from exc
                if response is None:
                    raise RenderFailed(url, "navigation produced no response")
                refused = response.headers.get(REFUSED_HEADER.lower())
                if response.status == 403 and refused:
                    raise DisallowedURLError(f"redirect refused while rendering {url}: {refused}")
                status = response.status
                content_type = media_type(response.headers.get("content-type"))
                if status >= 400:
                    return RenderResult(url=page.url, status=status, html="", content_type=content_type)
                with contextlib.suppress(PlaywrightTimeoutError):
                    await page.wait_for_load_state("networkidle", timeout=self.networkidle_s * 1000)
                html = await self._content(page, url)
                truncated = len(html) > self.max_chars
                if truncated:
                    log.warning("rendered %s is larger than %d characters: truncated", url, self.max_chars)
                    html = html[: self.max_chars]
                return RenderResult(
                    url=page.url, status=status, html=html, content_type=content_type, truncated=truncated
                )
            finally:
                with contextlib.suppress(Exception):
                    await page.close()

    async def _content(self, page: Any, url: str) -> str:
        """page.content(), retried once when a script navigated the page while we asked."""
        from playwright.async_api import Error as PlaywrightError

        for attempt in range(2):
            try:
                return await page.content()
            except PlaywrightError as exc:
                if attempt:
                    raise RenderFailed(url, f"could not read the rendered DOM: {_first_line(exc)}") from exc
                with contextlib.suppress(PlaywrightError):
                    await page.wait_for_load_state("domcontentloaded", timeout=self.timeout_s * 1000)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close context, browser, Playwright and the proxy; never raises (called from finally blocks)."""
        async with self._start_lock:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for closer in (
            self._context.close if self._context else None,
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
        self._proxy = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
