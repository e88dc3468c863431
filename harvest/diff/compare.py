"""What changed between two runs: added, removed, changed (with the changed fields) and unchanged activities.

A run's final JSONL is deleted after a clean auto-import, so each run also stores a small *digest*
(`digests/<run_id>.jsonl`): per activity id, its name and a short hash of every field. Two digests are
enough to say which fields changed, without keeping the records themselves. The digest outlives the run's
other files until a newer run of the same URL supersedes it (the sweep deletes it then).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from harvest.models import FileRef
from harvest.storage import ObjectStore, iter_jsonl, write_jsonl
from harvest.storage.keys import digest_key as digest_key  # re-exported: callers ask harvest.diff.compare

if TYPE_CHECKING:
    import numpy as np

# Fields of a final record that a reviewer cares about; `location` is split so an address edit and a
# geocode edit are told apart.
DIFF_FIELDS = (
    "name", "description", "urgency", "is_public", "location.name", "location.formatted_address",
    "location.street_address", "location.city", "location.state_province", "location.postal_code",
    "location.country_code", "location.latitude", "location.longitude", "start_date", "end_date", "tags",
    "image", "embedding", "source_url",
)


@dataclass
class DiffCounts:
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# One encoder for every field: json.dumps with these options builds a new JSONEncoder per call, which cost
# more than the hashing (18 fields per activity). Same bytes, so digests stored earlier still compare.
_FIELD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _short_hash(value: Any) -> str:
    if value is None or isinstance(value, (str, bool, int, float)):
        return _scalar_hash(type(value).__name__, value)  # city, country, urgency, ...: the same few values
    return _hash(value)


def _hash(value: Any) -> str:
    encoded = _FIELD_ENCODER.encode(value).encode()
    return hashlib.sha256(encoded).hexdigest()[:12]


@lru_cache(maxsize=8192)
def _scalar_hash(kind: str, value: Any) -> str:  # `kind` (the type's name) keeps True, 1 and 1.0 apart
    return _hash(value)


def vector_hash(vector: np.ndarray | list[float] | None) -> str:
    """The embedding's hash from its float64 bytes: the same for the array the final writer holds and for
    the list read back from final.jsonl (a JSON float round-trips exactly), and far cheaper than JSON."""
    if vector is None:
        return _short_hash(None)
    import numpy as np  # here: `harvest runs diff` reads digests and never hashes a vector (~0.1 CPU-s)

    return hashlib.sha256(np.asarray(vector, dtype=np.float64).tobytes()).hexdigest()[:12]


def digest_line(record: dict[str, Any], *, embedding: np.ndarray | None = None) -> dict[str, Any]:
    """One activity's digest: id, name, and a 48-bit hash per field (enough to see an edit, not to store it).

    `embedding`: the record's vector as an array, when the caller has it (then `record["embedding"]` is
    not read)."""
    location = record.get("location")
    sources = (record, location if isinstance(location, dict) else {})
    hashes = [
        _short_hash(sources[depth].get(key)) if key != "embedding" or depth
        else vector_hash(embedding if embedding is not None else record.get("embedding"))
        for depth, key in _FIELD_KEYS
    ]
    return {"id": record["id"], "name": record.get("name"), "h": hashes}


# DIFF_FIELDS as (0, key) for a top-level field and (1, key) for one of `location` (a missing or non-dict
# location reads as empty): paths split once, not for every field of every activity.
_FIELD_KEYS = tuple(
    (1, field.split(".", 1)[1]) if field.startswith("location.") else (0, field) for field in DIFF_FIELDS
)


_SEPARATOR = "|"  # never in a hex digest


def load_digest(lines: Iterable[dict[str, Any]]) -> dict[str, tuple[str | None, str]]:
    """id → (name, field hashes joined in one string). One string, not a tuple of 19: a tuple of hash strings
    held ~1.3 KB of objects per activity (65 MB at 50,000, the re-run's peak memory growing with the site);
    joined, ~0.3 KB."""
    return {
        line["id"]: (line.get("name"), _SEPARATOR.join(line["h"])) for line in lines if "id" in line and "h" in line
    }


def diff_lines(
    old: dict[str, tuple[str | None, str]], new_lines: Iterable[dict[str, Any]], counts: DiffCounts
) -> Iterator[dict[str, Any]]:
    """Yield one change per added, removed or changed activity (unchanged ones are only counted).

    `old` is consumed: what is left after the new digest has been read is what was removed.
    """
    for line in new_lines:
        activity_id = line.get("id")
        if not activity_id or "h" not in line:
            continue
        before = old.pop(activity_id, None)
        if before is None:
            counts.added += 1
            yield {"change": "added", "id": activity_id, "name": line.get("name")}
            continue
        hashes = before[1].split(_SEPARATOR) if before[1] else []
        fields = [f for f, a, b in zip(DIFF_FIELDS, hashes, line["h"], strict=False) if a != b]
        if fields:
            counts.changed += 1
            yield {"change": "changed", "id": activity_id, "name": line.get("name"), "fields": fields}
        else:
            counts.unchanged += 1
    for activity_id, (name, _) in sorted(old.items()):
        counts.removed += 1
        yield {"change": "removed", "id": activity_id, "name": name}


def digest_lines(store: ObjectStore, file: FileRef | dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A run's digest, read from its digest file or (for runs older than digests) computed from its final JSONL."""
    kind = file.kind if isinstance(file, FileRef) else file["kind"]
    uri = file.uri if isinstance(file, FileRef) else file["uri"]
    lines = iter_jsonl(store, uri)
    return lines if kind == "digest" else (digest_line(r) for r in lines if r.get("id"))


def write_diff(
    store: ObjectStore, key: str, old: Iterable[dict[str, Any]] | None, new: Iterable[dict[str, Any]]
) -> tuple[FileRef, DiffCounts]:
    """Compare two digests (None: no previous run, everything is added) and store the changes as JSONL."""
    counts = DiffCounts()
    ref = write_jsonl(store, key, "diff", diff_lines(load_digest(old or []), new, counts))
    return ref, counts
