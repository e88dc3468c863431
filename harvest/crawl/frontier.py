"""The crawl frontier: which URLs to visit, in breadth-first order, and which to refuse before fetching.

Everything here is pure (no I/O) so the rules that decide what a crawl may touch are easy to test
and cannot be bypassed by a fetcher: a URL that does not pass `Frontier.add` is never requested.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import parse_qsl, quote, unquote, urljoin, urlsplit, urlunsplit

from w3lib.url import safe_url_string

from harvest.models import RunConfig

log = logging.getLogger(__name__)

HTTP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Session ids make one page look like endless distinct URLs; they never change the content.
SESSION_PARAMS = frozenset(
    {"jsessionid", "phpsessid", "sid", "sessionid", "session_id", "aspsessionid", "cfid", "cftoken"}
)
MAX_URL_LENGTH = 2048
# A path that repeats one segment this many times is a relative-link loop (/a/b/a/b/a/b/...).
MAX_REPEATED_SEGMENT = 3
DEFAULT_TRAP_LIMIT = 100
# Unfollowed links kept as examples per reason: enough for a person to see what a limit cut off.
UNFOLLOWED_EXAMPLES = 5
MAX_TRACKED_BEYOND_DEPTH = 100_000  # bounds the memory of the report on a huge site

_DIGITS = re.compile(r"\d+")
_PATH_PARAM_SESSION = re.compile(r";(?:jsessionid|phpsessid|sid|sessionid)=[^/?#]*", re.IGNORECASE)


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Return the canonical spelling of `url` (resolved against `base`), or None if it is not http(s).

    Two spellings of one page must compare equal or the visited set cannot stop re-fetching it:
    fragments are dropped, scheme/host lowercased, an internationalised host spelled in IDNA (w3lib:
    `bücher.de` is `xn--bcher-kva.de`), default ports removed, session-id parameters stripped. The query is
    otherwise kept in its original order (it can select content).
    """
    url = (url or "").strip()
    if not url:
        return None
    try:
        absolute = safe_url_string(urljoin(base, url) if base else url)
        parts = urlsplit(absolute)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in HTTP_SCHEMES or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _PATH_PARAM_SESSION.sub("", parts.path) or "/"
    # Escape spaces and non-ASCII so "/a b" and "/a%20b" are one URL; existing escapes stay as they are.
    path = quote(path, safe="/%:@!$&'()*+,;=-._~")
    # Filter the raw pairs (not parse/re-encode) so "?print" or "a=b+c" keep their exact spelling.
    pairs = [pair for pair in parts.query.split("&") if pair and _query_key(pair) not in SESSION_PARAMS]
    query = quote("&".join(pairs), safe="/%:@!$&'()*+,;=-._~?")
    return urlunsplit((scheme, netloc, path, query, ""))


def _query_key(pair: str) -> str:
    return unquote(pair.split("=", 1)[0]).lower()


def site_of(url: str) -> str:
    """The site a URL belongs to: its host (in IDNA) without a leading `www.` (so example.org == www.example.org)."""
    host = (urlsplit(safe_url_string(url)).hostname or "").lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def trap_pattern(url: str) -> str:
    """A key shared by URLs that differ only in digits or query values (calendar pages, endless pagers)."""
    parts = urlsplit(url)
    path = _DIGITS.sub("N", parts.path)
    keys = sorted({key for key, _ in parse_qsl(parts.query, keep_blank_values=True)})
    return f"{parts.netloc}{path}?{'&'.join(keys)}"


def has_repeated_segments(path: str) -> bool:
    """True for paths like /a/b/a/b/a/b/a: relative links resolving into ever deeper copies of a page."""
    segments = [s for s in path.split("/") if s]
    counts = Counter(segments)
    return bool(counts) and max(counts.values()) > MAX_REPEATED_SEGMENT


def path_matches(path: str, globs: list[str]) -> bool:
    """fnmatch on the URL path (case-sensitive, `*` also crosses `/`)."""
    return any(fnmatchcase(path, glob) for glob in globs)


@dataclass(frozen=True)
class FrontierItem:
    url: str
    depth: int


class Frontier:
    """Breadth-first queue of URLs still to fetch, with every admission rule of a run.

    `skipped` counts refusals by reason (external, excluded, non_http, max_depth, trap, too_long) so
    a short crawl can be explained instead of looking like a bug.
    """

    def __init__(self, start_url: str, config: RunConfig, *, trap_limit: int = DEFAULT_TRAP_LIMIT) -> None:
        start = normalize_url(start_url)
        if start is None:
            raise ValueError(f"start url {start_url!r} is not an http(s) URL")
        self.start_url = start
        self.config = config
        self.trap_limit = trap_limit
        self.sites: set[str] = {site_of(start)}
        self.skipped: Counter[str] = Counter()
        self._beyond_depth: set[str] = set()
        self._queue: deque[FrontierItem] = deque()
        self._seen: set[str] = set()
        self._patterns: Counter[str] = Counter()
        self._trapped: set[str] = set()
        # Pages a calendar feed already gave (issue 26): set from the consumer's thread, read by the crawl's.
        self._covered: set[str] = set()
        self._covered_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._queue)

    def add_site(self, url: str) -> None:
        """Treat `url`'s site as ours too (the start URL redirected to another host, e.g. http→https www)."""
        self.sites.add(site_of(url))

    def is_same_site(self, url: str) -> bool:
        return site_of(url) in self.sites

    def mark_seen(self, url: str) -> None:
        """Record a URL as visited without queueing it (start URL, redirect targets, canonical URLs)."""
        normalized = normalize_url(url)
        if normalized is not None:
            self._seen.add(normalized)

    def seen(self, url: str) -> bool:
        normalized = normalize_url(url)
        return normalized is not None and normalized in self._seen

    def is_new(self, url: str) -> bool:
        """True when `url` is a crawlable URL the frontier has not seen yet (no rule is applied here)."""
        normalized = normalize_url(url)
        return normalized is not None and normalized not in self._seen

    def add(self, url: str, depth: int, *, base: str | None = None) -> bool:
        """Queue `url` found at `depth`; return False (and count why) when a rule refuses it."""
        normalized = normalize_url(url, base)
        if normalized is None:
            self.skipped["non_http"] += 1
            return False
        if normalized in self._seen:
            return False
        if depth > self.config.max_depth:
            self.skipped["max_depth"] += 1
            if len(self._beyond_depth) < MAX_TRACKED_BEYOND_DEPTH:
                self._beyond_depth.add(normalized)
            return False
        if len(normalized) > MAX_URL_LENGTH:
            self.skipped["too_long"] += 1
            return False
        if not self.config.follow_external_links and not self.is_same_site(normalized):
            self.skipped["external"] += 1
            return False
        path = urlsplit(normalized).path
        if self.config.include_paths and not path_matches(path, self.config.include_paths):
            self.skipped["excluded"] += 1
            return False
        if self.config.exclude_paths and path_matches(path, self.config.exclude_paths):
            self.skipped["excluded"] += 1
            return False
        if has_repeated_segments(path) or self._is_trap(normalized):
            self.skipped["trap"] += 1
            return False
        self._seen.add(normalized)
        self._queue.append(FrontierItem(normalized, depth))
        return True

    def cover(self, urls: list[str]) -> None:
        """Do not fetch these pages: what they would give is already in hand (a calendar feed listed them)."""
        normalized = {url for url in (normalize_url(u) for u in urls) if url and self.is_same_site(url)}
        with self._covered_lock:
            self._covered |= normalized

    def pop(self) -> FrontierItem | None:
        while self._queue:
            item = self._queue.popleft()
            with self._covered_lock:
                covered = item.url in self._covered
            if not covered:
                return item
            self.skipped["covered_by_feed"] += 1
        return None

    def queued(self, limit: int = UNFOLLOWED_EXAMPLES) -> list[str]:
        """The first `limit` URLs still queued (examples of what a stopped crawl left unfollowed)."""
        return [item.url for item in list(self._queue)[:limit]]

    def beyond_depth(self) -> list[str]:
        """Distinct URLs refused for max_depth and never reached another way, in a stable order."""
        return sorted(self._beyond_depth - self._seen)

    def _is_trap(self, url: str) -> bool:
        pattern = trap_pattern(url)
        if self._patterns[pattern] >= self.trap_limit:
            if pattern not in self._trapped:
                self._trapped.add(pattern)
                log.warning(
                    "crawler trap guard: %d URLs already queued that differ only by numbers/query values "
                    "(pattern %s); not queueing more of them",
                    self.trap_limit,
                    pattern,
                )
            return True
        self._patterns[pattern] += 1
        return False
