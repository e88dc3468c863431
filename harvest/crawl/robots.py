"""robots.txt: whether we may fetch a URL, how long to wait between requests, and where the sitemaps are.

Parsing and matching are Protego's (the parser Scrapy relies on): RFC 9309 longest-match with Allow winning
a tie, the `*` and `$` wildcards, percent-encoding compared in one normal form, groups of the same agent
merged, and the misspellings real files carry ("Dissallow", "User agent"). What stays here is what the RFC
leaves to the crawler and Protego does not do: fetching through the SSRF-guarded fetcher under a size cap,
decoding (a UTF-8 byte-order mark must not hide the first line), the status rules (a missing robots.txt, 4xx,
allows everything; a server error or an unreachable robots.txt means "assume complete disallow": the site
may be overloaded and we would rather fetch nothing than ignore rules we could not read) and a cap on
Crawl-delay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from protego import Protego

from harvest.crawl.http_fetch import FetchFailed, HttpFetcher
from harvest.errors import DisallowedURLError

log = logging.getLogger(__name__)

# RFC 9309 asks parsers to read at least 500 KiB; anything beyond is ignored.
ROBOTS_MAX_BYTES = 512 * 1024
# A site may ask for any delay; we honour it up to this cap so one rule cannot stall a run for hours.
CRAWL_DELAY_CAP_S = 30.0
BOM = "\ufeff"


@dataclass
class RobotsPolicy:
    """The robots.txt rules of one origin that apply to our user agent."""

    origin: str
    # None: no robots.txt (everything allowed) or, with disallow_all, one we could not read.
    parser: Protego | None = None
    # The product token the groups are matched against (see product_token).
    agent: str = "*"
    disallow_all: bool = False
    reason: str = ""
    crawl_delay: float | None = None
    sitemaps: list[str] = field(default_factory=list)

    def can_fetch(self, url: str) -> bool:
        """RFC 9309 matching (Protego): the longest matching pattern wins, Allow wins a tie, no match allows."""
        if self.disallow_all:
            return False
        if (urlsplit(url).path or "/") == "/robots.txt":
            return True
        return self.parser is None or self.parser.can_fetch(url, self.agent)


def product_token(user_agent: str) -> str:
    """`harvest/0.1 (+https://...)` -> `harvest`: the name robots.txt groups are matched against.

    Only the token goes to Protego, never the whole header: Protego finds a group's name anywhere in what it
    is given, so a `User-agent: github` group would otherwise match the URL in our comment.
    """
    return user_agent.strip().split("/", 1)[0].split(" ", 1)[0].lower()


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "/robots.txt", "", ""))


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "", "", ""))


def decode_robots(body: bytes) -> str:
    """robots.txt is UTF-8 (RFC 9309); `utf-8-sig` drops a byte-order mark, which would otherwise glue itself
    to the first field name ("\\ufeffUser-agent") and lose the whole first group. Bad bytes become U+FFFD."""
    return body.decode("utf-8-sig", errors="replace")


def parse_robots(origin: str, text: str, user_agent: str) -> RobotsPolicy:
    """Parse robots.txt text into the policy for our agent: its group(s), else the `*` group(s)."""
    # A caller that decoded with plain "utf-8" still hands us the BOM as a character.
    parser = Protego.parse(text.removeprefix(BOM))
    token = product_token(user_agent)
    delay = parser.crawl_delay(token)
    if delay is not None and delay > CRAWL_DELAY_CAP_S:
        log.warning("%s asks for Crawl-delay %gs; honouring %gs instead (cap)", origin, delay, CRAWL_DELAY_CAP_S)
        delay = CRAWL_DELAY_CAP_S
    return RobotsPolicy(origin=origin, parser=parser, agent=token, crawl_delay=delay, sitemaps=list(parser.sitemaps))


async def fetch_robots(fetcher: HttpFetcher, url: str, user_agent: str) -> RobotsPolicy:
    """Fetch and parse the robots.txt of `url`'s origin; never raises (failures become a policy)."""
    origin = origin_of(url)
    target = robots_url(url)
    try:
        result = await fetcher.fetch(target, pages_only=False, max_bytes=ROBOTS_MAX_BYTES)
    except DisallowedURLError as exc:
        return RobotsPolicy(origin=origin, disallow_all=True, reason=f"robots.txt refused: {exc}")
    except FetchFailed as exc:
        log.warning("robots.txt of %s unreachable (%s): assuming complete disallow (RFC 9309)", origin, exc.reason)
        return RobotsPolicy(
            origin=origin, disallow_all=True, reason=f"robots.txt unreachable ({exc.reason}): assuming disallow"
        )
    if result.status >= 500:
        log.warning("robots.txt of %s answered HTTP %d: assuming complete disallow (RFC 9309)", origin, result.status)
        return RobotsPolicy(
            origin=origin,
            disallow_all=True,
            reason=f"robots.txt answered HTTP {result.status}: assuming disallow (RFC 9309)",
        )
    if result.status >= 400:
        log.debug("no robots.txt at %s (HTTP %d): everything allowed", target, result.status)
        return RobotsPolicy(origin=origin)
    return parse_robots(origin, decode_robots(result.body), user_agent)
