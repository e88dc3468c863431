"""Stages 4 and 5: merge the enrichment maps into each activity (`merged.jsonl`), then write the final
records in the `activities` schema with their vectors (`final.jsonl`).

Every map has one line per activity in `standardized.jsonl` order, so the merge is a streaming zip: memory
does not grow with the number of activities. A missing map (its stage failed) leaves those fields empty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import repeat
from typing import Any

import numpy as np
import orjson

from harvest.diff.compare import digest_line
from harvest.enrich.embeddings.matrix import EmbeddingStream
from harvest.errors import StorageError
from harvest.models import FileRef
from harvest.pipeline import StageResult, timed
from harvest.storage import ObjectStore, iter_jsonl, staged_file, write_jsonl
from harvest.storage.keys import digest_key, run_key


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
    images: FileRef | None,
    geocodes: FileRef | None,
    embeddings_index: FileRef | None,
) -> StageResult:
    """Join by activity id (asserted line by line) into one record per activity."""
    result = StageResult()

    def merged() -> Iterator[dict[str, Any]]:
        maps = {"images_map": _lines(store, images), "geocoded_map": _lines(store, geocodes),
                "embeddings_index": _lines(store, embeddings_index)}
        streams = zip(iter_jsonl(store, standardized.uri), *maps.values())
        for activity, image, geocode, embedding in streams:
            result.stats.items_in += 1
            activity_id = activity["id"]
            image = _aligned(activity_id, image, "images_map")
            geocode = _aligned(activity_id, geocode, "geocoded_map")
            embedding = _aligned(activity_id, embedding, "embeddings_index")
            yield {
                "activity": activity,
                "image": image if image and image.get("uri") else None,
                "geocode": geocode if geocode and geocode.get("latitude") is not None else None,
                "embedding_row": embedding["row"] if embedding and embedding.get("ok") else None,
            }
        # zip stops at standardized.jsonl's end (its first stream, so no map line was consumed past it): a map
        # with lines left over was made from other input, as out of step as one with a line missing.
        for kind, ref in (("images_map", images), ("geocoded_map", geocodes), ("embeddings_index", embeddings_index)):
            if ref is not None and next(maps[kind], None) is not None:
                raise StorageError(
                    f"{kind} has a line more than standardized.jsonl ({result.stats.items_in} activities)"
                )

    with timed(result.stats):
        ref = write_jsonl(store, run_key(run_id, "merged", "jsonl"), "merged", merged())
    if ref.records != standardized.records:
        raise StorageError(f"merged {ref.records} records but standardized.jsonl has {standardized.records}")
    result.files.append(ref)
    result.stats.items_out = ref.records
    return result


def final_record(merged: dict[str, Any], vector: list[float] | np.ndarray | orjson.Fragment | None) -> dict[str, Any]:
    """One line of `final.jsonl`: the `activities` schema (`write_jsonl` serializes an array `vector` as a list,
    and a Fragment, the vector's JSON already written, as is)."""
    activity = merged["activity"]
    location = activity.get("location") or {}
    geocode = merged.get("geocode") or {}
    image = merged.get("image")
    # The page's own coordinates win, even when the geocode map is missing (its stage failed): they are data.
    source: str | None
    if location.get("latitude") is not None and location.get("longitude") is not None:
        latitude, longitude, source = location["latitude"], location["longitude"], "page"
    elif geocode:
        latitude, longitude, source = geocode.get("latitude"), geocode.get("longitude"), geocode.get("source")
        source = source or "geocoder"  # maps written before sources were recorded
    else:
        latitude = longitude = source = None
    return {
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
            "latitude": latitude,
            "longitude": longitude,
            "coordinates_source": source,
            "place_id": geocode.get("place_id") if source != "page" else None,
            "geocoded_address": geocode.get("formatted_address") if source != "page" else None,
        },
        "start_date": activity.get("start_date"),
        "end_date": activity.get("end_date"),
        # Every date of an activity found on several (start_date/end_date are the earliest); empty for one date.
        "occurrences": activity.get("occurrences") or [],
        "tags": activity.get("tags") or [],
        "embedding": vector,
        "image": {"uri": image["uri"], "width": image["width"], "height": image["height"]} if image else None,
        "source_url": activity.get("source_url"),
        "content_hash": activity.get("content_hash"),
    }


def _rounded(row: np.ndarray) -> np.ndarray:
    """float32 values rounded to 8 decimals (below float32's precision for the values embeddings hold), so
    each shows as ~11 characters in JSON instead of float64's 20-digit expansion."""
    return np.round(row.astype(np.float64), 8)


def write_final_records(store: ObjectStore, run_id: str, merged: FileRef, embeddings: FileRef | None) -> StageResult:
    """Stream the merge and the vectors (read forward as they download, see EmbeddingStream) into `final.jsonl`,
    with, in the same pass, the run's digest (`digests/<run_id>.jsonl`, see harvest/diff/compare.py) and the import's
    policy index (`final_index.jsonl`: each final line without its vector, plus the vector's sha256; see
    harvest/import_/stage.py), so an import decides which rows it writes without reading 6 kB of floats a line."""
    result = StageResult()

    def records(matrix: EmbeddingStream | None, digest: Any, index: Any) -> Iterator[dict[str, Any]]:
        for row in iter_jsonl(store, merged.uri):
            result.stats.items_in += 1
            row_number = row.get("embedding_row")
            vector = _rounded(matrix.row(row_number)) if matrix is not None and row_number is not None else None
            # The vector's JSON once: spliced into the final line as is (orjson.Fragment) and hashed for the index.
            text = orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY) if vector is not None else None
            if text is not None:
                result.stats.details["with_embedding"] = int(result.stats.details.get("with_embedding", 0)) + 1
            record = final_record(row, orjson.Fragment(text) if text is not None else None)
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
        if embeddings is None:
            files = write(None)
        else:
            handle = store.open_read(store.key_for(embeddings.uri))
            with EmbeddingStream(handle, name=embeddings.uri) as matrix:
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
