"""Stage 3b: geocode each distinct address once (`geocoded_map.jsonl`, one line per activity)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

from harvest.db.caches import cached_geocodes, store_geocodes
from harvest.geocode import Geocoder, is_settled, normalize_address
from harvest.models import FileRef, Geocode
from harvest.stages.common import Chunk, StageResult, timed
from harvest.stages.concurrency import ordered_map
from harvest.storage import ObjectStore, write_jsonl
from harvest.storage.keys import run_key


class _OncePerAddress:
    """Each distinct address is sent to the geocoder once, even when several threads ask at the same time.

    One per run and provider in this process (:func:`_book_for`), shared by the run's chunks: chunks run
    side by side, so the `geocode_cache` rows one chunk writes when it ends come too late for the others,
    and an address that appears in several chunks would otherwise be asked once per chunk.
    """

    def __init__(self) -> None:
        self.results: dict[str, Geocode] = {}
        self.locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()

    def ask(self, geocoder: Geocoder, address: str, asked: set[str]) -> Geocode:
        """The answer for `address`, calling `geocoder` only if no chunk has yet; `asked` collects the calls."""
        key = normalize_address(address)
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.results:
                self.results[key] = geocoder.geocode(address)
                asked.add(key)
            return self.results[key]


# Answer books of the last few runs: a run's chunks overlap in time, runs rarely do; a bound keeps a
# long-lived worker's memory flat (a book holds one small Geocode per distinct address of its run).
_BOOKS: OrderedDict[tuple[str, str], _OncePerAddress] = OrderedDict()
_BOOKS_GUARD = threading.Lock()
MAX_BOOKS = 8


def _book_for(run_id: str, provider: str) -> _OncePerAddress:
    with _BOOKS_GUARD:
        book = _BOOKS.get((run_id, provider))
        if book is None:
            book = _BOOKS[(run_id, provider)] = _OncePerAddress()
            while len(_BOOKS) > MAX_BOOKS:
                _BOOKS.popitem(last=False)
        else:
            _BOOKS.move_to_end((run_id, provider))
        return book


def _preload(cached: _OncePerAddress, keys: set[str], engine: Engine, provider: str) -> set[str]:
    """Put every address this provider answered in an earlier run into `cached`: no call for those."""
    hits = cached_geocodes(engine, provider, keys - set(cached.results))
    cached.results.update({key: Geocode.model_validate(value) for key, value in hits.items()})
    return set(hits)


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

    keys = {
        normalize_address(address)
        for record in records()
        if (address := (record.get("location") or {}).get("formattedAddress"))
    }
    cached = _book_for(run_id, cache[1] if cache else type(geocoder).__name__)
    reused = _preload(cached, keys, *cache) if cache else set()
    asked: set[str] = set()  # the addresses this chunk sent to the geocoder

    answers: dict[str, dict[str, object]] = {}  # normalized address → its map fields, dumped once

    def known(record: dict[str, Any]) -> dict[str, object] | None:
        """The row without a call: no address, or one already answered (this run or the cache)."""
        # Standardized lines are Activity dumps already: the address is read, no model is rebuilt per line.
        address = (record.get("location") or {}).get("formattedAddress")
        if not address:
            return {"id": record["id"], "address": None}
        key = normalize_address(address)
        if key not in answers and key in cached.results:
            answers[key] = cached.results[key].model_dump(mode="json")
        return {"id": record["id"], **answers[key]} if key in answers else None

    def one(record: dict[str, Any]) -> dict[str, object]:
        address = record["location"]["formattedAddress"]
        return {"id": record["id"], **cached.ask(geocoder, address, asked).model_dump(mode="json")}

    def activities() -> Iterator[dict[str, Any]]:
        for record in records():
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
        fresh = {
            key: geocode.model_dump(mode="json") for key in asked
            if is_settled(geocode := cached.results[key])
        }
        store_geocodes(cache[0], cache[1], fresh)
    result.stats.details["geocoder_calls"] = len(asked)
    result.stats.details["geocode_cache_hits"] = len(reused)
    result.stats.details["distinct_addresses"] = len(keys)
    return result
