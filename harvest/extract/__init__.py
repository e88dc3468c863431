"""Turning fetched pages into RawActivity records: structured data first, an LLM for the rest."""

from __future__ import annotations

from harvest.extract.llm import LLMExtractor
from harvest.extract.page import looks_script_rendered, page_text
from harvest.extract.structured import extract_structured, has_structured_activity

__all__ = ["LLMExtractor", "extract_structured", "has_structured_activity", "looks_script_rendered", "page_text"]
