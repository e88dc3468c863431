"""The crawl harness the crawler's tests share (tests/unit/crawl/ and tests/hostile/): a crawl run to its end
with everything it gave, and a test RunConfig. Each suite's conftest binds its own defaults (the hostile suite
crawls with shorter timeouts and one retry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from harvest.crawl import CrawlOptions, CrawlStats, FailedURL, Page, crawl
from harvest.models import RunConfig


@dataclass
class CrawlResult:
    pages: list[Page]
    stats: CrawlStats

    @property
    def urls(self) -> list[str]:
        return [page.url for page in self.pages]

    def page(self, suffix: str) -> Page:
        matches = [p for p in self.pages if p.url.endswith(suffix) or p.requested_url.endswith(suffix)]
        assert matches, f"no page ending in {suffix}: {[p.url for p in self.pages]}"
        return matches[0]

    def paths(self) -> list[str]:
        parts = [urlsplit(page.url) for page in self.pages]
        return [part.path + (f"?{part.query}" if part.query else "") for part in parts]

    def failed(self, suffix: str) -> FailedURL:
        matches = [failure for failure in self.stats.failed_urls if failure.url.endswith(suffix)]
        assert matches, f"no failed URL ending in {suffix}: {self.stats.failed_urls}"
        return matches[0]


def make_config(max_pages: int = 50, **overrides: object) -> RunConfig:
    """A RunConfig for tests: plain HTTP, generous limits unless the test says otherwise."""
    base: dict[str, object] = {"max_pages": max_pages, "max_depth": 5, "render": "http"}
    base.update(overrides)
    return RunConfig(**base)  # type: ignore[arg-type]


def crawl_all(start_url: str, config: RunConfig | None = None, *, defaults: dict[str, Any],
              config_for: Callable[[], RunConfig] = make_config, **options: object) -> CrawlResult:
    """Crawl to the end and collect everything; `options` (CrawlOptions fields, and the `needs_browser` and
    `on_progress` callbacks) over the suite's `defaults`."""
    kwargs: dict[str, object] = {**defaults, **options}
    callbacks = {name: kwargs.pop(name) for name in ("needs_browser", "on_progress") if name in kwargs}
    with crawl(start_url, config or config_for(), CrawlOptions(**kwargs), **callbacks) as running:  # type: ignore[arg-type]
        pages = list(running)
        return CrawlResult(pages, running.stats)


def crawl_runner(defaults: dict[str, Any], config_for: Callable[[], RunConfig] = make_config) -> Callable[..., CrawlResult]:
    """A suite's `run_crawl` fixture value: `crawl_all` with its defaults."""
    return partial(crawl_all, defaults=defaults, config_for=config_for)
