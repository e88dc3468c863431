"""What a fetched page says about other URLs: its links, its canonical URL, its next pages, and whether we may
follow them.

Next-page links are told apart because pagination must not consume crawl depth: a listing split over 12
pages is one listing, and its page 12 is as close to the start as its page 1 (see `Frontier.add`).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

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
    pagination: list[str] = field(default_factory=list)
    """The subset of `links` (plus any `<link rel=next>`) that are further pages of this same listing."""


# Anchor text that says "the next page of this list" on real sites, as the whole text of the link (arrows are
# language-neutral): English, then French, German, Spanish, Italian, Dutch and Portuguese, as WordPress and the
# common calendar plugins translate their pagination. "Weiter lesen", "Lire la suite" are articles, not pages.
_NEXT_WORDS = (
    r"(?:next|prev|previous|older|newer)(?: page| posts| events| entries)?",
    r"(?:page )?(?:suivante|précédente)|suivant|précédent|articles plus (?:anciens|récents)",
    r"weiter|zurück|(?:nächste|vorherige)(?: seite)?|(?:ältere|neuere) (?:beiträge|einträge|veranstaltungen)",
    r"(?:página )?(?:siguiente|anterior)|entradas (?:anteriores|siguientes|más recientes|más antiguas)",
    r"(?:pagina )?(?:successiva|precedente)|successivo|avanti|indietro|articoli (?:più|meno) recenti",
    r"(?:volgende|vorige)(?: pagina)?|(?:oudere|nieuwere) (?:berichten|evenementen)",
    r"próxima página|página (?:seguinte|anterior)|próxim[oa]|seguinte|(?:posts|artigos) mais (?:antigos|recentes)",
)
_LOAD_MORE_WORDS = r"load more|charger plus|mehr laden|cargar más|carica altri|meer laden|carregar mais"
_NEXT_TEXT = re.compile(
    r"^(?:[‹«←<]+\s*)?(?:" + "|".join(_NEXT_WORDS) + r")(?:\s*[›»→>]+)?$"
    rf"|^(?:{_LOAD_MORE_WORDS})$|^[›»→>‹«←<]+$",
    re.IGNORECASE,
)
# `/page/3`, `/page/3/`, `/p/3` as the last path segments of a listing.
_PAGE_SEGMENT = re.compile(r"/(?:page|p)/\d{1,5}/?$", re.IGNORECASE)
_PAGE_PARAMS = frozenset({"page", "p", "pg", "paged", "pagenum", "page_num", "pageno"})


def listing_key(url: str) -> str | None:
    """`url` without its page number (`/events/page/3/` -> `/events/`, `/events?page=3` -> `/events`), or None
    when it has no page number: two URLs of one paginated listing share this key."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    path, query = parts.path, parse_qsl(parts.query, keep_blank_values=True)
    numbered = False
    if _PAGE_SEGMENT.search(path):
        path, numbered = _PAGE_SEGMENT.sub("/", path), True
    kept = [(key, value) for key, value in query if not (key.lower() in _PAGE_PARAMS and value.isdigit())]
    numbered |= len(kept) != len(query)
    if not numbered:
        return None
    return urlunsplit((parts.scheme, parts.netloc.lower(), path.rstrip("/") or "/", urlencode(kept), ""))


def _base_key(url: str) -> str | None:
    """The key of a listing's first page, which often carries no number at all (`/events/`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/") or "/", parts.query, ""))


def is_pagination(link: str, page_url: str, *, rel: list[str] | None = None, text: str = "") -> bool:
    """Is `link` another page of the listing at `page_url`?

    Yes for `rel=next`/`rel=prev`, for anchor text like "Next", "Older posts", "›" or "»" (or "Page suivante",
    "Weiter", "Siguiente", "Avanti", "Volgende", "Próximo": see `_NEXT_WORDS`), and for a URL that differs from
    the page's only by its page number (`?page=N`, `/page/N`), the page's own URL counting as page 1 when it has
    none.
    """
    if rel and {"next", "prev", "previous"} & set(rel):
        return True
    if text and _NEXT_TEXT.match(" ".join(unicodedata.normalize("NFC", text).split())):
        return True
    key = listing_key(link)
    if key is None:
        return False
    return key in (listing_key(page_url), _base_key(page_url))


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
    for element in tree.xpath("//a[@href] | //area[@href] | //link[@href and @rel]"):
        rel = (element.get("rel") or "").lower().split()
        if "nofollow" in rel:
            result.nofollow_links += 1
            continue
        calendar_feed = "alternate" in rel and (element.get("type") or "").strip().lower() == "text/calendar"
        if element.tag == "link" and not ({"next", "prev", "previous"} & set(rel) or calendar_feed):
            continue  # stylesheets, icons, other alternates: not pages of this listing
        href = (element.get("href") or "").strip()
        if href[:7].lower() == "webcal:":  # a calendar subscription is its feed over HTTP(S) (issue 26)
            href = "https:" + href[7:]
        if href and not href.startswith("#"):
            # A malformed href is kept as written: the frontier refuses it and counts it (non_http).
            link = _join(base, href) or href
            result.links.append(link)
            text = element.text_content() if element.tag == "a" else ""
            if is_pagination(link, page_url, rel=rel, text=text[:40]):
                result.pagination.append(link)
    return result
