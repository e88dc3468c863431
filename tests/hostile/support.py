"""Plain helpers shared by the hostile-input tests (fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from harvest.crawl import CrawlStats, FailedURL, Page
from harvest.models import RunConfig

UA = "harvest/0.1 (+https://github.com/harvest; hostile-tests)"
# A globally routable address the SSRF guard allows. Nothing ever connects to it: requests for it go to
# the hostile site acting as a forward proxy on loopback (see the `public_proxy` fixture).
PUBLIC_HOST = "93.184.216.34"


def public_url(path: str = "/") -> str:
    return f"http://{PUBLIC_HOST}{path}"


@dataclass
class CrawlResult:
    pages: list[Page]
    stats: CrawlStats

    def page(self, suffix: str) -> Page:
        matches = [p for p in self.pages if p.url.endswith(suffix) or p.requested_url.endswith(suffix)]
        assert matches, f"no page ending in {suffix}: {[p.url for p in self.pages]}"
        return matches[0]

    def paths(self) -> list[str]:
        out = []
        for page in self.pages:
            parts = urlsplit(page.url)
            out.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        return out

    def failed(self, suffix: str) -> FailedURL:
        matches = [f for f in self.stats.failed_urls if f.url.endswith(suffix)]
        assert matches, f"no failed URL ending in {suffix}: {self.stats.failed_urls}"
        return matches[0]


def make_config(**overrides: object) -> RunConfig:
    base: dict[str, object] = {"max_pages": 100, "max_depth": 5, "render": "http"}
    base.update(overrides)
    return RunConfig(**base)  # type: ignore[arg-type]


