"""The merge step: the enrichment maps joined into each activity (`merged.jsonl`).

Every map has one line per activity in `standardized.jsonl` order, so the merge is a streaming zip checked id by
id: memory does not grow with the number of activities. A missing map (its step failed) leaves that enrichment's
fields empty. Each registered enrichment says what of its line the merged record keeps (`Enrichment.merged`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import repeat
from typing import Any

from harvest.enrich.base import Enrichment
from harvest.enrich.registry import enrichments as registered
from harvest.errors import StorageError
from harvest.models import FileRef
from harvest.pipeline import StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl, write_jsonl
from harvest.storage.keys import run_key


def _lines(store: ObjectStore, ref: FileRef | None) -> Iterator[dict[str, Any] | None]:
    if ref is None:
        return repeat(None)
    return iter_jsonl(store, ref.uri)


def _aligned(activity_id: str, row: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    if row is None:
        return None
    if row.get("id") != activity_id:
        raise StorageError(f"{kind} is out of step with standardized.jsonl at activity {activity_id}")
    return row


def merge_enrichments(
    store: ObjectStore,
    run_id: str,
    standardized: FileRef,
    maps: Mapping[str, FileRef | None],
    enrichments: tuple[Enrichment, ...] | None = None,
) -> StageResult:
    """Join by activity id (asserted line by line) into one record per activity. `maps`: each enrichment's map
    by its name (missing or None: its step failed); `enrichments`: the registry's by default."""
    result = StageResult()
    enrichments = registered() if enrichments is None else enrichments
    refs = [maps.get(e.name) for e in enrichments]

    def merged() -> Iterator[dict[str, Any]]:
        lines = [_lines(store, ref) for ref in refs]
        for activity, *rows in zip(iter_jsonl(store, standardized.uri), *lines):
            result.stats.items_in += 1
            activity_id = activity["id"]
            record = {"activity": activity}
            for enrichment, row in zip(enrichments, rows):
                record[enrichment.merged_key] = enrichment.merged(_aligned(activity_id, row, enrichment.map_kind))
            yield record
        # zip stops at standardized.jsonl's end (its first stream, so no map line was consumed past it): a map
        # with lines left over was made from other input, as out of step as one with a line missing.
        for enrichment, ref, stream in zip(enrichments, refs, lines):
            if ref is not None and next(stream, None) is not None:
                raise StorageError(
                    f"{enrichment.map_kind} has a line more than standardized.jsonl ({result.stats.items_in} "
                    "activities)"
                )

    with timed(result.stats):
        ref = write_jsonl(store, run_key(run_id, "merged", "jsonl"), "merged", merged())
    if ref.records != standardized.records:
        raise StorageError(f"merged {ref.records} records but standardized.jsonl has {standardized.records}")
    result.files.append(ref)
    result.stats.items_out = ref.records
    return result
