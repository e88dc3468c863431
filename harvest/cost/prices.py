"""What each counted unit of a run costs: the price table (from settings) and the cost of a usage.

Usage is a flat map of counter name → count (see `Counter`); only the paid counters have a price. Prices
are list prices per unit, set in settings (`HARVEST_PRICE_*`, documented in docs/configuration.md with the
date they were checked); the Batch API's discount applies to batch tokens. Nominatim (public or self-hosted)
is free, so its requests are counted but priced at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, Field


class Counter(StrEnum):
    """The ledger's counters. Paid ones have a price in `Prices`; the rest say what a run did."""

    chat_requests = "chat_requests"
    chat_input_tokens = "chat_input_tokens"
    chat_output_tokens = "chat_output_tokens"
    chat_cache_hits = "chat_cache_hits"  # answers reused from llm_answers: a call avoided
    embedding_requests = "embedding_requests"  # synchronous calls
    embedding_tokens = "embedding_tokens"  # synchronous endpoint, full price
    batch_lines = "batch_lines"
    batch_tokens = "batch_tokens"  # Batch API, discounted
    embedding_cache_hits = "embedding_cache_hits"  # vectors reused from activities: texts not sent
    geocode_requests_google = "geocode_requests_google"
    geocode_requests_nominatim = "geocode_requests_nominatim"
    geocode_cache_hits = "geocode_cache_hits"
    pages_http = "pages_http"
    pages_browser = "pages_browser"
    pages_not_modified = "pages_not_modified"  # a 304 to a conditional GET: the page's remembered activities reused
    pages_lastmod_unchanged = "pages_lastmod_unchanged"  # sitemap <lastmod> older than the last fetch: no request
    images_downloaded = "images_downloaded"
    images_reused = "images_reused"  # a 304 to a conditional GET: no download
    bytes_stored = "bytes_stored"


Usage = Mapping[str, int]
MILLION = 1_000_000


class Prices(BaseModel):
    """USD list prices of the paid units; see docs/configuration.md for where each default comes from."""

    embedding_per_million_tokens: float = Field(default=0.02, ge=0)
    chat_input_per_million_tokens: float = Field(default=0.15, ge=0)
    chat_output_per_million_tokens: float = Field(default=0.60, ge=0)
    batch_discount: float = Field(default=0.5, ge=0, le=1, description="Share taken off batch tokens.")
    google_geocode_per_1000: float = Field(default=5.0, ge=0)

    def unit_prices(self) -> dict[str, float]:
        """USD per one unit of each paid counter."""
        embedding = self.embedding_per_million_tokens / MILLION
        return {
            Counter.chat_input_tokens: self.chat_input_per_million_tokens / MILLION,
            Counter.chat_output_tokens: self.chat_output_per_million_tokens / MILLION,
            Counter.embedding_tokens: embedding,
            Counter.batch_tokens: embedding * (1 - self.batch_discount),
            Counter.geocode_requests_google: self.google_geocode_per_1000 / 1000,
        }

    def cost(self, usage: Usage) -> float:
        """The estimated USD cost of `usage` (counters without a price cost nothing)."""
        prices = self.unit_prices()
        return sum(prices.get(name, 0.0) * count for name, count in usage.items())


def add_usage(total: dict[str, int], more: Usage) -> dict[str, int]:
    """`total` with `more` added counter by counter (in place; returned for chaining)."""
    for name, count in more.items():
        if count:
            total[name] = total.get(name, 0) + int(count)
    return total
