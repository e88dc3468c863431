"""The diff of two digests (harvest.diff.compare): what it reports, and the previous digest held compactly."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson

from harvest.diff.compare import DIFF_FIELDS, DiffCounts, diff_lines, digest_line, load_digest


def _record(activity_id: str, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": activity_id, "name": f"Activity {activity_id}", "description": "Fun",
                              "location": {"city": "Springfield", "latitude": 1.0, "longitude": 2.0},
                              "tags": ["kids"], "embedding": None}
    for key, value in changes.items():
        if key.startswith("location_"):
            record["location"] = {**record["location"], key.removeprefix("location_"): value}
        else:
            record[key] = value
    return record


def test_added_removed_changed_and_unchanged_are_told_apart() -> None:
    old = [digest_line(_record(i)) for i in ("a", "b", "c")]
    new = [digest_line(r) for r in (_record("a"), _record("b", description="Other", location_city="Shelbyville"),
                                    _record("d"))]
    counts = DiffCounts()
    changes = list(diff_lines(load_digest(old), new, counts))
    assert counts.as_dict() == {"added": 1, "removed": 1, "changed": 1, "unchanged": 1}
    assert {"change": "changed", "id": "b", "name": "Activity b", "fields": ["description", "location.city"]} in changes
    assert {"change": "added", "id": "d", "name": "Activity d"} in changes
    assert {"change": "removed", "id": "c", "name": "Activity c"} in changes


def test_the_previous_digest_is_held_in_about_500_bytes_per_activity() -> None:
    stored = [orjson.dumps({"id": f"id-{i:08d}", "name": f"Activity {i}",
                            "h": [f"{i * 7 + k:012x}" for k in range(len(DIFF_FIELDS))]}) for i in range(5000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = load_digest(orjson.loads(line) for line in stored)  # read as digest_lines reads it: line by line
        per_activity = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_activity < 700, per_activity  # a tuple of 19 hash strings held ~1,540 bytes
