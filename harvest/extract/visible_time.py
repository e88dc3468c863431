"""The wall time a page shows beside an item, for the items whose markup does not say it right.

Calendar plugins publish a date-only `startDate` while their listing shows "6:30 pm – 8:30 pm" next to the item,
or an offset that is not the venue's (a 9:00 meeting marked `+00:00`, a November date with the summer offset)
while the listing shows "9:00 am" (issue 26). Standardization decides what to do with a shown time; this module
only finds it, conservatively: in the smallest element around a link to the item's own URL, or around the item's
name, or around the markup itself, whose text is short enough to be about one item. When the copies of an item
on the page show different times, the one whose day of month is written next to it is taken, else none.
"""

from __future__ import annotations

import re
from collections import defaultdict
from urllib.parse import urljoin

import lxml.html

from harvest.extract.text import collapse_whitespace

MAX_CONTAINER_CHARS = 400  # more text than this around a link is a list, not one item
MAX_LEVELS = 6
_TIME_RE = re.compile(
    r"(?<![\d:.])(?P<hour>[01]?\d|2[0-3])(?:(?P<sep>[:.h])(?P<minute>[0-5]\d))?\s*"
    r"(?P<ampm>a\.?\s?m\.?|p\.?\s?m\.?)?(?:\s*(?P<uhr>Uhr|h\b))?(?![\d])",
    re.IGNORECASE,
)
_RANGE_RE = re.compile(r"^\s*(?:-|–|—|to|bis|à|a|tot|until)\s*", re.IGNORECASE)


def _times(text: str) -> list[tuple[str, int]]:
    """Times written in `text` as (HH:MM, end offset), only unambiguous shapes: 18:30, 6:30 pm, 6 pm, 18.30 Uhr,
    18h30, 11 Uhr; a bare number is not a time."""
    found = []
    for match in _TIME_RE.finditer(text):
        hour = int(match.group("hour"))
        minute = int(match.group("minute") or 0)
        ampm = (match.group("ampm") or "").lower().replace(".", "").replace(" ", "")
        if not (match.group("minute") or ampm or match.group("uhr")):
            continue
        if match.group("sep") == "." and not (ampm or match.group("uhr")):
            continue  # 13.05 is as likely a date as a time
        if ampm:
            if hour > 12 or hour == 0:
                continue
            hour = hour % 12 + (12 if ampm == "pm" else 0)
        found.append((f"{hour:02d}:{minute:02d}", match.end()))
    return found


def start_and_end(text: str) -> tuple[str | None, str | None]:
    """The first time in `text` and, when a range follows it ("6:30 pm – 8:30 pm"), its end."""
    times = _times(text)
    if not times:
        return None, None
    start, after = times[0]
    if len(times) > 1 and _RANGE_RE.match(text[after:]):
        return start, times[1][0]
    return start, None


class VisibleTimes:
    """An index of one page's links and short texts, built once, asked once per item."""

    def __init__(
        self,
        tree: lxml.html.HtmlElement,
        base_url: str,
        item_urls: set[str] | None = None,
        item_names: set[str] | None = None,
    ) -> None:
        """Index the page's links, and the short texts equal to one of `item_names` (items without a URL are
        looked up by name), in one pass each."""
        self.base_url = base_url
        self.item_urls = {_url_key(url) for url in item_urls or ()}
        self.by_href: dict[str, list[lxml.html.HtmlElement]] = defaultdict(list)
        self.by_text: dict[str, list[lxml.html.HtmlElement]] = defaultdict(list)
        for element in tree.iter("a"):
            href = element.get("href")
            if href:
                self.by_href[_url_key(urljoin(base_url, href.strip()))].append(element)
        wanted = {_text_key(name) for name in item_names or () if name}
        if wanted:
            for element in tree.iter(*_TITLE_TAGS):
                text = _short_text(element, 300)
                key = _text_key(text) if text else ""
                if key in wanted:
                    self.by_text[key].append(element)

    def around(
        self, *, url: str | None, name: str | None, day: int | None, element: lxml.html.HtmlElement | None = None
    ) -> tuple[str | None, str | None]:
        """(start, end) as HH:MM shown beside the item with this URL or name (or around `element`), or (None, None)."""
        anchors: list[lxml.html.HtmlElement] = []
        if element is not None:
            anchors.append(element)
        if url:
            anchors += self.by_href.get(_url_key(url), [])
        if not anchors and name and not url:  # an item with a URL nobody links to is not looked up by name
            anchors += self.by_text.get(_text_key(name), [])
        candidates: list[tuple[tuple[str | None, str | None], str]] = []
        for anchor in anchors[:50]:
            container = self._container(anchor)
            if container is not None:
                candidates.append(container)
        distinct = {times for times, _ in candidates}
        if len(distinct) == 1:
            return distinct.pop()
        if day is not None and len(distinct) > 1:
            day_re = re.compile(rf"(?<!\d)0?{day}(?!\d)")
            dated = {times for times, text in candidates if day_re.search(text)}
            if len(dated) == 1:
                return dated.pop()
        return None, None


    def _container(self, anchor: lxml.html.HtmlElement) -> tuple[tuple[str | None, str | None], str] | None:
        """The first time in the smallest element around `anchor` that is about one item: short, and linking to
        no other item of the page."""
        element: lxml.html.HtmlElement | None = anchor
        for _ in range(MAX_LEVELS):
            if element is None:
                return None
            text = _short_text(element, MAX_CONTAINER_CHARS)
            if text is None or self._items_inside(element) > 1:
                return None
            times = start_and_end(text)
            if times[0]:
                return times, text
            element = element.getparent()
        return None

    def _items_inside(self, element: lxml.html.HtmlElement) -> int:
        if not self.item_urls:
            return 0
        hrefs = {_url_key(urljoin(self.base_url, (a.get("href") or "").strip())) for a in element.iter("a")}
        return len(hrefs & self.item_urls)


_TITLE_TAGS = frozenset({"a", "h1", "h2", "h3", "h4", "h5", "h6", "span", "strong", "b", "em", "dt", "dd", "td", "li"})


def _short_text(element: lxml.html.HtmlElement, limit: int) -> str | None:
    """The element's text, whitespace collapsed; None as soon as it passes `limit` characters (reading a whole
    page's text to learn it is too long would make every lookup cost the page)."""
    pieces: list[str] = []
    size = 0
    for piece in element.itertext():
        size += len(piece)
        if size > limit * 4:
            return None
        pieces.append(piece)
    text = collapse_whitespace("".join(pieces))
    return text if len(text) <= limit else None


def _url_key(url: str) -> str:
    return url.split("#", 1)[0].rstrip("/").removeprefix("https:").removeprefix("http:")


def _text_key(text: str) -> str:
    return collapse_whitespace(text).casefold()
