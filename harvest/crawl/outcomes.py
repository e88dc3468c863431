"""What handling one URL comes to, as the crawl's scheduler receives it, and the pages it has emitted so far."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from harvest.crawl.browser import PrefetchedDocument
from harvest.crawl.frontier import FrontierItem, normalize_url
from harvest.crawl.links import PageLinks
from harvest.crawl.page import FailedURL, Page
from harvest.net.conditional import Validators


@dataclass
class Fetched:
    page: Page
    links: PageLinks


@dataclass
class Skipped:
    reason: str
    detail: str


@dataclass
class Render:
    """This URL must be rendered by the browser: done by a render task of its own, off the HTTP slots."""

    item: FrontierItem
    requested_url: str | None = None
    # URLs this page is known by before rendering (requested, fetched, same-site canonical): a render whose
    # keys another render already covers waits for it and is skipped as a duplicate if that one succeeds.
    keys: frozenset[str] = frozenset()
    # The page's plain HTTP response, served to the browser instead of fetching the page again.
    document: PrefetchedDocument | None = None
    # What that response said about its version, kept with the rendered page for the next crawl.
    validators: Validators | None = None
    fetched_at: datetime | None = None
    # Of the URL's budget, what its plain fetch used: the render gets the rest.
    budget_spent_s: float = 0.0
    # Sent straight to the browser by the host's learned rule (render="auto"), not judged by a plain fetch.
    learned: bool = False


Outcome = Fetched | Skipped | FailedURL
Step = Outcome | Render


class Emitted:
    """The pages the crawl has handed on, by every URL each is known by (its identity and its final URL): a page
    reached again under another URL is a duplicate. With a page memory (`track_origin`), also which requested URL
    emitted each key: a remembered duplicate names its original."""

    def __init__(self, *, track_origin: bool) -> None:
        self.keys: set[str] = set()
        self.by: dict[str, str] = {}
        self.count = 0
        self._track_origin = track_origin

    @staticmethod
    def keys_of(page: Page) -> set[str]:
        return {page.url, normalize_url(page.final_url) or page.final_url}

    def add(self, keys: set[str], requested_url: str) -> None:
        self.keys |= keys
        if self._track_origin:
            self.by.update(dict.fromkeys(keys, requested_url))
        self.count += 1

    def knows(self, keys: set[str] | frozenset[str]) -> bool:
        return bool(keys & self.keys)

    def first_known(self, keys: set[str] | frozenset[str]) -> str | None:
        """The first (sorted) of `keys` an emitted page is known by, or None."""
        known = keys & self.keys
        return min(known) if known else None
