"""A local geocoding service speaking the real Nominatim and Google Geocoding wire protocols.

There is no network in tests, the demo or the benchmarks, so harvest's geocoders (plain httpx clients) are
pointed at this server by base URL. It answers two APIs:

* Nominatim ``GET /search?q=...&format=jsonv2&limit=1&addressdetails=1`` → a JSON array of places with
  ``lat``/``lon`` as strings, ``place_id``, ``display_name`` and an ``address`` object.
* Google ``GET /maps/api/geocode/json?address=...&key=...`` → ``{"results": [...], "status": "OK"}``, or
  ``ZERO_RESULTS``, ``REQUEST_DENIED`` (missing or wrong key, HTTP 200 like Google), ``OVER_QUERY_LIMIT``.

Answers come from a gazetteer: the REAL Google geocodes stored in ``testkit/data/final-records-sample.jsonl``
(matched on the normalized street + locality, so "829 Main Rd, Eltham, Australia" finds the record for
"829 Main Rd, Eltham VIC 3095, Australia"), and for any other address a deterministic point derived from a
hash of the normalized address inside greater Melbourne's bounding box, with components parsed from the
address text. An empty address, or one containing "nowhere", has no result.

Failure injection (in-process via :meth:`GeocoderTestServer.fail_next`, or over HTTP so an out-of-process
server can be driven by e2e tests):

* ``POST /_testkit/config`` ``{"fail": [{"path": "/search", "count": 2, "mode": "status", "status": 429,
  "retry_after": 0.1}]}`` — modes: ``status`` (HTTP error with that status), ``timeout`` (sleep ``sleep_s``
  before answering normally: longer than the client's timeout), ``garbage`` (HTTP 200 with a non-JSON body),
  ``over_query_limit`` (Google's HTTP 200 ``OVER_QUERY_LIMIT`` status), ``drip`` (HTTP 200 headers at once,
  then a JSON body one byte every ``sleep_s``: no single read ever waits long, only a total deadline ends
  it). ``retry_after`` is seconds, or a string sent as it is (an HTTP date).
* ``GET /_testkit/stats`` → per-endpoint counters; ``POST /_testkit/reset`` → no rules, zero counters.

CLI: ``python -m testkit.geocoder_server --port P [--api-key K]`` prints the base URL and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import sys
import threading
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testkit.loopback import LoopbackHandler, LoopbackServer

DATA_FILE = Path(__file__).parent / "data" / "final-records-sample.jsonl"
DEFAULT_API_KEY = "testkit-google-key"

# Greater Melbourne, roughly Werribee–Pakenham × Frankston–Kinglake: where the demo site's activities are.
MELBOURNE_BBOX = {"south": -38.20, "north": -37.50, "west": 144.55, "east": 145.45}

STATES = {
    "vic": "Victoria",
    "victoria": "Victoria",
    "nsw": "New South Wales",
    "qld": "Queensland",
    "sa": "South Australia",
    "wa": "Western Australia",
    "tas": "Tasmania",
    "nt": "Northern Territory",
    "act": "Australian Capital Territory",
}
STATE_SHORT = {"Victoria": "VIC", "New South Wales": "NSW", "Queensland": "QLD", "South Australia": "SA",
               "Western Australia": "WA", "Tasmania": "TAS", "Northern Territory": "NT",
               "Australian Capital Territory": "ACT"}
COUNTRIES = {"australia": "AU", "au": "AU"}
# Street types and "saint" collapse to one spelling so "277 Saint Helena Road" and "277 St Helena Rd" match.
STREET_WORDS = {
    "road": "rd", "street": "st", "saint": "st", "drive": "dr", "avenue": "ave", "av": "ave",
    "crescent": "cres", "court": "ct", "place": "pl", "parade": "pde", "boulevard": "blvd",
    "highway": "hwy", "lane": "ln", "terrace": "tce", "circuit": "cct", "close": "cl", "grove": "gr",
}
_STATE_POSTCODE = re.compile(
    r"^(?P<city>.*?)[\s,]*\b(?P<state>vic|victoria|nsw|qld|sa|wa|tas|nt|act)\b\.?\s*(?P<postcode>\d{4})?$",
    re.IGNORECASE,
)


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return [STREET_WORDS.get(w, w) for w in re.findall(r"[0-9a-z]+", text)]


def parse_address(address: str) -> dict[str, str]:
    """Split an Australian-style address ("829 Main Rd, Eltham VIC 3095, Australia") into Location-style parts.

    Keys (only those found): street_address, city, state_province, postal_code, country_code. Good enough
    for the demo site's addresses; the stand-in LLM reuses it for its ``Where:`` lines.
    """
    parts: dict[str, str] = {}
    segments = [s.strip() for s in address.split(",") if s.strip()]
    for index, segment in enumerate(segments):
        lowered = segment.casefold()
        if lowered in COUNTRIES:
            parts["country_code"] = COUNTRIES[lowered]
            continue
        if lowered in STATES:
            parts.setdefault("state_province", STATES[lowered])
            continue
        if re.fullmatch(r"\d{4}", segment):
            parts.setdefault("postal_code", segment)
            continue
        match = _STATE_POSTCODE.match(segment)
        if match:
            parts.setdefault("state_province", STATES[match["state"].casefold()])
            if match["postcode"]:
                parts.setdefault("postal_code", match["postcode"])
            if match["city"].strip():
                parts.setdefault("city", match["city"].strip())
            continue
        if index == 0 and re.match(r"^\d", segment):
            parts["street_address"] = segment
            continue
        if index == 0 and len(segments) > 1 and "city" not in parts:
            # "Separation St, Northcote": a first segment that is not the locality is the street.
            if re.search(r"\b(rd|road|st|street|dr|drive|cres|crescent|ave|avenue|pde|parade|blvd|boulevard|"
                         r"ln|lane|way|ct|court|pl|place|hwy|highway|cct|circuit|tce|terrace|gr|grove)\b",
                         lowered):
                parts["street_address"] = segment
                continue
        if "city" not in parts:
            parts["city"] = segment
    return parts


def address_key(address: str) -> str:
    """Normalize an address to street + locality words: state, postcode, country and "Melbourne" dropped."""
    kept: list[str] = []
    for segment in address.split(","):
        lowered = segment.strip().casefold()
        if not lowered or lowered in COUNTRIES or lowered in STATES or lowered == "melbourne":
            continue
        if re.fullmatch(r"\d{4}", lowered):
            continue
        match = _STATE_POSTCODE.match(segment.strip())
        if match:
            lowered = match["city"].strip().casefold()
        kept.extend(_words(lowered))
    return " ".join(kept)


@dataclass(frozen=True)
class Place:
    """One answer: what both wire formats are rendered from."""

    latitude: float
    longitude: float
    place_id: str
    formatted_address: str
    components: dict[str, str]
    name: str | None = None


def _load_gazetteer(path: Path = DATA_FILE) -> dict[str, Place]:
    gazetteer: dict[str, Place] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            location = json.loads(line).get("location") or {}
            if location.get("latitude") is None or not location.get("formattedAddress"):
                continue
            components = {
                key: str(location[key])
                for key in ("street_address", "city", "state_province", "postal_code", "country_code")
                if location.get(key)
            }
            place = Place(
                latitude=float(location["latitude"]),
                longitude=float(location["longitude"]),
                place_id=str(location.get("placeId") or ""),
                formatted_address=location["formattedAddress"],
                components=components,
                name=location.get("name"),
            )
            keys = {address_key(location["formattedAddress"])}
            if components.get("street_address") and components.get("city"):
                keys.add(address_key(f"{components['street_address']}, {components['city']}"))
            for key in keys:
                if key:
                    gazetteer[key] = place
    return gazetteer


def _synthetic_place(address: str, key: str) -> Place:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    frac_lat = int.from_bytes(digest[:8], "big") / 2**64
    frac_lon = int.from_bytes(digest[8:16], "big") / 2**64
    box = MELBOURNE_BBOX
    components = parse_address(address)
    components.setdefault("country_code", "AU")
    formatted = address.strip()
    if not any(seg.strip().casefold() in COUNTRIES for seg in formatted.split(",")):
        formatted = f"{formatted}, Australia"
    return Place(
        latitude=round(box["south"] + frac_lat * (box["north"] - box["south"]), 7),
        longitude=round(box["west"] + frac_lon * (box["east"] - box["west"]), 7),
        place_id="testkit-" + digest[16:28].hex(),
        formatted_address=formatted,
        components=components,
    )


class Gazetteer:
    """Looks addresses up: real records first, then a deterministic synthetic point; None for no result."""

    def __init__(self, path: Path = DATA_FILE) -> None:
        self._known = _load_gazetteer(path)

    def lookup(self, address: str) -> Place | None:
        if not address.strip() or "nowhere" in address.casefold():
            return None
        key = address_key(address)
        if not key:
            return None
        if key in self._known:
            return self._known[key]
        # A known street + locality preceded by a place name ("Alistair Knox Park 829 main rd eltham") is that
        # place; preceded by a house number ("356 separation st northcote") it is another address on the street.
        padded = f" {key} "
        for known_key, place in self._known.items():
            at = padded.find(f" {known_key} ")
            if at >= 0 and not re.search(r"\d\s*$", padded[:at]):
                return place
        return _synthetic_place(address, key)


def _split_street(street: str) -> tuple[str | None, str]:
    match = re.match(r"^(\d+[A-Za-z]?(?:-\d+[A-Za-z]?)?)\s+(.*)$", street)
    return (match[1], match[2]) if match else (None, street)


def google_result(place: Place) -> dict[str, Any]:
    """A Google Geocoding API result object for a place."""
    comps: list[dict[str, Any]] = []
    c = place.components
    if c.get("street_address"):
        number, route = _split_street(c["street_address"])
        if number:
            comps.append({"long_name": number, "short_name": number, "types": ["street_number"]})
        comps.append({"long_name": route, "short_name": route, "types": ["route"]})
    if c.get("city"):
        comps.append({"long_name": c["city"], "short_name": c["city"], "types": ["locality", "political"]})
    if c.get("state_province"):
        state = c["state_province"]
        comps.append({"long_name": state, "short_name": STATE_SHORT.get(state, state),
                      "types": ["administrative_area_level_1", "political"]})
    if c.get("country_code"):
        comps.append({"long_name": "Australia" if c["country_code"] == "AU" else c["country_code"],
                      "short_name": c["country_code"], "types": ["country", "political"]})
    if c.get("postal_code"):
        comps.append({"long_name": c["postal_code"], "short_name": c["postal_code"], "types": ["postal_code"]})
    return {
        "address_components": comps,
        "formatted_address": place.formatted_address,
        "geometry": {
            "location": {"lat": place.latitude, "lng": place.longitude},
            "location_type": "ROOFTOP" if c.get("street_address") else "APPROXIMATE",
            "viewport": {
                "northeast": {"lat": place.latitude + 0.0013, "lng": place.longitude + 0.0013},
                "southwest": {"lat": place.latitude - 0.0013, "lng": place.longitude - 0.0013},
            },
        },
        "place_id": place.place_id,
        "types": ["street_address"] if c.get("street_address") else ["locality", "political"],
    }


def nominatim_result(place: Place, *, address_details: bool, jsonv2: bool) -> dict[str, Any]:
    """A Nominatim /search result object for a place (lat/lon are strings, as Nominatim sends them)."""
    osm_id = int.from_bytes(hashlib.sha256(place.place_id.encode()).digest()[:4], "big")
    result: dict[str, Any] = {
        "place_id": osm_id % 400_000_000,
        "licence": "Data © OpenStreetMap contributors, ODbL 1.0. http://osm.org/copyright",
        "osm_type": "way",
        "osm_id": osm_id,
        "lat": f"{place.latitude:.7f}",
        "lon": f"{place.longitude:.7f}",
        ("category" if jsonv2 else "class"): "place",
        "type": "house" if place.components.get("street_address") else "suburb",
        "place_rank": 30 if place.components.get("street_address") else 19,
        "importance": 0.2,
        "addresstype": "place",
        "name": place.name or "",
        "display_name": place.formatted_address,
        "boundingbox": [f"{place.latitude - 0.0005:.7f}", f"{place.latitude + 0.0005:.7f}",
                        f"{place.longitude - 0.0005:.7f}", f"{place.longitude + 0.0005:.7f}"],
    }
    if address_details:
        c = place.components
        address: dict[str, str] = {}
        if c.get("street_address"):
            number, road = _split_street(c["street_address"])
            if number:
                address["house_number"] = number
            address["road"] = road
        if c.get("city"):
            address["suburb"] = c["city"]
            address["city"] = c["city"]
        if c.get("state_province"):
            address["state"] = c["state_province"]
        if c.get("postal_code"):
            address["postcode"] = c["postal_code"]
        if c.get("country_code"):
            address["country"] = "Australia" if c["country_code"] == "AU" else c["country_code"]
            address["country_code"] = c["country_code"].lower()
        result["address"] = address
    return result


@dataclass
class FailureRule:
    """Fail the next `count` requests whose path starts with `path`."""

    path: str = "/"
    count: int = 1
    mode: str = "status"  # status | timeout | garbage | over_query_limit | drip
    status: int = 500
    # Seconds (sent as "%g"), or a string sent verbatim: an HTTP date such as formatdate(..., usegmt=True).
    retry_after: float | str | None = None
    sleep_s: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in {"status", "timeout", "garbage", "over_query_limit", "drip"}:
            raise ValueError(f"unknown failure mode {self.mode!r}")
        if self.count < 0:
            raise ValueError("count must be >= 0")


def _drip_body() -> bytes:
    return json.dumps([{"lat": "-37.7", "lon": "145.1", "display_name": "dripped"}] * 50).encode("utf-8")


class GeocoderTestServer(LoopbackServer):
    """Threaded HTTP server answering Nominatim and Google geocoding requests from the gazetteer."""

    thread_name = "geocoder-test-server"

    def __init__(self, port: int = 0, *, api_key: str = DEFAULT_API_KEY, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        super().__init__(port, host)
        self._gazetteer = Gazetteer()
        self._lock = threading.Lock()
        self._rules: list[FailureRule] = []
        self._stats: Counter[str] = Counter()
        self._log: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _drip(self, req: Any, every_s: float) -> None:
        body = _drip_body()
        try:
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            for index in range(len(body)):
                if self._stopping.is_set():
                    break
                req.wfile.write(body[index : index + 1])
                req.wfile.flush()
                self._stopping.wait(every_s)
        except OSError:
            req.close_connection = True  # the client gave up, as it should

    # -- control ---------------------------------------------------------------------------------------
    def fail_next(self, count: int = 1, *, mode: str = "status", status: int = 500, path: str = "/",
                  retry_after: float | str | None = None, sleep_s: float = 2.0) -> None:
        """Make the next `count` requests under `path` fail in `mode` (see module docstring)."""
        rule = FailureRule(path=path, count=count, mode=mode, status=status, retry_after=retry_after,
                           sleep_s=sleep_s)
        with self._lock:
            self._rules.append(rule)

    def configure(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Apply a JSON config, the same one ``POST /_testkit/config`` takes (``{"fail": [rule, ...]}``)."""
        settings = {**(config or {}), **kwargs}
        unknown = set(settings) - {"fail"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        fail = settings.get("fail", [])
        rules = [FailureRule(**rule) for rule in ([fail] if isinstance(fail, dict) else fail)]
        with self._lock:
            self._rules.extend(rules)

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._stats.clear()
            self._log.clear()

    def stats(self) -> dict[str, int]:
        """Counters: requests per endpoint (``nominatim.search``, ``google.geocode``), injected failures."""
        with self._lock:
            return dict(self._stats)

    def requests_seen(self) -> list[dict[str, Any]]:
        """Every geocoding request: ``path``, ``query``, ``user_agent`` and arrival time ``at`` (monotonic)."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _take_failure(self, path: str) -> FailureRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.count > 0 and path.startswith(rule.path):
                    rule.count -= 1
                    self._stats[f"injected.{rule.mode}"] += 1
                    return rule
            self._rules = [r for r in self._rules if r.count > 0]
        return None

    # -- request handling ------------------------------------------------------------------------------
    def handle(self, req: _Handler, method: str) -> None:
        parts = urlsplit(req.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = req.read_body()
        if path.startswith("/_testkit/"):
            self._handle_control(req, method, path, body)
            return
        self._count("requests")
        if method != "GET":
            req.send_json(405, {"error": f"{method} not allowed"})
            return
        if path in ("/search", "/search.php"):
            endpoint = "nominatim.search"
        elif path == "/maps/api/geocode/json":
            endpoint = "google.geocode"
        else:
            req.send_json(404, {"error": f"no route for {path}"})
            return
        self._count(endpoint)
        with self._lock:
            self._log.append({"path": path, "query": query, "user_agent": req.headers.get("User-Agent"),
                              "at": time.monotonic()})
        rule = self._take_failure(path)
        if rule is not None:
            if rule.mode == "timeout":
                self._stopping.wait(rule.sleep_s)
            elif rule.mode == "garbage":
                req.send_bytes(200, b"<html><body>502 Bad Gateway</body></html>{not json", "application/json")
                return
            elif rule.mode == "drip":
                self._drip(req, rule.sleep_s)
                return
            elif rule.mode == "status":
                headers = {} if rule.retry_after is None else {"Retry-After": (
                    rule.retry_after if isinstance(rule.retry_after, str) else f"{rule.retry_after:g}")}
                req.send_json(rule.status, {"error": {"code": rule.status, "message": "testkit injected failure"}},
                              headers)
                return
            elif rule.mode == "over_query_limit" and endpoint == "google.geocode":
                req.send_json(200, {"error_message": "You have exceeded your rate-limit for this API.",
                                    "results": [], "status": "OVER_QUERY_LIMIT"})
                return
        if endpoint == "nominatim.search":
            self._nominatim(req, query)
        else:
            self._google(req, query)

    def _nominatim(self, req: _Handler, query: dict[str, str]) -> None:
        fmt = query.get("format", "xml")
        if fmt not in ("json", "jsonv2"):
            req.send_json(400, {"error": {"code": 400, "message": f"format {fmt!r} not supported by testkit"}})
            return
        try:
            limit = max(1, min(int(query.get("limit", "10")), 40))
        except ValueError:
            req.send_json(400, {"error": {"code": 400, "message": "Parameter 'limit' must be a number."}})
            return
        place = self._gazetteer.lookup(query.get("q", ""))
        self._count("results" if place else "no_results")
        results = [] if place is None else [
            nominatim_result(place, address_details=query.get("addressdetails") == "1", jsonv2=fmt == "jsonv2")
        ]
        req.send_json(200, results[:limit])

    def _google(self, req: _Handler, query: dict[str, str]) -> None:
        key = query.get("key", "")
        if not key:
            req.send_json(200, {"error_message": "You must use an API key to authenticate each request to Google "
                                "Maps Platform APIs.", "results": [], "status": "REQUEST_DENIED"})
            return
        if key != self.api_key:
            req.send_json(200, {"error_message": "The provided API key is invalid. ", "results": [],
                                "status": "REQUEST_DENIED"})
            return
        address = query.get("address")
        if address is None:
            req.send_json(200, {"error_message": "Invalid request. Missing the 'address', 'components', 'latlng' "
                                "or 'place_id' parameter.", "results": [], "status": "INVALID_REQUEST"})
            return
        place = self._gazetteer.lookup(address)
        self._count("results" if place else "no_results")
        if place is None:
            req.send_json(200, {"results": [], "status": "ZERO_RESULTS"})
        else:
            req.send_json(200, {"results": [google_result(place)], "status": "OK"})


class _Handler(LoopbackHandler):
    json_content_type = "application/json; charset=utf-8"  # as Google and Nominatim answer


GeocoderTestServer.handler_class = _Handler  # bound here: the handler is defined after the server class


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the Google key the server accepts")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = GeocoderTestServer(args.port, api_key=args.api_key, host=args.host).start()
    print(server.base_url, flush=True)
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
