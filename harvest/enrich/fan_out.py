"""How many chunks each chunked enrichment fans out into: the chunk rule applied to the records that will cost a
request, not to every record. Chunks spread requests over tasks (and Dask processes); what the caches answer
needs no spreading, and each chunk costs a task run, a part file and its share of the join. An unchanged re-run's
geocoding is one chunk, not four."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

import orjson

from harvest.db.caches import LOOKUP_CHUNK
from harvest.enrich.base import WorkCount
from harvest.models import FileRef
from harvest.pipeline import chunk_ranges
from harvest.storage import ObjectStore, iter_jsonl


def network_work(store: ObjectStore, standardized: FileRef, counters: Mapping[str, WorkCount | None],
                 fields: Iterable[str]) -> dict[str, int]:
    """Records of standardized.jsonl that will cost a request, per enrichment (its `work`; None: none will).

    The file is read once, keeping only `fields` of each line (the enrichments' `work_fields`), and each counter
    sees a slice of LOOKUP_CHUNK records at a time (asking a cache a slice of keys at once), so memory stays a
    slice whatever the site's size."""
    wanted = tuple(dict.fromkeys(fields))
    counts = dict.fromkeys(counters, 0)

    def kept(line: bytes) -> dict[str, Any]:
        record = orjson.loads(line)
        return {name: record.get(name) for name in wanted}

    lines = iter_jsonl(store, standardized.uri, parse=kept)
    while records := list(islice(lines, LOOKUP_CHUNK)):
        for name, count in counters.items():
            if count is not None:
                counts[name] += count(records)
    return counts


def enrichment_chunks(records: int, work: int, chunk_size: int, max_chunks: int) -> list[tuple[int, int]]:
    """Line ranges over all `records` lines, as many as `work` requests need by the chunk rule (at least one)."""
    count = len(chunk_ranges(work, chunk_size, max_chunks)) if work else 1
    return chunk_ranges(records, 1, count)  # `count` even ranges (fewer only for fewer lines)
