"""The enrichments a run does, in order: the one list the flow, the merge, the final writer, the import policy,
the ledger, the estimate and `harvest blocks register` go through.

Adding an enrichment is one line here (see docs/architecture.md). The order is the order of each record's fields
in `merged.jsonl`; the flow submits batch enrichments first (the longest branch on a first run), then the chunks.
`register` and `unregister` let code outside the package plug one in at run time (a test's throwaway enrichment);
a deployment lists its enrichments here.
"""

from __future__ import annotations

import threading

from harvest.enrich.base import BatchEnrichment, ChunkedEnrichment, Enrichment
from harvest.enrich.embeddings.enrichment import EMBEDDINGS
from harvest.enrich.geocode.enrichment import GEOCODING
from harvest.enrich.images.enrichment import IMAGES

_ENRICHMENTS: list[Enrichment] = [
    IMAGES,
    GEOCODING,
    EMBEDDINGS,
]
_GUARD = threading.Lock()


def enrichments() -> tuple[Enrichment, ...]:
    """Every registered enrichment, in order."""
    return tuple(_ENRICHMENTS)


def chunked() -> tuple[ChunkedEnrichment, ...]:
    return tuple(e for e in _ENRICHMENTS if isinstance(e, ChunkedEnrichment))


def batched() -> tuple[BatchEnrichment, ...]:
    return tuple(e for e in _ENRICHMENTS if isinstance(e, BatchEnrichment))


def enrichment(name: str) -> Enrichment:
    """The registered enrichment called `name`; KeyError when there is none."""
    for e in _ENRICHMENTS:
        if e.name == name:
            return e
    raise KeyError(name)


def vectors() -> Enrichment | None:
    """The enrichment whose vectors fill the final records' `embedding` (see Enrichment.vectors_kind)."""
    return next((e for e in _ENRICHMENTS if e.vectors_kind), None)


def register(new: Enrichment) -> None:
    """Add an enrichment after the registered ones. Its name must be new: it names its steps, files and tasks."""
    if not isinstance(new, ChunkedEnrichment | BatchEnrichment):
        raise TypeError(f"{new!r} is neither a ChunkedEnrichment nor a BatchEnrichment")
    with _GUARD:
        if any(e.name == new.name or e.map_kind == new.map_kind for e in _ENRICHMENTS):
            raise ValueError(f"an enrichment called {new.name!r} (or writing {new.map_kind}) is registered already")
        if new.vectors_kind and any(e.vectors_kind for e in _ENRICHMENTS):
            raise ValueError("only one enrichment may provide the records' vectors")
        _ENRICHMENTS.append(new)


def unregister(name: str) -> None:
    """Remove the enrichment called `name` (a no-op when there is none)."""
    with _GUARD:
        _ENRICHMENTS[:] = [e for e in _ENRICHMENTS if e.name != name]
