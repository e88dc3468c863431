"""The records a crawl hands back: pages, failed URLs and running statistics."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from harvest.errors import CrawlError


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
    unfollowed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Links a limit left unfollowed: reason (max_pages, max_depth, max_extractions, max_crawl_seconds) ->
    {count, examples}."""
    deadline_cut_in_flight: int = 0
    """URLs being fetched or rendered when `max_crawl_seconds` stopped the crawl (counted in `unfollowed`)."""

    def snapshot(self) -> CrawlStats:
        return copy.deepcopy(self)


class PageFailed(CrawlError):
    """One URL failed after its retries; `reason` and `status` go into the run's failed URLs."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status
