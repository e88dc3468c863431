"""Benchmark inputs: the real fixture activities, multiplied and varied to any size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parents[1] / "testkit" / "data" / "melbourne-activities.json"


def varied_activities(count: int) -> Iterator[dict[str, Any]]:
    """`count` raw activities: fixture records cycled, each copy made distinct (name and street number)
    so ids, geocodes and embeddings are all different work. Image URLs are dropped: the fixture's CDN is
    not reachable here, and image work is measured on the demo site instead."""
    base = json.loads(FIXTURE.read_text())
    for index in range(count):
        record = dict(base[index % len(base)])
        copy = index // len(base)
        location = dict(record.get("location") or {})
        if copy:
            record["name"] = f"{record['name']} (session {copy})"
            street = location.get("street_address") or "Main Rd"
            location["street_address"] = f"{copy} {street}"
            location["formattedAddress"] = ", ".join(
                part
                for part in (location["street_address"], location.get("city"), location.get("country_code"))
                if part
            )
        record["location"] = location or None
        record.pop("imageURL", None)
        yield record


def write_input(path: Path, count: int) -> Path:
    with open(path, "w") as out:
        for record in varied_activities(count):
            out.write(json.dumps(record) + "\n")
    return path
