"""Plain helpers shared by the hostile-input tests (fixtures live in conftest.py)."""

from __future__ import annotations

from harvest.models import RunConfig
from tests.crawl_harness import CrawlResult
from tests.crawl_harness import make_config as harness_config

__all__ = ["PUBLIC_HOST", "UA", "CrawlResult", "make_config", "public_url"]

UA = "harvest/0.1 (+https://github.com/harvest; hostile-tests)"
# A globally routable address the SSRF guard allows. Nothing ever connects to it: requests for it go to
# the hostile site acting as a forward proxy on loopback (see the `public_proxy` fixture).
PUBLIC_HOST = "93.184.216.34"


def public_url(path: str = "/") -> str:
    return f"http://{PUBLIC_HOST}{path}"


def make_config(**overrides: object) -> RunConfig:
    return harness_config(**{"max_pages": 100, **overrides})  # type: ignore[arg-type]
