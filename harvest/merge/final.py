"""The final step: the merged records in the `activities` schema with their vectors (`final.jsonl`), and in
the same pass the run's digest (for the diff) and the import's policy index.

The content fields are written here; each enrichment fills its own (`Enrichment.finish`), so a new enrichment
needs no edit here. The vectors are streamed from the matrix of the enrichment that stores them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from harvest.diff.compare import digest_line
from harvest.enrich.base import Enrichment
from harvest.enrich.embeddings.matrix import EmbeddingStream
from harvest.enrich.registry import enrichments as registered
from harvest.enrich.registry import vectors as vectors_of
from harvest.models import FileRef
from harvest.pipeline import StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl, staged_file, write_jsonl
from harvest.storage.keys import digest_key, run_key


def final_record(merged: dict[str, Any], vector: list[float] | np.ndarray | orjson.Fragment | None,
                 enrichments: Iterable[Enrichment] | None = None) -> dict[str, Any]:
    """One line of `final.jsonl`: the `activities` schema (`write_jsonl` serializes an array `vector` as a list,
    and a Fragment, the vector's JSON already written, as is). `enrichments` fill their fields from the merged
    line (default: the registry's)."""
    activity = merged["activity"]
    location = activity.get("location") or {}
    # The page's own coordinates win, even when the geocode map is missing (its stage failed): they are data.
    on_page = location.get("latitude") is not None and location.get("longitude") is not None
    record = {
        "id": activity["id"],
        "name": activity["name"],
        "description": activity.get("description"),
        "urgency": activity.get("urgency", "medium"),
        "is_public": activity.get("is_public", True),
        "location": {
            "name": location.get("name"),
            "formatted_address": location.get("formattedAddress"),
            "street_address": location.get("street_address"),
            "city": location.get("city"),
            "state_province": location.get("state_province"),
            "postal_code": location.get("postal_code"),
            "country_code": location.get("country_code"),
            "latitude": location["latitude"] if on_page else None,
            "longitude": location["longitude"] if on_page else None,
            "coordinates_source": "page" if on_page else None,
            "place_id": None,  # the slots an enrichment fills (geocoding: coordinates, place id, address)
            "geocoded_address": None,
        },
        "start_date": activity.get("start_date"),
        "end_date": activity.get("end_date"),
        # The venue's IANA zone, the local wall time and the UTC instant (issue 26): start_date carries the zone's
        # offset; a date without a time is all_day (start_local is then just the date).
        "timezone": activity.get("timezone"),
        "all_day": bool(activity.get("all_day", False)),
        "start_local": _local(activity.get("start_date"), activity.get("all_day", False)),
        "start_utc": _utc(activity.get("start_date")),
        "end_local": _local(activity.get("end_date"), False),
        "end_utc": _utc(activity.get("end_date")),
        # Every date of an activity found on several (start_date/end_date are the earliest); empty for one date.
        "occurrences": activity.get("occurrences") or [],
        "tags": activity.get("tags") or [],
        "embedding": vector,
        "image": None,  # images fill it
        "source_url": activity.get("source_url"),
        "item_url": activity.get("item_url"),  # the item's own URL: which source is first-party (import provenance)
        "content_hash": activity.get("content_hash"),
    }
    for enrichment in registered() if enrichments is None else enrichments:
        enrichment.finish(record, merged.get(enrichment.merged_key))
    return record


def _local(value: str | None, all_day: bool) -> str | None:
    """The wall time as written in the venue's zone, without the offset ("2024-02-01T18:30:00"; a date if all-day)."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment.date().isoformat() if all_day else moment.replace(tzinfo=None).isoformat()


def _utc(value: str | None) -> str | None:
    """The UTC instant ("…Z"); None for a time whose zone nobody knows (never guessed as UTC)."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment.tzinfo else None


def _rounded(row: np.ndarray) -> np.ndarray:
    """float32 values rounded to 8 decimals (below float32's precision for the values embeddings hold), so
    each shows as ~11 characters in JSON instead of float64's 20-digit expansion."""
    return np.round(row.astype(np.float64), 8)


def write_final_records(store: ObjectStore, run_id: str, merged: FileRef, vectors: FileRef | None) -> StageResult:
    """Stream the merge and the vectors (`vectors`: read forward as they download, see EmbeddingStream) into
    `final.jsonl`, with, in the same pass, the run's digest (`digests/<run_id>.jsonl`, see harvest/diff/compare.py)
    and the import's policy index (`final_index.jsonl`: each final line without its vector, plus the vector's
    sha256; see harvest/import_/stage.py), so an import decides which rows it writes without reading 6 kB of
    floats a line."""
    result = StageResult()
    enrichments = registered()
    source = vectors_of()
    row_key = source.merged_key if source is not None else None

    def records(matrix: EmbeddingStream | None, digest: Any, index: Any) -> Iterator[dict[str, Any]]:
        for row in iter_jsonl(store, merged.uri):
            result.stats.items_in += 1
            row_number = row.get(row_key) if row_key else None
            vector = _rounded(matrix.row(row_number)) if matrix is not None and row_number is not None else None
            # The vector's JSON once: spliced into the final line as is (orjson.Fragment) and hashed for the index.
            text = orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY) if vector is not None else None
            if text is not None:
                result.stats.details["with_embedding"] = int(result.stats.details.get("with_embedding", 0)) + 1
            record = final_record(row, orjson.Fragment(text) if text is not None else None, enrichments)
            if record.get("id"):
                digest.write(_line(digest_line(record, embedding=vector)))
                digest.records += 1
            index.write(_line(policy_line(record, text)))
            index.records += 1
            yield record

    def write(matrix: EmbeddingStream | None) -> list[FileRef]:
        with staged_file(store, digest_key(run_id), "digest", "application/x-ndjson") as (digest, digest_out), \
                staged_file(store, run_key(run_id, "final_index", "jsonl"), "final_index",
                            "application/x-ndjson") as (index, index_out):
            ref = write_jsonl(store, run_key(run_id, "final", "jsonl"), "final_jsonl", records(matrix, digest, index))
        return [ref, digest_out[0], index_out[0]]

    with timed(result.stats):
        if vectors is None:
            files = write(None)
        else:
            handle = store.open_read(store.key_for(vectors.uri))
            with EmbeddingStream(handle, name=vectors.uri) as matrix:
                files = write(matrix)
    result.files += files
    result.stats.items_out = files[0].records
    return result


def policy_line(record: dict[str, Any], vector_text: bytes | None) -> dict[str, Any]:
    """A final record's line in `final_index.jsonl`: the record without its vector, and the sha256 of the
    vector's JSON text as written in final.jsonl (what `activities.embedding_hash` holds)."""
    return {**record, "embedding": None,
            "embedding_sha256": hashlib.sha256(vector_text).hexdigest() if vector_text is not None else None}


def _line(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document) + b"\n"
