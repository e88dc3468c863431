"""The records a crawl hands back: pages, failed URLs and running statistics."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from harvest.crawl.revalidate import Remembered, Subresource
from harvest.errors import CrawlError

if TYPE_CHECKING:
    from harvest.net.conditional import Validators


@dataclass
class Page:
    """One fetched HTML page. `url` is its identity (canonical URL, else the final URL after redirects)."""

    url: str
    requested_url: str
    status: int
    html: str
    depth: int
    rendered: bool
    content_type: str
    final_url: str = ""
    truncated: bool = False
    validators: Validators | None = None
    """The response's ETag / Last-Modified, kept for the next crawl's conditional request."""
    fetched_at: datetime | None = None
    """When the server produced the content (its Date), for the next crawl's sitemap `<lastmod>` check."""
    links: list[str] = field(default_factory=list)
    """Outgoing links as extracted (kept with the page, so a reused page's links are followed again)."""
    pagination: list[str] = field(default_factory=list)
    led_somewhere_new: bool = True
    """Whether the page linked to a page the crawl had not seen yet, other than its own listing's next pages (set
    by the crawl when it accepts the page): a listing without items of its own that leads nowhere new gave nothing."""
    reused: Remembered | None = None
    """Set when the page was not downloaded again: a 304 (`reuse_reason` "not_modified") or a sitemap
    `<lastmod>` not newer than the last fetch ("lastmod"). `html` is then empty: use what the entry kept."""
    reuse_reason: str | None = None
    subresources: list[Subresource] | None = None
    """For a rendered page: the scripts and script-fetched data it loaded, with their validators; None when
    one of them cannot be revalidated (see harvest.crawl.revalidate)."""


@dataclass
class FailedURL:
    """A URL the crawl could not turn into a page, and why; recorded so no failure is silently lost."""

    url: str
    reason: str
    status: int | None = None


@dataclass
class CrawlStats:
    """Counters of a crawl so far; `skipped` maps a reason (robots, trap, external, excluded, ...) to a count."""

    pages_fetched: int = 0
    pages_rendered: int = 0
    pages_http: int = 0
    failed_urls: list[FailedURL] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    browser_launches: int = 0
    problems: list[str] = field(default_factory=list)
    pages_queued: int = 0
    """URLs waiting in the frontier right now (for progress displays)."""
    pages_not_modified: int = 0
    """Pages a conditional request found unchanged (304): reused, not downloaded (part of pages_fetched)."""
    pages_lastmod_unchanged: int = 0
    """Pages the sitemap's `<lastmod>` showed unchanged since the last fetch: reused without a request."""
    pages_scripts_changed: int = 0
    """Remembered rendered pages fetched in full because something their scripts loaded last time changed (or
    cannot be asked about): a document's 304 does not cover its scripts' data."""
    unfollowed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Links a limit left unfollowed: reason (max_pages, max_depth, max_extractions, max_crawl_seconds) ->
    {count, examples}."""
    deadline_cut_in_flight: int = 0
    """URLs being fetched or rendered when `max_crawl_seconds` stopped the crawl, or fetched but not yet handed
    on (counted in `unfollowed`)."""
    pages_unrendered: int = 0
    """Pages that needed the browser while it could not start (in `failed_urls` too): their content is missing."""
    browser_error: str | None = None
    """Why the browser could not start (not installed, its launch failed, Playwright's driver did not start)."""

    def snapshot(self) -> CrawlStats:
        return copy.deepcopy(self)


class PageFailed(CrawlError):
    """One URL failed after its retries; `reason` and `status` go into the run's failed URLs."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


def entry_for(page: Page, activities: list[dict[str, Any]]) -> Remembered | None:
    """What to keep of a consumed page for the next crawl; None for a page that must not answer for itself
    later (cut off by the size cap, or with no fetch time)."""
    if page.truncated or page.fetched_at is None:
        return None
    return Remembered(
        url=page.requested_url, page_url=page.url, final_url=page.final_url or page.url,
        validators=page.validators, fetched_at=page.fetched_at, links=list(page.links),
        pagination=list(page.pagination), rendered=page.rendered, activities=activities,
        subresources=list(page.subresources) if page.subresources is not None else None,
    )
