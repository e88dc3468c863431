"""Polite re-crawls: what a page gave last time, and the HTTP rules for asking whether it changed.

A site scraped nightly should not send every page again when nothing changed. HTTP answers it: the
validators a response carried (ETag, Last-Modified) go back as If-None-Match / If-Modified-Since, and a 304
means "as before"; a sitemap's `<lastmod>` not newer than the last fetch means the page need not be asked
for at all. Either way the crawl reuses what the page gave before (its activities and its outgoing links,
so the crawl keeps its reach) without parsing or rendering it again.

A page drawn by scripts is more than its document: the scripts, and the data they fetch, can change while the
HTML shell stays byte for byte the same (a single-page app's shell never changes). So a rendered page also
keeps the validators of what it loaded to draw itself (`Subresource`), and it is reused only when the document
and every one of those answer "as before"; a page whose scripts loaded something that cannot be asked about
(no validators, not a GET, a failed request) is rendered again on every crawl.

The crawler only reads and writes through `PageMemory`; where the memory lives (the metadata database's
`page_cache` table, `harvest.crawl.page_cache`) is not its concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from harvest.net.conditional import Validators


@dataclass(frozen=True)
class Subresource:
    """A script, or data a script fetched, that a rendered page loaded: asked about again before the page is
    reused (its document's 304 does not cover it)."""

    url: str
    validators: Validators


MAX_SUBRESOURCES = 32
"""More than this and a page is rendered again rather than revalidated piece by piece."""


@dataclass
class Remembered:
    """One URL as the last crawl that fetched it left it: enough to revalidate it and to reuse what it gave."""

    url: str
    """The URL as requested (the frontier's normalized spelling): the key."""
    page_url: str
    """The page's identity then (canonical, else final URL): keeps duplicate detection working on reuse."""
    final_url: str
    validators: Validators | None
    fetched_at: datetime
    """When the content was last confirmed (a 200 or a 304): the server's Date when it sent one."""
    links: list[str] = field(default_factory=list)
    """Outgoing links, followed again when the page is reused (else the crawl would lose its reach)."""
    pagination: list[str] = field(default_factory=list)
    rendered: bool = False
    activities: list[dict[str, Any]] = field(default_factory=list)
    """What extraction found on the page (raw activities as JSON), reused without extracting again."""
    duplicate: bool = False
    """The URL was a duplicate of another page (`page_url`) then: its activities are that page's. Reused as a
    duplicate once that page is emitted; before, as that page (`original_url`'s entry), else fetched in full."""
    original_url: str | None = None
    """For a duplicate: the requested URL whose entry holds the page's activities."""
    subresources: list[Subresource] | None = None
    """For a rendered page: what its scripts loaded, each with its validators ([] when they loaded nothing);
    None when that is unknown or cannot be asked about, and the page is then rendered again."""

    @property
    def revalidatable(self) -> bool:
        """True when a 304 (or an older sitemap `<lastmod>`) of the document stands for the page, once its
        subresources, if any, are unchanged too: always for a plain page; for a rendered one, only when what
        its scripts loaded is known."""
        return not self.rendered or self.subresources is not None


class PageMemory(Protocol):
    """Where pages are remembered between crawls. Called from worker threads: implementations are thread-safe."""

    def recall(self, url: str) -> Remembered | None:
        """What the last crawl left for `url` (the requested URL), or None."""
        ...

    def remember(self, entry: Remembered) -> None:
        """Keep `entry` for the next crawl (may be buffered until `flush`)."""
        ...

    def confirm(self, url: str) -> None:
        """`url` was asked for again and is unchanged (a 304, or a sitemap `<lastmod>` older than its fetch):
        keep its entry alive. The sweep deletes entries no crawl wrote or confirmed for a while, and a page
        skipped by its `<lastmod>`, or dropped as a duplicate, is not remembered anew (may be buffered until
        `flush`)."""
        ...

    def flush(self) -> None:
        """Write what `remember` and `confirm` buffered."""
        ...


def response_time(headers: Any, received_at: datetime | None = None) -> datetime:
    """When the server produced a response: its Date header (the server's clock, which its Last-Modified and
    sitemap `<lastmod>` use too), else our own clock."""
    date = headers.get("date") if headers is not None else None
    if date:
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
    return received_at or datetime.now(UTC)


def parse_lastmod(value: str | None) -> datetime | None:
    """A sitemap `<lastmod>` (W3C datetime: a date, or a date and time) as the latest moment it can mean.

    A date alone covers the whole day, so it stands for the end of that day: a page changed that afternoon
    must not look older than a fetch that morning. A time without an offset is taken as UTC. None when
    the value is missing or malformed (the page is then revalidated as usual).
    """
    text = (value or "").strip()
    if not text:
        return None
    try:
        if len(text) == 10:  # YYYY-MM-DD
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return day + timedelta(days=1)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def unchanged_since(lastmod: datetime | None, fetched_at: datetime) -> bool:
    """True when the sitemap says the page was last modified before we last fetched it.

    Strictly before: `<lastmod>` and Date have whole seconds, so a page changed in the same second as the
    fetch (after it) would otherwise look unchanged.
    """
    if lastmod is None:
        return False
    fetched = fetched_at if fetched_at.tzinfo else fetched_at.replace(tzinfo=UTC)
    return lastmod < fetched
