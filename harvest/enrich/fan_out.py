"""How many chunks an enrichment fans out into: the chunk rule applied to the records that will cost a request,
not to every record. Chunks spread requests over tasks (and Dask processes); what the caches answer needs no
spreading, and each chunk costs a task run, a part file and its share of the join. An unchanged re-run's
geocoding is one chunk, not four."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from harvest.db.caches import LOOKUP_CHUNK
from harvest.enrich.geocode.cache import answered_address_keys
from harvest.enrich.geocode.stage import addresses_to_geocode
from harvest.models import FileRef
from harvest.pipeline import chunk_ranges
from harvest.storage import ObjectStore, iter_jsonl


@dataclass(frozen=True)
class NetworkWork:
    """Records of standardized.jsonl that will cost a request: an address no earlier run geocoded with this
    provider (records with page coordinates or no address are never geocoded), and an image URL (fetched, or
    revalidated with a conditional GET when an earlier run stored it: a request either way)."""

    geocode: int
    images: int


def network_work(store: ObjectStore, standardized: FileRef, engine: Engine | None,
                 geocode_provider: str | None) -> NetworkWork:
    """Count it, reading the file once (only locations and image URLs are kept) and asking the cache a slice of
    keys at a time, so memory stays a slice whatever the site's size. `geocode_provider` None: no geocoding.
    Without `engine`, no address counts as cached."""
    geocode = images = 0
    lines = iter_jsonl(store, standardized.uri, parse=_what_costs_a_request)
    while records := list(islice(lines, LOOKUP_CHUNK)):
        images += sum(1 for record in records if record["image_url"])
        if geocode_provider is None:
            continue
        keys = [key for key, _ in addresses_to_geocode(records)]
        answered = answered_address_keys(engine, geocode_provider, set(keys)) if engine is not None and keys else set()
        geocode += sum(1 for key in keys if key not in answered)
    return NetworkWork(geocode=geocode, images=images)


def enrichment_chunks(records: int, work: int, chunk_size: int, max_chunks: int) -> list[tuple[int, int]]:
    """Line ranges over all `records` lines, as many as `work` requests need by the chunk rule (at least one)."""
    count = len(chunk_ranges(work, chunk_size, max_chunks)) if work else 1
    return chunk_ranges(records, 1, count)  # `count` even ranges (fewer only for fewer lines)


def _what_costs_a_request(line: bytes) -> dict[str, Any]:
    record = orjson.loads(line)
    return {"location": record.get("location"), "image_url": record.get("image_url")}
