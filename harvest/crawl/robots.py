"""robots.txt: whether we may fetch a URL, how long to wait between requests, and where the sitemaps are.

A small RFC 9309 parser rather than urllib.robotparser, which uses first-match instead of
longest-match and ignores the `*`/`$` wildcards most real robots.txt files use. Follows the RFC on
the cases that matter: a missing robots.txt (4xx) allows everything; a server
error or an unreachable robots.txt means "assume complete disallow" — the site may be overloaded and
we would rather fetch nothing than ignore rules we could not read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from harvest.crawl.http_fetch import FetchFailed, HttpFetcher
from harvest.errors import DisallowedURLError

log = logging.getLogger(__name__)

# RFC 9309 asks parsers to read at least 500 KiB; anything beyond is ignored.
ROBOTS_MAX_BYTES = 512 * 1024
# A site may ask for any delay; we honour it up to this cap so one rule cannot stall a run for hours.
CRAWL_DELAY_CAP_S = 30.0


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern[str]


@dataclass
class RobotsPolicy:
    """The robots.txt rules of one origin that apply to our user agent."""

    origin: str
    rules: list[Rule] = field(default_factory=list)
    disallow_all: bool = False
    reason: str = ""
    crawl_delay: float | None = None
    sitemaps: list[str] = field(default_factory=list)

    def can_fetch(self, url: str) -> bool:
        """RFC 9309 matching: the longest matching pattern wins, Allow wins a tie, no match means allowed."""
        if self.disallow_all:
            return False
        parts = urlsplit(url)
        path = parts.path or "/"
        if path == "/robots.txt":
            return True
        target = _canonical_path(path + (f"?{parts.query}" if parts.query else ""))
        best: Rule | None = None
        for rule in self.rules:
            if rule.regex.match(target) and (
                best is None
                or len(rule.pattern) > len(best.pattern)
                or (len(rule.pattern) == len(best.pattern) and rule.allow)
            ):
                best = rule
        return best is None or best.allow


def _canonical_path(path: str) -> str:
    # Compare "/caf%C3%A9" and "/café" (and %7E vs ~) as the same path.
    return quote(unquote(path), safe="/?=&*$;:@!,+~%")


def _compile(pattern: str) -> re.Pattern[str]:
    anchored = pattern.endswith("$")
    body = _canonical_path(pattern[:-1] if anchored else pattern)
    regex = "".join(".*" if ch == "*" else re.escape(ch) for ch in body)
    return re.compile(regex + ("$" if anchored else ""))


def product_token(user_agent: str) -> str:
    """`harvest/0.1 (+https://...)` -> `harvest`: the name robots.txt groups are matched against."""
    return user_agent.strip().split("/", 1)[0].split(" ", 1)[0].lower()


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "/robots.txt", "", ""))


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), "", "", ""))


@dataclass
class _Group:
    agents: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    crawl_delay: float | None = None


def parse_robots(origin: str, text: str, user_agent: str) -> RobotsPolicy:
    """Parse robots.txt text into the policy for our agent: its group(s), else the `*` group(s)."""
    groups: list[_Group] = []
    sitemaps: list[str] = []
    current: _Group | None = None
    in_agent_lines = False
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "sitemap":
            if value:
                sitemaps.append(value)
            continue
        if key == "user-agent":
            if current is None or not in_agent_lines:
                current = _Group()
                groups.append(current)
            current.agents.append(value.lower())
            in_agent_lines = True
            continue
        if current is None:
            continue  # rules before any User-agent line belong to no group
        in_agent_lines = False
        if key in ("allow", "disallow"):
            if value:  # an empty Disallow means "nothing is disallowed"
                current.rules.append(Rule(allow=key == "allow", pattern=value, regex=_compile(value)))
        elif key == "crawl-delay":
            try:
                current.crawl_delay = float(value)
            except ValueError:
                log.debug("%s: ignoring unparsable Crawl-delay %r", origin, value)
    token = product_token(user_agent)
    chosen = [g for g in groups if token in g.agents] or [g for g in groups if "*" in g.agents]
    rules = [rule for group in chosen for rule in group.rules]
    delays = [group.crawl_delay for group in chosen if group.crawl_delay is not None]
    delay = max(delays) if delays else None
    if delay is not None and delay > CRAWL_DELAY_CAP_S:
        log.warning("%s asks for Crawl-delay %gs; honouring %gs instead (cap)", origin, delay, CRAWL_DELAY_CAP_S)
        delay = CRAWL_DELAY_CAP_S
    return RobotsPolicy(origin=origin, rules=rules, crawl_delay=delay, sitemaps=sitemaps)


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
    text = result.body.decode("utf-8", errors="replace")
    return parse_robots(origin, text, user_agent)
