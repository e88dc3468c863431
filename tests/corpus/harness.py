"""Serve the corpus of real pages on loopback, run harvest's crawl + extraction + standardization over each, and
score the records against what a person reads on the page (tests/corpus/expectations.json).

The scoring never uses harvest's own helpers (names, dates and zones are compared here with the standard library),
so a bug in them cannot make the corpus agree with itself.

    python -m tests.corpus.harness      # prints the per-site table (what the issue's closing note quotes)
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

CORPUS = Path(__file__).parent
EXPECTATIONS = CORPUS / "expectations.json"


@dataclass
class Site:
    site: str
    file: str
    path: str
    timezone: str
    as_of: str
    items: list[dict[str, Any]]
    language: str = "en"
    kind: str = ""
    query: str = ""
    content_type: str = "text/html; charset=utf-8"

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def load_sites() -> list[Site]:
    data = json.loads(EXPECTATIONS.read_text(encoding="utf-8"))
    return [Site(**entry) for entry in data["sites"]]


# --- serving -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(site: Site) -> Iterator[str]:
    """The page on 127.0.0.1 at its own path (and query), everything else 404; yields the page's URL."""
    page = ((CORPUS / site.file).read_bytes(), site.content_type)
    routes = {site.target: page} if site.query else {site.target: page, site.path: page}
    with serve_pages(routes) as base:
        yield base + site.target


@contextlib.contextmanager
def serve_pages(routes: dict[str, tuple[bytes, str]]) -> Iterator[str]:
    """Several pages on one loopback host (path -> body, content type); yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            payload, ctype = routes.get(self.path, (b"not here", "text/plain"))
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- running harvest ---------------------------------------------------------------------------------------


def run_site(site: Site, workdir: Path) -> list[dict[str, Any]]:
    """The standardized records harvest makes of the served page: the real crawler (plain HTTP, the page only),
    the real extraction, the real standardize + dedupe stage, over a local store."""
    from harvest.crawl.stage import collect_raw_activities
    from harvest.errors import CrawlError
    from harvest.models import RunConfig
    from harvest.settings import HarvestSettings
    from harvest.standardize.stage import standardize_raw_activities
    from harvest.storage import iter_jsonl
    from harvest.storage.local import LocalStore

    store = LocalStore(workdir / "store")
    settings = HarvestSettings(allow_private_networks=True, request_timeout_seconds=5, crawl_revalidate=False)
    options: dict[str, Any] = {"max_depth": 0, "max_pages": 3, "render": "http"}
    if "timezone" in RunConfig.model_fields:  # the run config's site zone (issue 26); older code has none
        options["timezone"] = site.timezone
    config = RunConfig(**options)
    as_of = datetime.combine(date.fromisoformat(site.as_of), time(), tzinfo=ZoneInfo(site.timezone))
    extra = {"as_of": as_of} if "as_of" in inspect.signature(collect_raw_activities).parameters else {}
    with serve(site) as url:
        try:
            collected = collect_raw_activities(store, "corpus", url, config, settings, **extra)
        except CrawlError:  # the page could not be read at all (e.g. a calendar feed to code without feeds)
            return []
    raw = next(ref for ref in collected.files if ref.kind == "raw_activities")
    standardized = standardize_raw_activities(store, "corpus", raw, config)
    ref = next(ref for ref in standardized.files if ref.kind == "standardized")
    return list(iter_jsonl(store, ref.uri))


# --- scoring -----------------------------------------------------------------------------------------------


def _key(text: str | None) -> str:
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def _same_place(a: str | None, b: str | None) -> bool:
    a, b = _key(a), _key(b)
    return bool(a and b) and (a == b or a in b or b in a)


@dataclass
class Start:
    """One start of a record, as the scorer reads it."""

    value: datetime | date
    aware: bool
    all_day: bool

    def local(self, zone: ZoneInfo) -> datetime | date:
        if isinstance(self.value, datetime) and self.aware:
            return self.value.astimezone(zone)
        return self.value


def _starts(record: dict[str, Any]) -> list[Start]:
    out = []
    occurrences = record.get("occurrences") or (
        [{"start_date": record.get("start_date"), "all_day": record.get("all_day", False)}]
        if record.get("start_date") else []
    )
    for occurrence in occurrences:
        raw = occurrence.get("start_date")
        if not raw:
            continue
        all_day = bool(occurrence.get("all_day", record.get("all_day", False)))
        if len(raw) == 10:
            out.append(Start(date.fromisoformat(raw), aware=False, all_day=True))
            continue
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if value.tzinfo is None and record.get("timezone"):
            value, aware = value.replace(tzinfo=ZoneInfo(record["timezone"])), True
        else:
            aware = value.tzinfo is not None
        out.append(Start(value, aware=aware, all_day=all_day))
    return out


def _date_of(value: datetime | date) -> date:
    return value.date() if isinstance(value, datetime) else value


def _date_right(expected: str, start: Start, zone: ZoneInfo) -> bool:
    return _date_of(start.local(zone)) == date.fromisoformat(expected[:10])


def _time_right(expected: str, start: Start, zone: ZoneInfo) -> bool:
    """The wall time in the site's zone: only a start that states its zone or offset counts; a date-only
    expectation counts only for a record that says all-day (not for a made-up midnight)."""
    if not _date_right(expected, start, zone):
        return False
    if len(expected) == 10:
        return start.all_day
    if start.all_day or not start.aware or not isinstance(start.value, datetime):
        return False
    local = start.local(zone)
    assert isinstance(local, datetime)
    return local.strftime("%H:%M") == expected[11:16]


@dataclass
class Score:
    site: str
    language: str
    expected: int = 0
    found: int = 0
    starts: int = 0
    dates: int = 0
    times_shown: int = 0
    times: int = 0
    recurring: int = 0
    recurring_kept: int = 0
    invented_places: int = 0
    coordinates_given: int = 0
    coordinates_replaced: int = 0
    misses: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.site} | {self.language} | {self.found}/{self.expected} | {self.dates}/{self.starts} "
                f"| {self.times}/{self.times_shown} | {self.recurring_kept}/{self.recurring} "
                f"| {self.invented_places} | {self.coordinates_replaced}/{self.coordinates_given} |")


def _records_for(item: dict[str, Any], records: list[dict[str, Any]], site: Site) -> list[dict[str, Any]]:
    named = [r for r in records if _key(r.get("name")) == _key(item["name"])]
    twins = [i for i in site.items if _key(i["name"]) == _key(item["name"])]
    if len(twins) > 1 and item.get("place"):  # two items of one name: the place tells them apart
        named = [r for r in named if _same_place(item["place"], _place_text(r))]
    return named


def _place_text(record: dict[str, Any]) -> str:
    location = record.get("location") or {}
    return " ".join(filter(None, [location.get("name"), location.get("formattedAddress")]))


def _invented(record: dict[str, Any], item: dict[str, Any] | None) -> bool:
    name = ((record.get("location") or {}).get("name") or "").strip()
    if not name:
        return False
    if _key(name) == _key(record.get("name")):
        return not (item and _same_place(item.get("place"), name))
    if item is None:
        return False
    allowed = [item.get("place"), *item.get("also_acceptable_places", [])]
    return not any(_same_place(place, name) for place in allowed if place)


def score(site: Site, records: list[dict[str, Any]]) -> Score:
    zone = ZoneInfo(site.timezone)
    result = Score(site=site.site, language=site.language, expected=len(site.items))
    matched: dict[int, dict[str, Any]] = {}
    for item in site.items:
        found = _records_for(item, records, site)
        starts = [start for record in found for start in _starts(record)]
        if found:
            result.found += 1
            for record in found:
                matched[id(record)] = item
        else:
            result.misses.append(f"not found: {item['name']}")
        hidden = set(item.get("time_not_shown", []))
        kept_all = True
        for expected in item["starts"]:
            result.starts += 1
            if any(_date_right(expected, start, zone) for start in starts):
                result.dates += 1
            else:
                kept_all = False
                if found:
                    result.misses.append(f"date {expected} of {item['name']}")
            if expected in hidden:
                continue
            result.times_shown += 1
            if any(_time_right(expected, start, zone) for start in starts):
                result.times += 1
            elif found:
                result.misses.append(f"local time {expected} of {item['name']}")
        if len(item["starts"]) > 1:
            result.recurring += 1
            result.recurring_kept += kept_all and bool(found)
        if item.get("coordinates") and found:
            result.coordinates_given += 1
            kept = [((r.get("location") or {}).get("latitude"), (r.get("location") or {}).get("longitude"))
                    for r in found]
            if tuple(item["coordinates"]) not in kept:
                result.coordinates_replaced += 1
                result.misses.append(f"coordinates of {item['name']}: {kept}")
        if item.get("address_contains") and found and not any(
            item["address_contains"] in _place_text(record) for record in found
        ):
            result.misses.append(f"address of {item['name']}")
    for record in records:
        if _invented(record, matched.get(id(record))):
            result.invented_places += 1
            result.misses.append(f"invented place {record['location'].get('name')!r} for {record.get('name')!r}")
    return result


HEADER = ("| site | lang | found | dates right | local times right | recurring kept | invented places "
          "| coordinates replaced |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def totals(scores: list[Score]) -> Score:
    total = Score(site="**all**", language="")
    for s in scores:
        for name in ("expected", "found", "starts", "dates", "times_shown", "times", "recurring", "recurring_kept",
                     "invented_places", "coordinates_given", "coordinates_replaced"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
    return total


def run_all(workdir: Path) -> list[Score]:
    scores = []
    for number, site in enumerate(load_sites()):
        records = run_site(site, workdir / f"site-{number}")
        scores.append(score(site, records))
    return scores


def table(scores: list[Score]) -> str:
    return "\n".join([HEADER, *(s.row() for s in scores), totals(scores).row()])


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="harvest-corpus-") as tmp:
        scores = run_all(Path(tmp))
    print(table(scores))
    if "-v" in sys.argv:
        for s in scores:
            for miss in s.misses:
                print(f"{s.site}: {miss}")


if __name__ == "__main__":
    main()


__all__ = ["Score", "Site", "load_sites", "run_all", "run_site", "score", "serve", "table", "totals"]
