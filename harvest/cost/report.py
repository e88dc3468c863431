"""Plain-text lines for a run's `cost` object (harvest.db.ledger.run_cost), shared by the CLI and the summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def usd(value: float) -> str:
    """Dollars with enough places for sub-cent runs: $0.000123."""
    return f"${value:,.6f}" if value < 1 else f"${value:,.2f}"


def cost_lines(cost: Mapping[str, Any]) -> list[str]:
    """One line for the total, then one per stage: its cost and its non-zero counters."""
    held = f" (+{usd(cost['reserved_usd'])} held for unsettled calls)" if cost.get("reserved_usd") else ""
    lines = [f"estimated cost {usd(cost.get('cost_usd', 0.0))}{held}"]
    for stage, entry in (cost.get("stages") or {}).items():
        counters = ", ".join(f"{name} {count:,}" for name, count in sorted(entry["usage"].items()) if count)
        lines.append(f"  {stage:12} {usd(entry['cost_usd']):>12}  {counters}")
    return lines
