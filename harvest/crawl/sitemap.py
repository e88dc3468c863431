"""Sitemaps: the URLs a site itself lists, used to seed the frontier (event pages are often not linked well).

Bounded on every axis (number of sitemap files, URLs, bytes, decompressed size) and parsed without
entity expansion or network access, because a sitemap is untrusted XML from the site.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections import deque
from urllib.parse import urljoin

from lxml import etree

from harvest.crawl.frontier import normalize_url
from harvest.crawl.http_fetch import FetchFailed, HttpFetcher
from harvest.errors import DisallowedURLError

log = logging.getLogger(__name__)

SITEMAP_MAX_BYTES = 10 * 1024 * 1024  # a sitemap may hold 50,000 URLs; that fits comfortably
MAX_SITEMAP_FILES = 10
MAX_SITEMAP_URLS = 50_000


def parse_sitemap(body: bytes, base_url: str) -> tuple[list[str], list[str]]:
    """Return (page URLs, child sitemap URLs) from a <urlset> or <sitemapindex> document.

    Namespaces are ignored on purpose: many generators get the sitemap namespace wrong.
    """
    if body[:2] == b"\x1f\x8b":
        body = _gunzip(body)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=True)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError as exc:
        log.warning("sitemap %s is not XML (%s); ignored", base_url, exc)
        return [], []
    if root is None:
        return [], []
    kind = etree.QName(root).localname.lower()
    locs = [
        (element.text or "").strip()
        for element in root.iter()
        if isinstance(element.tag, str) and etree.QName(element).localname.lower() == "loc"
    ]
    urls = [urljoin(base_url, loc) for loc in locs if loc]
    if kind == "sitemapindex":
        return [], urls
    return urls, []


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
) -> tuple[list[str], list[str]]:
    """Fetch sitemaps (following indexes breadth-first) and return (page URLs, problems).

    A missing sitemap is normal and not a problem; a broken one is reported so it is not silently lost.
    The caller filters the URLs through the frontier (same site, globs, robots) like any link.
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
        found, children = parse_sitemap(result.body, result.url)
        pages.extend(found[: max_urls - len(pages)])
        queue.extend(child for child in children if child not in seen)
    if queue:
        log.warning("sitemap limits reached (%d files, %d URLs); %d sitemaps not read", max_files, max_urls, len(queue))
    return pages, problems
