"""The pipeline's steps by their one name, for the run ledger: which ledger stage a step key counts under, what a
finished step used that costs nothing (the free counters), and which holds a resume settles.

A step key is the step's name (`crawl`, `standardize`, `merge`, `final`, `import`, `diff`, an enrichment's
name), `<name>.<chunk>` for one chunk of a chunked enrichment, or `<name>_<part>` for a part of one
(`embeddings_submit`); the enrichments answer for their own keys (harvest/enrich/base.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harvest.cost.prices import Counter
from harvest.crawl.stage import crawl_counters
from harvest.enrich.base import Enrichment
from harvest.enrich.registry import enrichments
from harvest.models import FileRef


def _owner(step: str) -> Enrichment | None:
    return next((e for e in enrichments() if e.owns_step(step)), None)


def ledger_stage(step: str) -> str:
    """The ledger's stage for a step: an enrichment's steps count under its name (images.3 → images,
    embeddings_submit → embeddings), any other under its own."""
    owner = _owner(step)
    return owner.name if owner is not None else step.split(".", 1)[0]


def holds_a_resume_settles(steps: Mapping[str, Any]) -> set[str]:
    """Ledger stages whose open holds outlive the run's process, from its `steps` map (an embeddings batch that
    was submitted but not yet collected: OpenAI runs it whatever became of the process, and a resumed run
    collects it and charges what it used against that hold): reconciling the run keeps them."""
    return {e.name for e in enrichments() if e.holds_a_resume_settles(steps)}


def free_counters(step: str, items_out: int, details: Mapping[str, Any], files: Iterable[FileRef]) -> dict[str, int]:
    """What a finished step did that costs no money but says what a run used: pages fetched (HTTP, browser),
    images downloaded and reused, pages reused from the page memory and cache hits that avoided a paid call,
    bytes stored."""
    counters: dict[str, int] = {Counter.bytes_stored: sum(ref.bytes for ref in files)}
    owner = _owner(step)
    if owner is not None:
        counters.update(owner.free_counters(step, items_out, details))
    elif ledger_stage(step) == "crawl":
        counters.update(crawl_counters(details))
    return {name: count for name, count in counters.items() if count}
