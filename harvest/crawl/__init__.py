"""The crawler: turns a start URL and a RunConfig into a stream of HTML pages (plain HTTP or rendered).

    with crawl(url, config, CrawlOptions.from_settings(settings)) as pages:
        for page in pages:
            ...
        stats = pages.stats
"""

from __future__ import annotations

from harvest.crawl.browser import MISSING_BROWSER, BrowserRenderer, RenderFailed, browser_available
from harvest.crawl.crawler import Crawl, crawl
from harvest.crawl.frontier import Frontier, normalize_url, site_of
from harvest.crawl.heuristics import needs_browser
from harvest.crawl.http_fetch import FetchFailed, FetchResult, HttpFetcher
from harvest.crawl.options import CrawlOptions
from harvest.crawl.page import CrawlStats, FailedURL, Page
from harvest.crawl.robots import RobotsPolicy, parse_robots

__all__ = [
    "MISSING_BROWSER",
    "BrowserRenderer",
    "Crawl",
    "CrawlOptions",
    "CrawlStats",
    "FailedURL",
    "FetchFailed",
    "FetchResult",
    "Frontier",
    "HttpFetcher",
    "Page",
    "RenderFailed",
    "RobotsPolicy",
    "browser_available",
    "crawl",
    "needs_browser",
    "normalize_url",
    "parse_robots",
    "site_of",
]
