"""The free counters of the ledger (pages, images, cache hits, bytes stored), read from what a stage counted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harvest.cost.prices import Counter
from harvest.models import FileRef


def ledger_stage(step: str) -> str:
    """The ledger's stage for a step: chunks fold into their stage (images.3 → images), embeddings_submit into
    embeddings."""
    base = step.split(".", 1)[0]
    return "embeddings" if base.startswith("embeddings") else base


def holds_a_resume_settles(steps: Mapping[str, Any]) -> set[str]:
    """Ledger stages whose open holds outlive the run's process, from its `steps` map: an embeddings batch that
    was submitted (its id is recorded) but not yet collected. OpenAI runs it whatever became of the process,
    and a resumed run collects it and charges what it used against that hold (harvest.enrich.embeddings.stage), so the
    hold is still for money on its way: reconciling the run keeps it."""
    submitted = (steps.get("embeddings_submit") or {}).get("details") or {}
    return {"embeddings"} if submitted.get("batch_id") and "embeddings" not in steps else set()


def _int(details: Mapping[str, Any], key: str) -> int:
    value = details.get(key, 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def free_counters(step: str, items_out: int, details: Mapping[str, Any], files: Iterable[FileRef]) -> dict[str, int]:
    """What a finished step did that costs no money but says what a run used: pages fetched (HTTP, browser),
    images downloaded and reused, pages reused from the page memory and cache hits that avoided a paid call,
    bytes stored."""
    stage = ledger_stage(step)
    counters: dict[str, int] = {Counter.bytes_stored: sum(ref.bytes for ref in files)}
    if stage == "crawl":
        counters[Counter.pages_http] = _int(details, "pages_http")
        counters[Counter.pages_browser] = _int(details, "pages_rendered")
        counters[Counter.chat_cache_hits] = _int(details, "llm_cached_answers")
        counters[Counter.pages_not_modified] = _int(details, "pages_not_modified")
        counters[Counter.pages_lastmod_unchanged] = _int(details, "pages_lastmod_unchanged")
    elif stage == "images":
        reused = _int(details, "images_reused")
        counters[Counter.images_reused] = reused
        counters[Counter.images_downloaded] = max(0, items_out - reused)
    elif stage == "geocode":
        counters[Counter.geocode_cache_hits] = _int(details, "geocode_cache_hits")
    elif step == "embeddings_submit":
        counters[Counter.embedding_cache_hits] = _int(details, "reused")
    return {name: count for name, count in counters.items() if count}
