"""How to crawl, beyond the run config: declared once here, filled from settings by `from_settings`.

The first five fields are shared with other stages (images use the same user agent, timeout, per-host
limit and SSRF policy), so their defaults live in `HarvestSettings`; the rest are the crawler's own and
default here. Every one can be set from the environment (`HARVEST_CRAWL_<FIELD>` for the crawler's own, `_s`
spelled `_SECONDS`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace
from typing import TYPE_CHECKING

from harvest.crawl.frontier import DEFAULT_TRAP_LIMIT
from harvest.crawl.http_fetch import DEFAULT_MAX_BYTES, DEFAULT_MIN_BODY_RATE

if TYPE_CHECKING:
    from harvest.settings import HarvestSettings


@dataclass(frozen=True)
class CrawlOptions:
    """Everything about how to crawl that is not in RunConfig."""

    browser_path: str | None
    """Chromium executable; None: pages that need a browser fail, as render="http" would."""
    user_agent: str
    allow_private_networks: bool
    """The SSRF guard: False refuses loopback, private, link-local and metadata addresses."""
    per_host_concurrency: int
    timeout_s: float
    """One request (or one render) may take this long before it fails."""
    max_concurrency: int = 8
    """Page fetches in flight at once, over every host."""
    browser_pages: int = 4
    """Tabs rendering at once."""
    trap_limit: int = DEFAULT_TRAP_LIMIT
    """URLs that differ only in their query string followed per path before the rest count as a trap."""
    max_page_bytes: int = DEFAULT_MAX_BYTES
    """Pages larger than this fail (read stops there)."""
    learn_after: int = 3
    """After this many of a host's pages needed the browser, auto mode renders the rest without asking HTTP."""
    retries: int = 3
    """Attempts for a transient failure (connection, 429, 5xx), with exponential backoff."""
    backoff_s: float = 0.5
    """First backoff between attempts."""
    settle_s: float = 2.0
    """Longest wait for a rendered page's network and DOM to go quiet."""
    queue_size: int = 16
    """Pages the crawl may get ahead of its consumer before it pauses."""
    url_budget_s: float | None = None
    """Most time one URL may hold a fetch slot, first byte requested to last byte read, redirects and retries
    included, and a render of it (which gets what the plain fetch left); None: twice `timeout_s`."""
    min_body_rate: float = DEFAULT_MIN_BODY_RATE
    """Bytes per second a page body must average once it has taken `timeout_s`; slower bodies are cut."""

    @classmethod
    def from_settings(cls, settings: HarvestSettings) -> CrawlOptions:
        """The options `settings` describe: the shared ones always, the crawler's own where set."""
        options = cls(
            browser_path=settings.browser_path,
            user_agent=settings.user_agent,
            allow_private_networks=settings.allow_private_networks,
            per_host_concurrency=settings.per_host_concurrency,
            timeout_s=settings.request_timeout_seconds,
        )
        own = {field.name: getattr(settings, _setting_name(field.name)) for field in fields(cls)
               if field.default is not MISSING}
        return replace(options, **{name: value for name, value in own.items() if value is not None})


def _setting_name(field: str) -> str:
    """The settings field of one of the crawler's own options (`backoff_s` -> `crawl_backoff_seconds`)."""
    return "crawl_" + (field[:-2] + "_seconds" if field.endswith("_s") else field)
