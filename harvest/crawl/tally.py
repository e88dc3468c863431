"""The crawl's counters (`CrawlStats`) as its scheduler writes them: every write under the lock the consuming
thread takes to read a consistent snapshot."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from harvest.crawl.browser import BrowserRenderer
from harvest.crawl.frontier import UNFOLLOWED_EXAMPLES, Frontier
from harvest.crawl.page import CrawlStats, FailedURL, Page


class Tally:
    def __init__(self, stats: CrawlStats, lock: threading.Lock) -> None:
        self.stats = stats
        self.lock = lock

    def skip(self, reason: str, count: int = 1) -> None:
        with self.lock:
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + count

    @contextmanager
    def frontier_skips(self, frontier: Frontier) -> Iterator[None]:
        """Count what the frontier refused (traps, externals, exclusions...) while the block added links."""
        before = Counter(frontier.skipped)
        yield
        for reason, count in frontier.skipped.items():
            if count > before.get(reason, 0):
                self.skip(reason, count - before.get(reason, 0))

    def unfollowed(self, reason: str, count: int, examples: list[str]) -> None:
        with self.lock:
            entry = self.stats.unfollowed.setdefault(reason, {"count": 0, "examples": []})
            entry["count"] += count
            entry["examples"] = (entry["examples"] + examples)[:UNFOLLOWED_EXAMPLES]

    def unrendered(self, url: str, cause: str) -> FailedURL:
        """A page that needs the browser while the browser cannot start: counted apart from other failures, so
        the run can say once why its script-built pages are missing (CrawlStats.pages_unrendered)."""
        with self.lock:
            self.stats.pages_unrendered += 1
            self.stats.browser_error = cause
        return FailedURL(url, f"needs a browser to render its content, and the browser could not start: {cause}", None)

    def failed(self, outcome: FailedURL) -> None:
        with self.lock:
            self.stats.failed_urls.append(outcome)

    def emitted(self, page: Page) -> None:
        """One page handed on, counted by how it was had: reused (304, or `<lastmod>`), rendered, or plain HTTP."""
        with self.lock:
            self.stats.pages_fetched += 1
            if page.reuse_reason == "not_modified":
                self.stats.pages_not_modified += 1
            elif page.reuse_reason == "lastmod":
                self.stats.pages_lastmod_unchanged += 1
            elif page.rendered:
                self.stats.pages_rendered += 1
            else:
                self.stats.pages_http += 1

    def queued(self, count: int) -> None:
        with self.lock:
            self.stats.pages_queued = count

    def problems(self, problems: list[str]) -> None:
        with self.lock:
            self.stats.problems.extend(problems)

    def scripts_changed(self) -> None:
        with self.lock:
            self.stats.pages_scripts_changed += 1

    def cut_in_flight(self, count: int) -> None:
        with self.lock:
            self.stats.deadline_cut_in_flight = count

    def browser(self, renderer: BrowserRenderer) -> None:
        """What the browser did: its launches, and the requests its proxy refused."""
        with self.lock:
            self.stats.browser_launches = renderer.launches
            if renderer.refused:
                self.stats.skipped["browser_request_refused"] = sum(renderer.refused.values())
