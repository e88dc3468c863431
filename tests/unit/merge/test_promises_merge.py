"""The merge's promise: every map has one line per activity in `standardized.jsonl` order, and the merge
checks that id by id. A map out of step (lines swapped, one missing, one extra) must stop the merge with a
StorageError naming the map, never silently pair one activity with another's image, place or vector."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvest.errors import StorageError
from harvest.merge.stage import merge_enrichments
from harvest.models import FileRef
from harvest.storage import LocalStore, iter_jsonl, write_jsonl

RUN = "run-merge"
IDS = ["a1", "b2", "c3", "d4"]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _standardized(store: LocalStore) -> FileRef:
    return write_jsonl(store, f"runs/{RUN}/standardized.jsonl", "standardized",
                       [{"id": i, "name": f"Activity {i}"} for i in IDS])


def _geocodes(store: LocalStore, ids: list[str]) -> FileRef:
    return write_jsonl(store, f"runs/{RUN}/geocoded_map.jsonl", "geocoded_map",
                       [{"id": i, "address": f"{i} Main Rd", "latitude": -37.0 - n, "longitude": 145.0}
                        for n, i in enumerate(ids)])


def _images(store: LocalStore, ids: list[str]) -> FileRef:
    return write_jsonl(store, f"runs/{RUN}/images_map.jsonl", "images_map",
                       [{"id": i, "uri": f"file:///images/{i}.webp", "width": 10, "height": 5} for i in ids])


def test_aligned_maps_are_joined_activity_by_activity(store: LocalStore) -> None:
    standardized = _standardized(store)
    result = merge_enrichments(store, RUN, standardized, {"images": _images(store, IDS), "geocode": _geocodes(store, IDS)})
    merged = list(iter_jsonl(store, result.file("merged").uri))
    assert [m["activity"]["id"] for m in merged] == IDS
    assert [m["geocode"]["id"] for m in merged] == IDS and [m["image"]["id"] for m in merged] == IDS
    assert all(m["embedding_row"] is None for m in merged)  # no embeddings map: those fields stay empty


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["a1", "c3", "b2", "d4"], "geocoded_map is out of step with standardized.jsonl at activity b2"),
        (["a1", "b2", "c3"], "merged 3 records but standardized.jsonl has 4"),
        (["a1", "b2", "c3", "d4", "e5"], "geocoded_map has a line more than standardized.jsonl"),
    ],
    ids=["swapped", "one-missing", "one-extra"],
)
def test_a_map_out_of_step_stops_the_merge_and_names_it(store: LocalStore, ids: list[str], message: str) -> None:
    standardized = _standardized(store)
    with pytest.raises(StorageError, match=message):
        merge_enrichments(store, RUN, standardized, {"images": _images(store, IDS), "geocode": _geocodes(store, ids)})
