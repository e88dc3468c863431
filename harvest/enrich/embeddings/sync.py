"""The synchronous embeddings endpoint: a few texts embedded now (an unchanged re-run's leftovers, small runs),
in chunks within the endpoint's input and token limits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from harvest.enrich.embeddings.api import api_failure, check_vector, decode_vector, prompt_tokens, supports_dimensions
from harvest.errors import EmbeddingError

if TYPE_CHECKING:  # openai costs ~0.5 s to import: only where a call is made (issue 32)
    import openai

# Sync endpoint: at most 2,048 inputs and 300k tokens per request; these bounds stay well inside both.
SYNC_CHUNK_INPUTS = 256
SYNC_CHUNK_CHARS = 400_000


def _chunks(texts: list[str], max_inputs: int, max_chars: int) -> Iterator[tuple[int, list[str]]]:
    start = 0
    while start < len(texts):
        end, chars = start, 0
        while end < len(texts) and end - start < max_inputs and (end == start or chars + len(texts[end]) <= max_chars):
            chars += len(texts[end])
            end += 1
        yield start, texts[start:end]
        start = end


def embed_texts(client: openai.OpenAI, texts: list[str], *, model: str, dimensions: int,
                chunk_size: int = SYNC_CHUNK_INPUTS, on_usage: Callable[[int], None] | None = None,
                ) -> list[np.ndarray]:
    """Vectors for `texts` (same order) from the synchronous endpoint, in chunks; for small runs and queries.
    `on_usage(prompt tokens)` hears each answer's `usage` (the run ledger counts it).

    A wrong-length vector here means the model/dimensions setting is wrong for every text, so it raises
    EmbeddingError rather than returning a partial answer.
    """
    import openai

    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise EmbeddingError(f"text {index} is empty: the embeddings API refuses empty input")
    vectors: list[np.ndarray] = []
    extra: dict[str, Any] = {"dimensions": dimensions} if supports_dimensions(model) else {}
    for start, chunk in _chunks(texts, chunk_size, SYNC_CHUNK_CHARS):
        try:
            response = client.embeddings.create(input=chunk, model=model, encoding_format="base64", **extra)
        except openai.OpenAIError as exc:
            raise api_failure(f"embedding texts {start}..{start + len(chunk) - 1}", exc) from exc
        if on_usage is not None:
            on_usage(prompt_tokens(getattr(response, "usage", None)))
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(chunk):
            raise EmbeddingError(
                f"embeddings response for texts {start}.. has {len(data)} vectors for {len(chunk)} inputs"
            )
        for item in data:
            vector = decode_vector(item.embedding)
            problem = check_vector(vector, dimensions)
            if problem:
                raise EmbeddingError(f"text {start + item.index}: {problem} from model {model!r}")
            vectors.append(vector)
    return vectors
