"""Many small activity sites on distinct loopback addresses (127.0.1.N, 127.0.2.N, ...), served by one process,
for the fleet bench (bench/fleet.py): each site is its own host to a crawler (its own robots.txt, its own
per-host politeness), as 200 real sources would be.

Each site has a home page listing its activities, one page per activity with a schema.org Event in JSON-LD (a
dated start and a postal address, so standardizing and geocoding have work), a robots.txt that disallows
/private/ (the home page links there: a crawler that ignores robots fetches it) and, on some sites, asks for a
Crawl-delay. The server records, per host, the requests in flight at once (its maximum) and each request's start,
so the bench can check that per-host politeness held: never more than the per-host limit in flight to one host,
robots kept, Crawl-delay spacing kept.
"""

from __future__ import annotations

import json
import random
import selectors
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ["Story Time", "Junior Swim", "Craft Morning", "Nature Walk", "Puppet Show", "Lego Club", "Kids Yoga",
         "Science Lab", "Music Makers", "Family Film"]
CITIES = [("Melbourne", "3000", "AU"), ("Brighton", "BN1 1AA", "GB"), ("Portland", "97201", "US"),
          ("Auckland", "1010", "NZ"), ("Dublin", "D02", "IE")]


@dataclass(frozen=True)
class FleetSite:
    """One generated site: its loopback address, its activities' count and robots.txt's Crawl-delay (None: none)."""

    index: int
    host: str
    activities: int
    crawl_delay: float | None

    def pages(self) -> dict[str, tuple[str, bytes]]:
        """Path -> (content type, body)."""
        rng = random.Random(self.index)
        city, postal, country = CITIES[self.index % len(CITIES)]
        out: dict[str, tuple[str, bytes]] = {}
        links = []
        for number in range(1, self.activities + 1):
            name = f"{rng.choice(KINDS)} {self.index}-{number}"
            day = 1 + (self.index + number) % 27
            month = 1 + (self.index * 7 + number) % 12
            event = {
                "@context": "https://schema.org", "@type": "Event", "name": name,
                "startDate": f"2027-{month:02d}-{day:02d}T{9 + number % 8:02d}:00:00+00:00",
                "description": f"{name}: a family activity at site {self.index}.",
                "location": {"@type": "Place", "name": f"Hall {self.index}",
                             "address": {"@type": "PostalAddress", "streetAddress": f"{self.index} High Street",
                                         "addressLocality": city, "postalCode": postal, "addressCountry": country}},
            }
            path = f"/activities/{number}/"
            head = f'<script type="application/ld+json">{json.dumps(event)}</script>'
            out[path] = ("text/html; charset=utf-8", _page(name, f"<h1>{name}</h1><p>{event['startDate']}</p>", head))
            links.append(f'<li><a href="{path}">{name}</a></li>')
        links.append('<li><a href="/private/">Members only</a></li>')
        out["/"] = ("text/html; charset=utf-8", _page(f"Site {self.index}", f"<ul>{''.join(links)}</ul>"))
        out["/private/"] = ("text/html; charset=utf-8", _page("Private", "<p>robots.txt disallows this page</p>"))
        robots = "User-agent: *\nDisallow: /private/\n"
        if self.crawl_delay:
            robots += f"Crawl-delay: {self.crawl_delay:g}\n"
        out["/robots.txt"] = ("text/plain; charset=utf-8", robots.encode())
        return out


def _page(title: str, body: str, head: str = "") -> bytes:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{head}</head>'
            f"<body><main>{body}</main></body></html>\n").encode()


def fleet_sites(count: int, *, seed: int = 0, delay_every: int = 4, crawl_delay: float = 0.2,
                min_activities: int = 10, max_activities: int = 50) -> list[FleetSite]:
    """`count` sites on 127.0.1.1 onwards (250 a /24: 127.0.1.1-250, then 127.0.2.1, ...), each with a seeded
    number of activities in [min_activities, max_activities]; every `delay_every`-th asks for `crawl_delay`."""
    rng = random.Random(seed)
    sites = []
    for i in range(count):
        host = f"127.0.{1 + i // 250}.{1 + i % 250}"
        delay = crawl_delay if delay_every and i % delay_every == delay_every - 1 else None
        sites.append(FleetSite(i, host, rng.randint(min_activities, max_activities), delay))
    return sites


@dataclass
class HostTally:
    """What one host served: requests, the most in flight at once, each page request's start (monotonic; not
    robots.txt's), any path robots.txt disallows."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    starts: list[tuple[float, str]] = field(default_factory=list)
    disallowed: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HostServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        fleet, host = self.server.fleet, self.server.host
        fleet.enter(host, self.path)
        try:
            content_type, body = self.server.pages.get(self.path.split("?")[0], ("", b""))
            self.send_response(200 if content_type else 404)
            self.send_header("Content-Type", content_type or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            fleet.leave(host)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return


class _HostServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fleet: FleetServer, site: FleetSite, port: int) -> None:
        self.fleet, self.host, self.pages = fleet, site.host, site.pages()
        super().__init__((site.host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a crawler hanging up mid-response is not the server's failure


class FleetServer:
    """Every site of the fleet from this process, on one port: one listening socket per loopback address, one
    thread accepting on all of them (a selector), a thread per connection (as ThreadingHTTPServer does)."""

    def __init__(self, sites: list[FleetSite], port: int = 0) -> None:
        self.sites = sites
        self._port = port
        self._servers: list[_HostServer] = []
        self._lock = threading.Lock()
        self.tally: dict[str, HostTally] = defaultdict(HostTally)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FleetServer:
        for site in self.sites:
            server = _HostServer(self, site, self._port)
            self._port = server.server_address[1]  # the first picks a free port; the others share it
            self._servers.append(server)
        self._thread = threading.Thread(target=self._serve, name="fleet-sites", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for server in self._servers:
                selector.register(server, selectors.EVENT_READ, server)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    key.data._handle_request_noblock()  # noqa: SLF001 - what serve_forever calls

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for server in self._servers:
            server.server_close()

    def __enter__(self) -> FleetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    def url(self, site: FleetSite) -> str:
        return f"http://{site.host}:{self._port}/"

    def enter(self, host: str, path: str) -> None:
        with self._lock:
            tally = self.tally[host]
            tally.requests += 1
            tally.in_flight += 1
            tally.max_in_flight = max(tally.max_in_flight, tally.in_flight)
            if path != "/robots.txt":  # fetched before the crawler can know the delay it asks for
                tally.starts.append((time.monotonic(), path))
            if path.startswith("/private/"):
                tally.disallowed.append(path)

    def leave(self, host: str) -> None:
        with self._lock:
            self.tally[host].in_flight -= 1

    def politeness(self, per_host_limit: int) -> dict[str, Any]:
        """Whether politeness held across the fleet: the most requests in flight to one host (at most
        `per_host_limit`), requests to robots-disallowed paths (none), and on each Crawl-delay site the spacing of
        its page requests (all but robots.txt): n requests must span at least (n - 1) x the delay, less 0.25 s.
        The crawler spaces the starts of its requests; this server sees their arrival, which a busy machine delays
        unevenly, so one gap may look short when the request before it arrived late: the span is what a crawler
        that ignored the delay could not fake (30 pages in ~1 s instead of ~6 s). Gaps shorter than the delay less
        50 ms are counted and named (`early_starts`) all the same."""
        delays = {site.host: site.crawl_delay for site in self.sites if site.crawl_delay}
        with self._lock:
            max_in_flight = max((t.max_in_flight for t in self.tally.values()), default=0)
            disallowed = sum(len(t.disallowed) for t in self.tally.values())
            gaps, early, spans_kept = [], [], []
            for host, delay in delays.items():
                starts = sorted(self.tally[host].starts)
                pairs = list(zip(starts, starts[1:], strict=False))
                if pairs:
                    gaps.append(min(b[0] - a[0] for a, b in pairs))
                    early += [f"{host}: {a[1]} then {b[1]} {b[0] - a[0]:.3f} s" for a, b in pairs
                              if b[0] - a[0] < delay - 0.05]
                    spans_kept.append(starts[-1][0] - starts[0][0] >= (len(starts) - 1) * delay - 0.25)
            requests = sum(t.requests for t in self.tally.values())
        smallest = min(gaps, default=None)
        delay_kept = all(spans_kept)
        return {
            "requests": requests, "hosts_requested": len(self.tally), "per_host_limit": per_host_limit,
            "max_in_flight_per_host": max_in_flight, "in_flight_held": max_in_flight <= per_host_limit,
            "disallowed_requests": disallowed, "robots_kept": disallowed == 0,
            "crawl_delay_sites": len(delays), "crawl_delay_kept": delay_kept,
            "smallest_gap_on_delay_sites_s": round(smallest, 3) if smallest is not None else None,
            "early_starts": len(early), "early_examples": early[:5],
            "held": max_in_flight <= per_host_limit and disallowed == 0 and delay_kept,
        }
