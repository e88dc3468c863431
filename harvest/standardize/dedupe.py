"""One activity per id, whatever order the crawl found its copies in.

Policy (issue 11): the id is the normalized name + place (address, else the page's coordinates), so the same
show at the same venue on two dates is ONE activity holding EVERY occurrence, never two rows and never one
date dropped:
- `occurrences` lists each distinct (start, end) pair, earliest first; `start_date`/`end_date` are the
  earliest occurrence's. It is filled only when there is more than one, so single-date activities (nearly all)
  look as they always did.
- Other fields come from one copy chosen without regard to crawl order (the copy whose JSON sorts first),
  with gaps (description, image, source URL, address parts, coordinates) filled from the others in the same
  order, and tags united.
Why merge instead of keeping dates apart: the `activities` table dedupes on name + address (its unique key),
so two rows for one show would collide at import and one date would be lost there.

Copies are spilled to a temporary SQLite file and read back sorted by id, so memory does not grow with the
run and the output order (sorted by id) is itself independent of crawl order. Most activities have one copy:
`json_lines` writes such a copy's stored JSON as it is, without parsing it into a model to serialize it again.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from harvest.models import Activity, Occurrence
from harvest.standardize.standardizer import content_hash

_FILLED = ("description", "image_url", "source_url")
_LOCATION_FILLED = ("street_address", "city", "state_province", "postal_code", "country_code")


def _instant(value: datetime) -> float:
    """A sortable instant; a naive time (the page gave no zone) is read as UTC, only for ordering."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _occurrence_key(occurrence: Occurrence) -> tuple[float, str, str]:
    end = occurrence.end_date.isoformat() if occurrence.end_date else ""
    return _instant(occurrence.start_date), occurrence.start_date.isoformat(), end


def merge_copies(copies: list[Activity]) -> Activity:
    """One activity from copies sharing an id (see the module docstring for the policy)."""
    ordered = sorted(copies, key=lambda a: a.model_dump_json())
    merged = ordered[0].model_copy(deep=True)
    occurrences: dict[tuple[float, str, str], Occurrence] = {}
    for copy in ordered:
        for occurrence in copy.occurrences or (
            [Occurrence(start_date=copy.start_date, end_date=copy.end_date)] if copy.start_date else []
        ):
            occurrences.setdefault(_occurrence_key(occurrence), occurrence)
        for field in _FILLED:
            if getattr(merged, field) is None and getattr(copy, field) is not None:
                setattr(merged, field, getattr(copy, field))
        for field in _LOCATION_FILLED:
            if getattr(merged.location, field) is None and getattr(copy.location, field) is not None:
                setattr(merged.location, field, getattr(copy.location, field))
        if merged.location.latitude is None and copy.location.latitude is not None:
            merged.location.latitude, merged.location.longitude = copy.location.latitude, copy.location.longitude
        merged.tags += [tag for tag in copy.tags if tag not in merged.tags]
    timeline = [occurrences[key] for key in sorted(occurrences)]
    if timeline:
        merged.start_date, merged.end_date = timeline[0].start_date, timeline[0].end_date
    merged.occurrences = timeline if len(timeline) > 1 else []
    merged.content_hash = content_hash(merged)
    return merged


class Deduplicator:
    """Collects standardized activities, then yields one merged activity per id, sorted by id.

    Use as a context manager (the spill file is removed on exit). `duplicates` counts the copies merged away.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="harvest-dedupe-", dir=directory)
        self._db = sqlite3.connect(Path(self._dir.name) / "copies.sqlite")
        # `settled`: the copy is already what merge_copies would make of it alone (no occurrences to order).
        self._db.execute("CREATE TABLE copies (id TEXT NOT NULL, body TEXT NOT NULL, settled INTEGER NOT NULL)")
        self.copies = 0
        self.duplicates = 0
        self.distinct = 0

    def add(self, activity: Activity) -> None:
        self._db.execute(
            "INSERT INTO copies VALUES (?, ?, ?)", (activity.id, activity.model_dump_json(), not activity.occurrences)
        )
        self.copies += 1

    def activities(self) -> Iterator[Activity]:
        """Merged activities in id order (read once, streaming)."""
        for bodies, settled in self._groups():
            yield self._merged(bodies, settled)

    def json_lines(self) -> Iterator[bytes]:
        """The merged activities in id order as JSON lines (read once, streaming): what `activities` yields,
        serialized; a lone copy as stored."""
        for bodies, settled in self._groups():
            if len(bodies) == 1 and settled:
                yield bodies[0].encode() + b"\n"
            else:
                yield self._merged(bodies, settled).model_dump_json().encode() + b"\n"

    def _groups(self) -> Iterator[tuple[list[str], bool]]:
        """Each id's copies (their JSON, in the order that picks the merge's base copy) and whether a lone copy
        is settled; counts them."""
        self._db.execute("CREATE INDEX copies_id ON copies (id)")
        bodies: list[str] = []
        current, settled = None, True
        for identifier, body, copy_settled in self._db.execute(
            "SELECT id, body, settled FROM copies ORDER BY id, body"
        ):
            if bodies and identifier != current:
                yield self._counted(bodies), settled
                bodies = []
            current, settled = identifier, bool(copy_settled)
            bodies.append(body)
        if bodies:
            yield self._counted(bodies), settled

    def _counted(self, bodies: list[str]) -> list[str]:
        self.distinct += 1
        self.duplicates += len(bodies) - 1
        return bodies

    @staticmethod
    def _merged(bodies: list[str], settled: bool) -> Activity:
        group = [Activity.model_validate_json(body) for body in bodies]
        return group[0] if len(group) == 1 and settled else merge_copies(group)

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> Deduplicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
