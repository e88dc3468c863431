"""Plain HTTP fetching for the crawler: manual redirects through the SSRF guard, retries, a size cap, decoding.

Redirects are followed by hand (never by httpx) because every hop must pass the SSRF guard: a public
page that redirects to 169.254.169.254 or an intranet host is the classic server-side request forgery,
and only a per-hop check stops it. Connections go to the addresses the guard approved (`harvest.net`).

Time: one URL holds a fetch slot for at most its budget (twice the timeout by default), from the first
byte requested to the last byte read, redirects, retries and their waits included. A body that trickles
in under `min_body_rate` once it has taken a timeout is cut, and a slow or stalled body is not retried:
a server that drips once will drip again, while a refused connection or a 503 often recovers. A page that
then needs the browser renders within what its fetch left of the budget (`harvest.crawl.browser`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, retry_if_result, stop_after_attempt
from tenacity.stop import stop_base
from w3lib.encoding import html_to_unicode

from harvest.crawl.guard import HostGuard
from harvest.crawl.page import PageFailed
from harvest.net.pinned import AddressBook
from harvest.net.transport import async_transport, env_proxy_mounts
from harvest.retries import exponential_backoff, parse_retry_after, wait_retry_after

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
# 1 KiB/s: a 100 KB page at this rate takes 100 s, past any budget; only a drip is this slow.
DEFAULT_MIN_BODY_RATE = 1024.0
PAGE_TYPES = ("text/html", "application/xhtml+xml")
# iCalendar feeds are read too (issue 26): a site's "Export .ics" / webcal: link says what its pages only show.
CALENDAR_TYPES = ("text/calendar", "text/x-vcalendar", "application/ics")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# 501 (not implemented) will not get better by asking again; the other 5xx and 429 often do.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
ACCEPT_PAGES = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"
# Worth another try: timeouts before the body (httpx's connect/read of the head) and connection failures.
RETRY_ERRORS = (httpx.TimeoutException, TimeoutError, httpx.TransportError)


class FetchFailed(PageFailed):
    """One URL could not be fetched (network error after retries, redirect loop, too many redirects)."""


class SlowBody(FetchFailed):
    """A body stalled or trickled in under the minimum rate: cut, and not retried."""


class _StopAtDeadline(stop_base):
    """Stop retrying when the next wait would end past the URL's deadline (its budget is then spent)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self.deadline


@dataclass
class FetchResult:
    """The final (non-redirect) response for a URL, body capped at the fetcher's byte limit."""

    url: str
    requested_url: str
    status: int
    content_type: str
    headers: httpx.Headers
    body: bytes
    truncated: bool = False
    redirects: list[str] = field(default_factory=list)
    # Of the URL's budget, what this fetch used (every hop, retry and wait): a render of the page gets the rest.
    elapsed_s: float = 0.0

    @property
    def is_page(self) -> bool:
        """Only HTML documents are pages; PDFs, images, feeds and downloads are not crawled."""
        return self.content_type in PAGE_TYPES

    @property
    def is_calendar(self) -> bool:
        """An iCalendar feed, by its type or (served as text/plain or octet-stream) by its first line."""
        if self.content_type in CALENDAR_TYPES:
            return True
        return self.content_type in ("text/plain", "application/octet-stream", "") and self.body[:64].lstrip(
            b"\xef\xbb\xbf \t\r\n"
        ).upper().startswith(b"BEGIN:VCALENDAR")

    def text(self) -> str:
        """The body decoded like a browser would: BOM, Content-Type charset, <meta charset>, then a sniff."""
        _, text = html_to_unicode(self.headers.get("content-type"), self.body, auto_detect_fun=_sniff_encoding)
        return text


def _sniff_encoding(body: bytes) -> str | None:
    """Undeclared pages are UTF-8 if they decode as such, otherwise most likely Windows-1252 (a latin-1 superset)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the size cap is still UTF-8.
        if exc.start < len(body) - 4:
            return "cp1252"
    return "utf-8"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _drop_fragment(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))


def _retry_after_of(state: RetryCallState) -> float | None:
    """The Retry-After of the response the last attempt got (a 429 or 5xx), if any."""
    outcome = state.outcome
    if outcome is None or outcome.failed:
        return None
    return parse_retry_after(outcome.result().headers.get("retry-after"))


class HttpFetcher:
    """An httpx AsyncClient wrapped with the crawler's safety rules. Use as `async with HttpFetcher(...)`."""

    def __init__(
        self,
        *,
        user_agent: str,
        allow_private_networks: bool,
        timeout_s: float = 20.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retries: int = 3,
        backoff_s: float = 0.5,
        retry_after_cap_s: float = 30.0,
        max_redirects: int = 10,
        max_connections: int = 16,
        url_budget_s: float | None = None,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
        book: AddressBook | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.allow_private_networks = allow_private_networks
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.retry_after_cap_s = retry_after_cap_s
        self.max_redirects = max_redirects
        self.url_budget_s = url_budget_s if url_budget_s is not None else 2 * timeout_s
        self.min_body_rate = min_body_rate
        self._guard = HostGuard(allow_private_networks=allow_private_networks, book=book)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            headers={"User-Agent": user_agent},
            limits=limits,
            # Direct connections dial the addresses the guard approved (an operator's HTTP_PROXY still applies).
            transport=async_transport(book=self._guard.book, limits=limits),
            mounts=env_proxy_mounts(asynchronous=True, limits=limits),
        )

    async def __aenter__(self) -> HttpFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def book(self) -> AddressBook:
        """The addresses approved for each host, shared with whoever else must connect where the guard checked."""
        return self._guard.book

    async def check_allowed(self, url: str) -> None:
        """Run the SSRF guard (off the event loop, cached per host); raises DisallowedURLError."""
        await self._guard.check(url)

    async def fetch(
        self, url: str, *, pages_only: bool = True, max_bytes: int | None = None, headers: dict[str, str] | None = None
    ) -> FetchResult:
        """GET `url`, following up to `max_redirects` redirects, each hop checked by the SSRF guard.

        Returns the final response even for 4xx/5xx (the caller decides what a status means); raises
        FetchFailed for network failures after retries and for redirect loops/chains, and
        DisallowedURLError when any hop is refused. With `pages_only`, non-HTML bodies are not downloaded.
        The whole call, every hop and retry included, ends within `url_budget_s` (what it used: `elapsed_s`).
        `headers` go with every hop (conditional request headers: a 304 is returned like any status).
        """
        started = time.monotonic()
        deadline = started + self.url_budget_s
        budget = asyncio.timeout(self.url_budget_s)
        try:
            async with budget:
                result = await self._fetch(url, pages_only=pages_only, max_bytes=max_bytes, deadline=deadline,
                                           headers=headers)
            result.elapsed_s = time.monotonic() - started
            return result
        except TimeoutError as exc:
            if not budget.expired():
                raise
            raise FetchFailed(url, f"gave up: the per-URL budget of {self.url_budget_s:g}s is spent") from exc

    async def _fetch(
        self, url: str, *, pages_only: bool, max_bytes: int | None, deadline: float,
        headers: dict[str, str] | None,
    ) -> FetchResult:
        limit = self.max_bytes if max_bytes is None else max_bytes
        current = _drop_fragment(url)
        chain = [current]
        for hop in range(self.max_redirects + 1):
            await self.check_allowed(current)
            result = await self._get_with_retries(
                current, pages_only=pages_only, max_bytes=limit, deadline=deadline, headers=headers
            )
            location = result.headers.get("location")
            if result.status not in REDIRECT_STATUSES or not location:
                result.requested_url = url
                result.redirects = chain[:-1]
                return result
            try:
                target = _drop_fragment(urljoin(current, location.strip()))
            except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 literal
                raise FetchFailed(
                    url, f"redirect from {current} to malformed URL {location[:200]!r} refused ({exc})", result.status
                ) from exc
            if urlsplit(target).scheme.lower() not in ("http", "https"):
                raise FetchFailed(url, f"redirect from {current} to non-http(s) URL {target!r} refused", result.status)
            if target in chain:
                loop = " -> ".join(chain[chain.index(target):] + [target])
                raise FetchFailed(url, f"redirect loop: {loop}", result.status)
            if hop == self.max_redirects:
                raise FetchFailed(
                    url, f"too many redirects: more than {self.max_redirects} hops (last {current})", result.status
                )
            chain.append(target)
            current = target
        raise AssertionError("unreachable: the redirect loop always returns or raises")

    async def _get_with_retries(
        self, url: str, *, pages_only: bool, max_bytes: int, deadline: float,
        headers: dict[str, str] | None = None,
    ) -> FetchResult:
        """One hop, retried with exponential backoff on timeouts, connection errors, 5xx and 429.

        After the last attempt (or when the next wait would pass the URL's deadline) a retryable status is
        returned like any other (the caller records it); a network failure becomes FetchFailed with the last
        reason and the attempt count. A slow body (SlowBody) is not retried.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1) | _StopAtDeadline(deadline),
            wait=wait_retry_after(_retry_after_of, fallback=exponential_backoff(self.backoff_s),
                                  cap_s=self.retry_after_cap_s),
            retry=retry_if_exception_type(RETRY_ERRORS) | retry_if_result(lambda r: r.status in RETRY_STATUSES),
            before_sleep=lambda state: self._log_retry(url, state),
            retry_error_callback=lambda state: self._give_up(url, state),
            sleep=asyncio.sleep,
        )
        result: FetchResult = await retrying(
            self._get_checked, url, pages_only=pages_only, max_bytes=max_bytes, headers=headers
        )
        return result

    async def _get_checked(
        self, url: str, *, pages_only: bool, max_bytes: int, headers: dict[str, str] | None = None
    ) -> FetchResult:
        try:
            return await self._get_once(url, pages_only=pages_only, max_bytes=max_bytes, headers=headers)
        except (httpx.InvalidURL, httpx.DecodingError) as exc:
            # Not worth a retry: httpx refuses a Location it cannot parse even when it is not following
            # redirects (a 302 to "javascript:..."), or the body does not decode (a lying Content-Encoding).
            raise FetchFailed(url, f"malformed response refused: {type(exc).__name__}: {exc}") from exc

    def _check_rate(self, url: str, size: int, elapsed: float) -> None:
        """Cut a body that, having taken a whole timeout already, still averages under `min_body_rate`."""
        if elapsed > self.timeout_s and size < self.min_body_rate * elapsed:
            raise SlowBody(url, f"body too slow: {size} bytes in {elapsed:.1f}s, under the minimum "
                                f"{self.min_body_rate:g} bytes/s (cut, not retried)")

    def _failure_reason(self, exc: BaseException | None) -> str:
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return f"timed out after {self.timeout_s:g}s"
        return f"connection failed: {type(exc).__name__}: {exc}"

    def _log_retry(self, url: str, state: RetryCallState) -> None:
        outcome = state.outcome
        delay = state.next_action.sleep if state.next_action else 0.0
        if outcome is not None and not outcome.failed:
            what = f"HTTP {outcome.result().status} from {url}"
        else:
            what = f"{self._failure_reason(outcome.exception() if outcome else None)} for {url}"
        log.info("%s; retry %d/%d in %.2fs", what, state.attempt_number, self.retries, delay)

    def _give_up(self, url: str, state: RetryCallState) -> FetchResult:
        """After the last attempt: its response if it had one, else FetchFailed."""
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            result: FetchResult = outcome.result()
            return result
        exc = outcome.exception() if outcome is not None else None
        tries = state.attempt_number
        attempts = f"{tries} attempt" + ("s" if tries != 1 else "")
        if tries <= self.retries:
            attempts += f"; no time left in the per-URL budget of {self.url_budget_s:g}s for another"
        raise FetchFailed(url, f"{self._failure_reason(exc)} ({attempts})") from exc

    async def _get_once(
        self, url: str, *, pages_only: bool, max_bytes: int, headers: dict[str, str] | None = None
    ) -> FetchResult:
        sent = {"Accept": ACCEPT_PAGES} if pages_only else {}
        async with self._client.stream("GET", url, headers={**sent, **(headers or {})}) as response:
            ctype = media_type(response.headers.get("content-type"))
            result = FetchResult(
                url=url,
                requested_url=url,
                status=response.status_code,
                content_type=ctype,
                headers=response.headers,
                body=b"",
            )
            if response.status_code in REDIRECT_STATUSES or response.status_code >= 400:
                return result
            if pages_only and ctype and ctype not in PAGE_TYPES and ctype not in CALENDAR_TYPES:
                return result  # not a page: do not spend bandwidth on a PDF or a video
            chunks: list[bytes] = []
            size = 0
            started = time.monotonic()
            try:
                async for chunk in response.aiter_bytes():
                    if size + len(chunk) > max_bytes:
                        chunks.append(chunk[: max_bytes - size])
                        result.truncated = True
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    self._check_rate(url, size, time.monotonic() - started)
            except httpx.TimeoutException as exc:
                raise SlowBody(url, f"body stalled: no byte for {self.timeout_s:g}s after {size} bytes") from exc
            result.body = b"".join(chunks)
        if result.truncated:
            log.warning("%s is larger than %d bytes: truncated to the first %d bytes", url, max_bytes, max_bytes)
        if not ctype and result.body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            result.content_type = "text/html"  # no Content-Type at all: sniff like a browser would
        return result
