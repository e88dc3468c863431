"""What the Batch API and the synchronous endpoint share: the text an activity is embedded by, the endpoint,
vectors decoded and checked, the usage an answer reports, and SDK errors said as harvest's own."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from harvest.errors import EmbeddingError
from harvest.models import Activity

if TYPE_CHECKING:  # openai costs ~0.5 s to import: only where a call is made (issue 32)
    import openai

EMBEDDINGS_ENDPOINT: Final = "/v1/embeddings"
# ~8,191 tokens per input; 8,000 characters is about 2,000 tokens: room for any language.
MAX_TEXT_CHARS = 8_000


def embedding_text(activity: Activity, *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """"name | description | formattedAddress | tag1, tag2": what makes two activities similar, bounded."""
    parts = [
        activity.name,
        activity.description,
        activity.location.formattedAddress if activity.location else None,
        ", ".join(t.strip() for t in activity.tags if t and t.strip()),
    ]
    text = " | ".join(" ".join(p.split()) for p in parts if p and p.strip())
    return text[:max_chars].rstrip()


def supports_dimensions(model: str) -> bool:
    """Only text-embedding-3 and later accept a ``dimensions`` parameter; ada-002 rejects it."""
    return not model.startswith("text-embedding-ada")


def api_failure(action: str, exc: openai.OpenAIError) -> EmbeddingError:
    status = getattr(exc, "status_code", None)
    detail = f"HTTP {status}: {exc}" if status else f"{type(exc).__name__}: {exc}"
    return EmbeddingError(f"{action} failed: {detail}")


def decode_vector(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    if isinstance(embedding, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in embedding):
        return np.asarray(embedding, dtype=np.float32)
    raise ValueError(f"embedding is a {type(embedding).__name__}, not a list of floats or base64")


def check_vector(vector: np.ndarray, dimensions: int) -> str | None:
    if vector.shape != (dimensions,):
        return f"wrong dimension {vector.size} (expected {dimensions})"
    if not np.isfinite(vector).all():
        return "vector has non-finite values"
    return None


def prompt_tokens(usage: Any) -> int:
    """`usage.prompt_tokens` of an embeddings answer (a dict from a batch line, or the SDK's object); 0 if absent."""
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else getattr(usage, "prompt_tokens", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
