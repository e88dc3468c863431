"""Turning fetched pages into RawActivity records: structured data first, an LLM for the rest.

The names below are loaded on first use (PEP 562), not when the package is: importing one light module of it
(`harvest.extract.text`, which every settings object reaches through `harvest.standardize`) used to import the
OpenAI SDK and extruct too, 0.6-2 s for every `harvest` command before it did anything (issue 28).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harvest.extract.llm import LLMExtractor
    from harvest.extract.page import looks_script_rendered, page_text
    from harvest.extract.structured import extract_structured, has_structured_activity

_WHERE = {
    "LLMExtractor": "harvest.extract.llm",
    "looks_script_rendered": "harvest.extract.page",
    "page_text": "harvest.extract.page",
    "extract_structured": "harvest.extract.structured",
    "has_structured_activity": "harvest.extract.structured",
}

__all__ = ["LLMExtractor", "extract_structured", "has_structured_activity", "looks_script_rendered", "page_text"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'harvest.extract' has no attribute {name!r}")
