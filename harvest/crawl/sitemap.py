"""Sitemaps: the URLs a site itself lists, used to seed the frontier (event pages are often not linked well).

The formats sitemaps.org allows are read: XML `<urlset>` and `<sitemapindex>`, plain text (one URL a line),
and RSS 2.0 / RSS 1.0 / Atom feeds (their items' links). Bounded on every axis (number of sitemap files, URLs,
bytes, decompressed size) and parsed without entity expansion or network access, because a sitemap is
untrusted input from the site.

Parsed here with lxml rather than a sitemap library: ultimate-sitemap-parser (the maintained one) fetches
the files itself with `requests`, around our SSRF-guarded fetcher and its per-hop checks, and a feed library
adds nothing for reading one link per item. lxml is already the crawler's parser, with entities and the
network turned off.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections import deque
from urllib.parse import urljoin, urlsplit

from lxml import etree

from harvest.crawl.frontier import normalize_url
from harvest.crawl.http_fetch import FetchFailed, HttpFetcher
from harvest.crawl.politeness import HostGates
from harvest.errors import DisallowedURLError

log = logging.getLogger(__name__)

SITEMAP_MAX_BYTES = 10 * 1024 * 1024  # a sitemap may hold 50,000 URLs; that fits comfortably
MAX_SITEMAP_FILES = 10
MAX_SITEMAP_URLS = 50_000


def parse_sitemap(
    body: bytes, base_url: str, lastmods: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Return (page URLs, child sitemap URLs) from a sitemap in any of the formats sitemaps.org allows.

    XML (a `<urlset>`, a `<sitemapindex>`, an RSS or Atom feed) is told from plain text by its first
    character. Namespaces are ignored on purpose: many generators get the sitemap namespace wrong.
    With `lastmods`, each `<url>` entry's `<lastmod>` is put there under its page URL (normalized).
    """
    if body[:2] == b"\x1f\x8b":
        body = _gunzip(body)
    if not body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return _parse_text(body, base_url), []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=True)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as exc:
        log.warning("sitemap %s is not XML (%s); ignored", base_url, exc)
        return [], []
    if root is None:
        return [], []
    kind = etree.QName(root).localname.lower()
    if kind in ("rss", "rdf"):
        links = [_text(link) for item in _children(root, "item") for link in _children(item, "link")]
        return _absolute(links, base_url), []
    if kind == "feed":
        return _absolute([_atom_link(entry) for entry in _children(root, "entry")], base_url), []
    urls = _absolute([_text(element) for element in _children(root, "loc")], base_url)
    if kind == "sitemapindex":
        return [], urls
    if lastmods is not None:
        _read_lastmods(root, base_url, lastmods)
    return urls, []


def _read_lastmods(root: etree._Element, base_url: str, lastmods: dict[str, str]) -> None:
    for entry in _children(root, "url"):
        locations = _children(entry, "loc")
        stamps = _children(entry, "lastmod")
        if locations and stamps and _text(stamps[0]):
            url = normalize_url(_text(locations[0]), base_url)
            if url:
                lastmods[url] = _text(stamps[0])


def _children(element: etree._Element, name: str) -> list[etree._Element]:
    """Descendants named `name` in any namespace (or none)."""
    return [
        child
        for child in element.iter()
        if child is not element and isinstance(child.tag, str) and etree.QName(child).localname.lower() == name
    ]


def _text(element: etree._Element) -> str:
    return (element.text or "").strip()


def _atom_link(entry: etree._Element) -> str:
    """An Atom entry's page: its `<link rel="alternate">` (rel defaults to alternate), never self/edit/enclosure."""
    for link in _children(entry, "link"):
        if (link.get("rel") or "alternate").strip().lower() == "alternate" and link.get("href"):
            return str(link.get("href")).strip()
    return ""


def _absolute(locations: list[str], base_url: str) -> list[str]:
    return [urljoin(base_url, location) for location in locations if location]


def _parse_text(body: bytes, base_url: str) -> list[str]:
    """A text sitemap: one absolute URL a line, UTF-8 (a BOM allowed). Other lines are skipped and counted."""
    lines = [line.strip() for line in body.decode("utf-8-sig", errors="replace").splitlines()]
    urls = [line for line in lines if _is_absolute_http(line)]
    skipped = sum(1 for line in lines if line) - len(urls)
    if skipped:
        log.warning("sitemap %s: %d line(s) that are not absolute http(s) URLs skipped", base_url, skipped)
    return urls


def _is_absolute_http(line: str) -> bool:
    if " " in line:
        return False
    try:
        parts = urlsplit(line)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _gunzip(body: bytes) -> bytes:
    """Decompress a .xml.gz sitemap, refusing to inflate past the byte cap (gzip bomb)."""
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
        data = stream.read(SITEMAP_MAX_BYTES + 1)
    if len(data) > SITEMAP_MAX_BYTES:
        log.warning("gzipped sitemap inflates past %d bytes: only the first part is read", SITEMAP_MAX_BYTES)
        data = data[:SITEMAP_MAX_BYTES]
    return data


async def collect_sitemap_urls(
    fetcher: HttpFetcher,
    sitemap_urls: list[str],
    *,
    max_files: int = MAX_SITEMAP_FILES,
    max_urls: int = MAX_SITEMAP_URLS,
    lastmods: dict[str, str] | None = None,
    gates: HostGates | None = None,
) -> tuple[list[str], list[str]]:
    """Fetch sitemaps (following indexes breadth-first) and return (page URLs, problems).

    A missing sitemap is normal and not a problem; a broken one is reported so it is not silently lost.
    The caller filters the URLs through the frontier (same site, globs, robots) like any link.
    With `lastmods`, the pages' `<lastmod>` values are collected there (normalized URL → value).
    With `gates`, each fetch passes its host's gate like a page's (a slot, and robots.txt's Crawl-delay spacing):
    without it a site asking for Crawl-delay 0.2 saw its sitemap asked for 0.13 s after the start page.
    """
    queue = deque(url for url in sitemap_urls if normalize_url(url))
    seen: set[str] = set()
    pages: list[str] = []
    problems: list[str] = []
    while queue and len(seen) < max_files and len(pages) < max_urls:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        try:
            if gates is None:
                result = await fetcher.fetch(url, pages_only=False, max_bytes=SITEMAP_MAX_BYTES)
            else:
                async with gates.get(urlsplit(url).netloc).slot():
                    result = await fetcher.fetch(url, pages_only=False, max_bytes=SITEMAP_MAX_BYTES)
        except (FetchFailed, DisallowedURLError) as exc:
            problems.append(f"sitemap {url}: {exc}")
            continue
        if result.status == 404 or result.status == 410:
            log.debug("no sitemap at %s", url)
            continue
        if result.status >= 400:
            problems.append(f"sitemap {url}: HTTP {result.status}")
            continue
        found, children = parse_sitemap(result.body, result.url, lastmods)
        pages.extend(found[: max_urls - len(pages)])
        queue.extend(child for child in children if child not in seen)
    if queue:
        log.warning("sitemap limits reached (%d files, %d URLs); %d sitemaps not read", max_files, max_urls, len(queue))
    return pages, problems
