"""The final writer's vectors and digest: what it writes from the float32 matrix must read back as the same
numbers, and the digest it writes alongside must equal the digest computed later from the final JSONL (the
fallback for runs without a digest file), or a diff would report every vector as changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from harvest.diff.compare import _short_hash, digest_line
from harvest.enrich.embeddings.matrix import EmbeddingMatrix
from harvest.merge.final import write_final_records
from harvest.storage import LocalStore, iter_jsonl, store_local_file, write_jsonl


def _merged(activity_id: str, row: int | None) -> dict[str, object]:
    activity = {
        "id": activity_id, "name": f"Playground {activity_id} <b>é</b>", "description": "Swings; DROP TABLE x;",
        "location": {"city": "Carlton", "formattedAddress": "1 Main Rd, Carlton", "country_code": "AU"},
        "tags": ["playground", "free"], "source_url": f"https://example.org/{activity_id}", "content_hash": "c" + activity_id,
    }
    return {"activity": activity, "image": None, "geocode": {"latitude": -37.8, "longitude": 144.96}, "embedding_row": row}


def test_final_vectors_and_digest_read_back_exactly(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    vectors = (np.random.default_rng(7).standard_normal((3, 1536)) * 0.05).astype(np.float32)
    with EmbeddingMatrix(tmp_path / "e.npy", 3, 1536) as matrix:
        for row in (0, 2):
            matrix.write(row, vectors[row])
    embeddings = store_local_file(store, "runs/r/embeddings.npy", "embeddings", tmp_path / "e.npy", records=3,
                                  content_type="application/x-npy")
    merged = write_jsonl(store, "runs/r/merged.jsonl", "merged", [_merged("a", 0), _merged("b", None), _merged("c", 2)])

    result = write_final_records(store, "r", merged, embeddings)

    final = list(iter_jsonl(store, result.file("final_jsonl").uri))
    assert [r["id"] for r in final] == ["a", "b", "c"] and final[1]["embedding"] is None
    for record, row in ((final[0], 0), (final[2], 2)):
        assert isinstance(record["embedding"], list) and len(record["embedding"]) == 1536
        assert np.array_equal(np.asarray(record["embedding"]), np.round(vectors[row].astype(np.float64), 8))
        assert np.allclose(np.asarray(record["embedding"], dtype=np.float32), vectors[row], atol=1e-8)
    digest = list(iter_jsonl(store, result.file("digest").uri))
    assert digest == [digest_line(record) for record in final], "the digest file equals the one read back from final"


def test_field_hashes_are_those_of_digests_stored_by_earlier_versions() -> None:
    for value in ("Swings & slides é", None, True, ["a", "b"], {"uri": "s3://b/k", "width": 10}, -37.81, "2024-01-01"):
        expected = hashlib.sha256(
            json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
        ).hexdigest()[:12]
        assert _short_hash(value) == expected, value
