"""The defaults docs/configuration.md states are the code's: every row of its settings, crawler and run-config
tables is read and compared with the default the code declares (HarvestSettings, CrawlOptions, RunConfig).

A default changed in the code alone (HARVEST_DB_RECONNECT_SECONDS 20 → 10, the trap limit 100 → 55) fails here;
so does a new row that this test can neither read nor names in UNREAD with a reason.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from harvest.crawl.options import CrawlOptions
from harvest.models import RunConfig
from harvest.settings import HarvestSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# Rows whose default is a description, not a value (where it comes from is said in the row itself).
UNREAD = {
    "HARVEST_DATABASE_URL": "a path under the user's home, expanded at run time",
    "HARVEST_STORAGE_URL": "a path under the user's home, expanded at run time",
    "HARVEST_HOME": "the user's home, expanded at run time",
    "HARVEST_GEOCODER_URL": "the public endpoint of the chosen geocoder",
    "HARVEST_BROWSER_PATH": "whichever Chromium is installed",
    "NODE_COMPILE_CACHE": "not harvest's setting: Node's, set by the crawler",
    "OPENAI_API_KEY": "the OpenAI client's own variable",
    "OPENAI_BASE_URL": "the OpenAI client's own variable",
    "GOOGLE_MAPS_API_KEY": "read under its conventional name",
    "HARVEST_CRAWL_URL_BUDGET_SECONDS": "twice the request timeout (a rule, checked in test_crawl_http)",
}
UNITS = {"MiB": 1024 * 1024, "MP": 1_000_000}


def table_rows(heading: str) -> list[tuple[str, str]]:
    """(first cell, second cell) of every body row of the first table after `heading`."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(heading)
    rows: list[tuple[str, str]] = []
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            if in_table and not set(cells[0]) <= set("-|"):
                rows.append((cells[0], cells[1]))
            in_table = True
        elif in_table:
            break
    return rows


def variables(cell: str) -> list[str]:
    """The variables a row names (`HARVEST_A` / `HARVEST_B`: one default each, in the same order)."""
    names = re.findall(r"`([A-Z0-9_]+)`", cell)
    assert names and all(not name.startswith("_") for name in names), f"name each variable in full: {cell}"
    return names


def value(text: str) -> Any:
    """A documented default as a value: `20`, (0.5), 15 MiB, 50 MP, true, unset, `gpt-4o-mini`."""
    text = text.strip().strip("`").strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if text.startswith("unset") or text == "null":  # "unset (AWS)": what unset means follows in brackets
        return None
    if text in ("true", "false"):
        return text == "true"
    if text == "[]":
        return []
    number = re.fullmatch(r"(-?[\d.]+)\s*(MiB|MP)?", text)
    if number:
        return float(number.group(1)) * UNITS.get(number.group(2) or "", 1)
    return text


def code_default(name: str) -> Any:
    """The default the code declares for a variable: HarvestSettings', or CrawlOptions' for a crawler knob."""
    field = name.removeprefix("HARVEST_").lower()
    setting = HarvestSettings.model_fields[field]
    declared = setting.get_default(call_default_factory=True)
    if declared is None and field.startswith("crawl_"):  # unset: the crawler's own default applies
        own = field.removeprefix("crawl_")
        own = own.removesuffix("_seconds") + "_s" if own.endswith("_seconds") else own
        declared = {f.name: f.default for f in dataclasses.fields(CrawlOptions)}[own]
    if isinstance(declared, tuple):
        declared = ",".join(declared)
    return declared


def documented_settings() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for heading in ("# Configuration", "### Prices and the budget", "### The crawler's knobs"):
        for names_cell, default_cell in table_rows(heading):
            names = variables(names_cell)
            if set(names) <= set(UNREAD):
                continue
            defaults = default_cell.split(" / ") if len(names) > 1 else [default_cell] * len(names)
            if len(names) > 1 and len(defaults) == 1:  # `A`, `B` | unset: one default for both
                defaults = defaults * len(names)
            assert len(defaults) == len(names), (names_cell, default_cell)
            found += [(name, value(default)) for name, default in zip(names, defaults)]
    return found


@pytest.mark.parametrize(("name", "documented"), documented_settings(), ids=lambda item: str(item))
def test_a_documented_setting_default_is_the_codes(name: str, documented: Any) -> None:
    declared = code_default(name)
    if isinstance(declared, bool) or isinstance(documented, bool):
        assert bool(declared) == documented and type(declared) in (bool, int), (name, declared, documented)
    elif isinstance(declared, int | float) and not isinstance(declared, bool):
        assert float(declared) == documented, (name, declared, documented)
    else:
        assert declared == documented, (name, declared, documented)


def test_every_row_of_the_settings_tables_is_read_or_said_why_not() -> None:
    read = {name for name, _ in documented_settings()}
    rows = {name for heading in ("# Configuration", "### Prices and the budget", "### The crawler's knobs")
            for cell, _ in table_rows(heading) for name in variables(cell)}
    assert rows - read <= set(UNREAD), rows - read - set(UNREAD)
    assert set(UNREAD) <= rows, set(UNREAD) - rows  # a name that left the docs leaves this list too
    assert {"HARVEST_DB_RECONNECT_SECONDS", "HARVEST_CRAWL_TRAP_LIMIT"} <= read


def run_config_rows() -> list[tuple[str, Any]]:
    found = []
    for field_cell, default_cell in table_rows("## The run config"):
        for field in re.findall(r"`([a-z_]+)`", field_cell):
            found.append((field, value(default_cell)))
    return found


@pytest.mark.parametrize(("field", "documented"), run_config_rows(), ids=lambda item: str(item))
def test_a_documented_run_config_default_is_the_codes(field: str, documented: Any) -> None:
    declared = RunConfig.model_fields[field].get_default(call_default_factory=True)
    if isinstance(declared, bool) or declared is None:
        assert declared == documented, (field, declared, documented)
    elif isinstance(declared, int | float):
        assert float(declared) == documented, (field, declared, documented)
    else:
        assert declared == documented, (field, declared, documented)
