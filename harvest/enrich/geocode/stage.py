"""The geocode stage: each distinct address geocoded once (`geocoded_map.jsonl`, one line per activity).

Each line says where its coordinates came from (`source`): `page` (the page gave them: never geocoded, so a
page's coordinates are never replaced by a geocoder's guess, and cost no call), `cache` (answered in an earlier
run) or `geocoder` (asked now). Only activities without page coordinates reach the geocoder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from sqlalchemy.engine import Engine

from harvest.enrich.concurrency import ordered_map
from harvest.enrich.geocode.book import PRELOAD_SLICE, AddressBook, addresses_to_geocode, book_for
from harvest.enrich.geocode.cache import cached_geocodes, store_geocodes
from harvest.enrich.geocode.client import Geocoder, is_settled, normalize_address
from harvest.models import FileRef, Geocode
from harvest.pipeline import Chunk, StageResult, timed
from harvest.storage import ObjectStore, write_jsonl
from harvest.storage.keys import run_key

LOOKUP_WINDOW = 256  # records whose answers are read from the book in one query


def _preload(cached: AddressBook, keys: set[str], engine: Engine, provider: str) -> int:
    """Put every address this provider answered in an earlier run into `cached`: no call for those.
    Looked up and written in slices, so only a slice of answers is in memory at once. Returns the hits."""
    hits = 0
    todo = cached.unanswered(keys)
    for start in range(0, len(todo), PRELOAD_SLICE):
        found = cached_geocodes(engine, provider, todo[start: start + PRELOAD_SLICE])
        cached.put_cached(found)
        hits += len(found)
    return hits


def _addresses_and_spellings(
    book: AddressBook, store: ObjectStore, standardized: FileRef, records: Iterable[dict[str, Any]]
) -> set[str]:
    """The normalized addresses of `records` to geocode; their spellings to ask with become known to `book`.

    The geocoder is asked with an address's first spelling in the whole file. Spellings of one address
    ('2 Main Rd' / '2 Main Road') get answers that differ in the echoed text: asking with whichever spelling
    came first in time made the output depend on which chunk's thread, or which process, asked first; the
    first in file order is the same for any chunking, runner and timing.
    """
    keys = {key for key, _ in addresses_to_geocode(records)}
    if keys:
        book.know_spellings(store, standardized)
    return keys


def geocode_addresses(
    store: ObjectStore, run_id: str, standardized: FileRef, geocoder: Geocoder, *, workers: int = 4,
    cache: tuple[Engine, str] | None = None, chunk: Chunk | None = None,
) -> StageResult:
    """Failures leave coordinates empty with the error recorded; they never fail the stage.

    `cache` = (engine, provider name): addresses answered in earlier runs are reused from `geocode_cache`,
    and this run's new successes are added to it, so an unchanged re-run makes no geocoder call.
    With `chunk`, only those lines, into that part of the map.
    """
    result = StageResult()
    kind = chunk.output("geocoded_map") if chunk else "geocoded_map"
    chunk = chunk or Chunk(0, 0, standardized.records)
    book = book_for(run_id, cache[1] if cache else type(geocoder).__name__)
    # Activities with page coordinates are never geocoded, so their addresses are not even looked up.
    keys = _addresses_and_spellings(book, store, standardized, chunk.records(store, standardized.uri))
    distinct = len(keys)
    reused = _preload(book, keys, *cache) if cache else 0
    del keys  # every address of the chunk: not held while its records are geocoded
    lines = _ChunkLines(book, geocoder, result)
    with timed(result.stats):
        rows = ordered_map(lines.ask, lines.windows(chunk.records(store, standardized.uri)), workers=workers,
                           quick=lines.known)
        ref = write_jsonl(store, run_key(run_id, kind, "jsonl"), kind, lines.counted(rows))
    result.files.append(ref)
    if cache:
        _store_settled(book, lines.asked, *cache)
    result.stats.details["geocoder_calls"] = len(lines.asked)
    result.stats.details["geocode_cache_hits"] = reused
    result.stats.details["distinct_addresses"] = distinct
    return result


class _ChunkLines:
    """The map lines of one chunk: each record's answer without a call when one is known (page coordinates, no
    address, or answered already by this run or the cache), else asked of the geocoder through the book.
    Counts into `result` as the lines are written; `asked` collects the addresses this chunk sent."""

    def __init__(self, book: AddressBook, geocoder: Geocoder, result: StageResult) -> None:
        self.book = book
        self.geocoder = geocoder
        self.result = result
        self.asked: set[str] = set()
        self.warned: set[str] = set()
        self.window_answers: dict[str, dict[str, Any]] = {}

    def windows(self, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The chunk's records, a window at a time: the answers already in the book for a window's addresses
        are read in one query before its records go out (`known` looks them up as each record is taken), not
        one locked query per record; only a window's answers are in memory."""
        while window := list(islice(records, LOOKUP_WINDOW)):
            self.window_answers.clear()
            self.window_answers.update(self.book.get_many(key for key, _ in addresses_to_geocode(window)))
            for record in window:
                self.result.stats.items_in += 1
                yield record

    def known(self, record: dict[str, Any]) -> dict[str, object] | None:
        """The row without a call: page coordinates, no address, or one already answered (this run or the cache)."""
        # Standardized lines are Activity dumps already: the address is read, no model is rebuilt per line.
        location = record.get("location") or {}
        address = location.get("formattedAddress")
        if location.get("latitude") is not None and location.get("longitude") is not None:
            details = self.result.stats.details
            details["page_coordinates"] = int(details.get("page_coordinates", 0)) + 1
            return {"id": record["id"], "address": address, "latitude": location["latitude"],
                    "longitude": location["longitude"], "source": "page"}
        if not address:
            return {"id": record["id"], "address": None}
        answer = self.window_answers.get(normalize_address(address))
        return {"id": record["id"], **answer} if answer is not None else None

    def ask(self, record: dict[str, Any]) -> dict[str, object]:
        """The row from the geocoder (unless another chunk asked first), with the address's first spelling."""
        written = record["location"]["formattedAddress"]
        address = self.book.spelling(normalize_address(written)) or written
        return {"id": record["id"], **self.book.ask(self.geocoder, address, self.asked)}

    def counted(self, rows: Iterator[dict[str, object]]) -> Iterator[dict[str, object]]:
        """The rows, counted as they go: a failure warned once per address, however many activities share it."""
        stats = self.result.stats
        for row in rows:
            if row.get("error"):
                stats.skipped += 1
                address = str(row["address"])
                if address not in self.warned:
                    self.warned.add(address)
                    self.result.warn(f"geocode failed for {address!r}: {row['error']}")
            elif row.get("latitude") is not None:
                stats.items_out += 1
            yield row


def _store_settled(book: AddressBook, asked: set[str], engine: Engine, provider: str) -> None:
    """Add this chunk's settled answers to `geocode_cache`, in slices like the preload (a transient failure is
    not cached: the next run asks again)."""
    todo = sorted(asked)
    for start in range(0, len(todo), PRELOAD_SLICE):
        fresh = {}
        for key in todo[start: start + PRELOAD_SLICE]:
            row = book.get(key) or {}
            geocode = Geocode.model_validate({k: v for k, v in row.items() if k != "source"})
            if is_settled(geocode):
                fresh[key] = geocode.model_dump(mode="json")
        store_geocodes(engine, provider, fresh)
