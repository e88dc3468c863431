"""Stage 3b: geocode each distinct address once (`geocoded_map.jsonl`, one line per activity).

Each line says where its coordinates came from (`source`): `page` (the page gave them: never geocoded, so a
page's coordinates are never replaced by a geocoder's guess, and cost no call), `cache` (answered in an earlier
run) or `geocoder` (asked now). Only activities without page coordinates reach the geocoder.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from harvest.enrich.concurrency import ordered_map
from harvest.enrich.geocode.cache import cached_geocodes, store_geocodes
from harvest.enrich.geocode.client import Geocoder, is_settled, normalize_address
from harvest.models import FileRef, Geocode
from harvest.pipeline import Chunk, StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl, write_jsonl
from harvest.storage.keys import run_key

PRELOAD_SLICE = 1000
LOOKUP_WINDOW = 256  # records whose answers are read from the book in one query


class _OncePerAddress:
    """Each distinct address is sent to the geocoder once, even when several threads ask at the same time.

    One per run and provider in this process (:func:`_book_for`), shared by the run's chunks: chunks run
    side by side, so the `geocode_cache` rows one chunk writes when it ends come too late for the others,
    and an address that appears in several chunks would otherwise be asked once per chunk.

    The answers live in a SQLite file of the book's own, not in a dict: a run of 50,000 addresses held
    ~3 KB of Python objects per address here (the largest part of the flow's peak memory growing with N).
    Locks are striped by address, so their number does not grow with the run either.
    """

    STRIPES = 256

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="harvest-geocodes-")
        self._db = sqlite3.connect(Path(self._dir.name) / "book.db", check_same_thread=False)
        # Scratch data of one run: no journal on disk, no fsync per answer.
        self._db.execute("PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, row TEXT NOT NULL, asked INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE spellings (key TEXT PRIMARY KEY, address TEXT NOT NULL)")
        self._db_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]
        self._spellings_lock = threading.Lock()
        self._spellings_of: tuple[str, str] | None = None  # (uri, sha256) of the file the spellings come from

    def know_spellings(self, store: ObjectStore, standardized: FileRef) -> None:
        """Keep each normalized address's first spelling in the whole of `standardized` (see `spelling`).

        The file is read once per book (per run and process), by the first chunk that asks, and the spellings
        kept in the book's SQLite file: each chunk reading every line before its own made the stage quadratic
        (the last of 4 chunks of 10,000 activities parsed 7,500 lines for its 2,500).
        """
        with self._spellings_lock:
            if self._spellings_of != (standardized.uri, standardized.sha256):
                with self._db_lock, self._db:
                    self._db.execute("DELETE FROM spellings")
                    self._db.executemany(
                        "INSERT OR IGNORE INTO spellings VALUES (?, ?)",
                        addresses_to_geocode(iter_jsonl(store, standardized.uri, parse=_location_only)),
                    )
                self._spellings_of = (standardized.uri, standardized.sha256)

    def spelling(self, key: str) -> str | None:
        """The first spelling of normalized address `key` in the file `know_spellings` read, or None. Asked
        once per geocoder call, not held for the whole chunk: a dict of every spelling of a chunk grew with the
        site (chunks get bigger past HARVEST_ENRICH_MAX_CHUNKS), ~4 MB per chunk at 50,000 activities."""
        with self._db_lock:
            found = self._db.execute("SELECT address FROM spellings WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def get(self, key: str) -> dict[str, Any] | None:
        """The map fields answered for `key` (with their `source`), or None."""
        with self._db_lock:
            found = self._db.execute("SELECT row FROM answers WHERE key = ?", (key,)).fetchone()
        return orjson.loads(found[0]) if found else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """`get` for several keys in one query per PRELOAD_SLICE: key → answer, for the keys answered."""
        wanted = sorted(set(keys))
        found: dict[str, dict[str, Any]] = {}
        with self._db_lock:
            for start in range(0, len(wanted), PRELOAD_SLICE):
                batch = wanted[start: start + PRELOAD_SLICE]
                marks = ",".join("?" * len(batch))
                for key, row in self._db.execute(f"SELECT key, row FROM answers WHERE key IN ({marks})", batch):
                    found[key] = orjson.loads(row)
        return found

    def unanswered(self, keys: Iterable[str]) -> list[str]:
        """The keys with no answer yet, sorted (one query per PRELOAD_SLICE)."""
        wanted = sorted(set(keys))
        answered: set[str] = set()
        with self._db_lock:
            for start in range(0, len(wanted), PRELOAD_SLICE):
                batch = wanted[start: start + PRELOAD_SLICE]
                marks = ",".join("?" * len(batch))
                answered.update(key for (key,) in self._db.execute(
                    f"SELECT key FROM answers WHERE key IN ({marks})", batch))
        return [key for key in wanted if key not in answered]

    def put_cached(self, rows: dict[str, dict[str, Any]]) -> None:
        """Answers from `geocode_cache` (earlier runs): `source` cache; an answer already in the book stays."""
        with self._db_lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, 0)",
                [(key, orjson.dumps({**row, "source": "cache"}).decode()) for key, row in rows.items()],
            )

    def ask(self, geocoder: Geocoder, address: str, asked: set[str]) -> dict[str, Any]:
        """The answer for `address`, calling `geocoder` only if no chunk has yet; `asked` collects the calls."""
        key = normalize_address(address)
        with self._stripes[hash(key) % self.STRIPES]:
            row = self.get(key)
            if row is None:
                answer = geocoder.geocode(address)
                row = {**answer.model_dump(mode="json"), "source": "geocoder"}
                with self._db_lock, self._db:
                    self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, 1)",
                                     (key, orjson.dumps(row).decode()))
                asked.add(key)
            return row

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        self._dir.cleanup()


# Answer books of the last few runs: a run's chunks overlap in time, runs rarely do; a bound keeps a
# long-lived worker's open files flat (a book is a small SQLite file; its memory does not grow with the run).
_BOOKS: OrderedDict[tuple[str, str], _OncePerAddress] = OrderedDict()
_BOOKS_GUARD = threading.Lock()
MAX_BOOKS = 8


def _book_for(run_id: str, provider: str) -> _OncePerAddress:
    with _BOOKS_GUARD:
        book = _BOOKS.get((run_id, provider))
        if book is None:
            book = _BOOKS[(run_id, provider)] = _OncePerAddress()
            while len(_BOOKS) > MAX_BOOKS:
                _BOOKS.popitem(last=False)[1].close()
        else:
            _BOOKS.move_to_end((run_id, provider))
        return book


def _preload(cached: _OncePerAddress, keys: set[str], engine: Engine, provider: str) -> int:
    """Put every address this provider answered in an earlier run into `cached`: no call for those.
    Looked up and written in slices, so only a slice of answers is in memory at once. Returns the hits."""
    hits = 0
    todo = cached.unanswered(keys)
    for start in range(0, len(todo), PRELOAD_SLICE):
        found = cached_geocodes(engine, provider, todo[start: start + PRELOAD_SLICE])
        cached.put_cached(found)
        hits += len(found)
    return hits


def _has_coordinates(record: dict[str, Any]) -> bool:
    location = record.get("location") or {}
    return location.get("latitude") is not None and location.get("longitude") is not None


def addresses_to_geocode(records: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(normalized, as written) for each record that is to be geocoded: an address and no page coordinates."""
    for record in records:
        if not _has_coordinates(record) and (address := (record.get("location") or {}).get("formattedAddress")):
            yield normalize_address(address), address


def _location_only(line: bytes) -> dict[str, Any]:
    """A standardized line reduced to what picks a spelling (its location), so the other fields are not kept."""
    record = orjson.loads(line)
    return {"location": record.get("location")}


def _addresses_and_spellings(
    book: _OncePerAddress, store: ObjectStore, standardized: FileRef, records: Iterable[dict[str, Any]]
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

    def records() -> Iterator[dict[str, Any]]:
        return chunk.records(store, standardized.uri)

    # Activities with page coordinates are never geocoded, so their addresses are not even looked up.
    cached = _book_for(run_id, cache[1] if cache else type(geocoder).__name__)
    keys = _addresses_and_spellings(cached, store, standardized, records())
    distinct = len(keys)
    reused = _preload(cached, keys, *cache) if cache else 0
    del keys  # every address of the chunk: not held while its records are geocoded
    asked: set[str] = set()  # the addresses this chunk sent to the geocoder

    def known(record: dict[str, Any]) -> dict[str, object] | None:
        """The row without a call: page coordinates, no address, or one already answered (this run or the cache)."""
        # Standardized lines are Activity dumps already: the address is read, no model is rebuilt per line.
        location = record.get("location") or {}
        address = location.get("formattedAddress")
        if location.get("latitude") is not None and location.get("longitude") is not None:
            result.stats.details["page_coordinates"] = int(result.stats.details.get("page_coordinates", 0)) + 1
            return {"id": record["id"], "address": address, "latitude": location["latitude"],
                    "longitude": location["longitude"], "source": "page"}
        if not address:
            return {"id": record["id"], "address": None}
        answer = window_answers.get(normalize_address(address))
        return {"id": record["id"], **answer} if answer is not None else None

    def one(record: dict[str, Any]) -> dict[str, object]:
        written = record["location"]["formattedAddress"]
        address = cached.spelling(normalize_address(written)) or written
        return {"id": record["id"], **cached.ask(geocoder, address, asked)}

    window_answers: dict[str, dict[str, Any]] = {}

    def activities() -> Iterator[dict[str, Any]]:
        """The chunk's records, a window at a time: the answers already in the book for a window's addresses
        are read in one query before its records go out (`known` looks them up as each record is taken), not
        one locked query per record; only a window's answers are in memory."""
        pending = records()
        while window := list(islice(pending, LOOKUP_WINDOW)):
            window_answers.clear()
            window_answers.update(cached.get_many(key for key, _ in addresses_to_geocode(window)))
            for record in window:
                result.stats.items_in += 1
                yield record

    warned: set[str] = set()

    def rows() -> Iterator[dict[str, object]]:
        for row in ordered_map(one, activities(), workers=workers, quick=known):
            if row.get("error"):
                result.stats.skipped += 1
                address = str(row["address"])
                if address not in warned:  # one warning per address, however many activities share it
                    warned.add(address)
                    result.warn(f"geocode failed for {address!r}: {row['error']}")
            elif row.get("latitude") is not None:
                result.stats.items_out += 1
            yield row

    with timed(result.stats):
        ref = write_jsonl(store, run_key(run_id, kind, "jsonl"), kind, rows())
    result.files.append(ref)
    if cache:
        todo = sorted(asked)
        for start in range(0, len(todo), PRELOAD_SLICE):  # in slices, like the preload
            fresh = {}
            for key in todo[start: start + PRELOAD_SLICE]:
                row = cached.get(key) or {}
                geocode = Geocode.model_validate({k: v for k, v in row.items() if k != "source"})
                if is_settled(geocode):
                    fresh[key] = geocode.model_dump(mode="json")
            store_geocodes(cache[0], cache[1], fresh)
    result.stats.details["geocoder_calls"] = len(asked)
    result.stats.details["geocode_cache_hits"] = reused
    result.stats.details["distinct_addresses"] = distinct
    return result
