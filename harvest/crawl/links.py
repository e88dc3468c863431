"""What a fetched page says about other URLs: its links, its canonical URL, and whether we may follow them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urljoin

import lxml.html
from lxml import etree

log = logging.getLogger(__name__)


@dataclass
class PageLinks:
    """Links (absolute, in document order, not yet filtered), the canonical URL and what was not followed."""

    links: list[str] = field(default_factory=list)
    canonical: str | None = None
    nofollow: bool = False
    nofollow_links: int = 0


def parse_html(html: str) -> lxml.html.HtmlElement | None:
    """Parse HTML leniently; None for an empty or unparsable document (it then simply has no links)."""
    if not html or not html.strip():
        return None
    try:
        return lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError) as exc:
        log.debug("unparsable HTML (%s)", exc)
        return None


def _join(base: str, href: str) -> str | None:
    """`href` resolved against `base`; None when either is malformed (urljoin raises on "http://[::1")."""
    try:
        return urljoin(base, href)
    except ValueError:
        return None


def extract_links(html: str, page_url: str) -> PageLinks:
    """Collect <a>/<area> hrefs resolved against <base href> (or the page URL), plus rel=canonical.

    `rel=nofollow` links are skipped and `<meta name=robots content=nofollow>` drops all links:
    the site asked crawlers not to follow them.
    """
    result = PageLinks()
    tree = parse_html(html)
    if tree is None:
        return result
    base = page_url
    for base_href in tree.xpath("//base[@href]/@href")[:1]:
        base = _join(page_url, str(base_href).strip()) or page_url
    for content in tree.xpath(
        "//meta[translate(@name,'ROBTS','robts')='robots' or translate(@name,'HARVEST','harvest')='harvest']/@content"
    ):
        directives = {part.strip().lower() for part in str(content).split(",")}
        result.nofollow |= bool(directives & {"nofollow", "none"})
    canonical_xpath = (
        "//link[@href and contains(concat(' ', translate(@rel,'CANONICAL','canonical'), ' '), ' canonical ')]"
    )
    for href in tree.xpath(f"{canonical_xpath}/@href")[:1]:
        href = str(href).strip()
        if href:
            result.canonical = _join(base, href)
    if result.nofollow:
        result.nofollow_links = len(tree.xpath("//a[@href] | //area[@href]"))
        return result
    for element in tree.xpath("//a[@href] | //area[@href]"):
        rel = (element.get("rel") or "").lower().split()
        if "nofollow" in rel:
            result.nofollow_links += 1
            continue
        href = (element.get("href") or "").strip()
        if href and not href.startswith("#"):
            # A malformed href is kept as written: the frontier refuses it and counts it (non_http).
            result.links.append(_join(base, href) or href)
    return result
