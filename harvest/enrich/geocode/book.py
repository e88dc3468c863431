"""The run's book of geocoder answers: each distinct address is sent to the geocoder once per run, whichever
chunk (thread) asks first, and the answers are kept in a SQLite scratch file, not in memory."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from harvest.enrich.geocode.client import Geocoder, normalize_address
from harvest.models import FileRef
from harvest.storage import ObjectStore, iter_jsonl

PRELOAD_SLICE = 1000


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


class AddressBook:
    """Each distinct address is sent to the geocoder once, even when several threads ask at the same time.

    One per run and provider in this process (:func:`book_for`), shared by the run's chunks: chunks run
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
_BOOKS: OrderedDict[tuple[str, str], AddressBook] = OrderedDict()
_BOOKS_GUARD = threading.Lock()
MAX_BOOKS = 8


def book_for(run_id: str, provider: str) -> AddressBook:
    with _BOOKS_GUARD:
        book = _BOOKS.get((run_id, provider))
        if book is None:
            book = _BOOKS[(run_id, provider)] = AddressBook()
            while len(_BOOKS) > MAX_BOOKS:
                _BOOKS.popitem(last=False)[1].close()
        else:
            _BOOKS.move_to_end((run_id, provider))
        return book
