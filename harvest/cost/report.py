"""Plain-text lines for a run's `cost` object (harvest.db.ledger.run_cost), shared by the CLI and the summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def usd(value: float) -> str:
    """Dollars with enough places for sub-cent runs: $0.000123."""
    return f"${value:,.6f}" if value < 1 else f"${value:,.2f}"


def cost_lines(cost: Mapping[str, Any]) -> list[str]:
    """One line for the total (and one for released holds, if any), then one per stage: its cost, its non-zero
    counters, and what it holds and released."""
    held = f" (+{usd(cost['reserved_usd'])} held for unsettled calls)" if cost.get("reserved_usd") else ""
    lines = [f"estimated cost {usd(cost.get('cost_usd', 0.0))}{held}"]
    if cost.get("released_usd"):
        lines.append(f"released {usd(cost['released_usd'])} held for calls that never reported back "
                     "(no longer counted against the budget; they may have been billed)")
    for stage, entry in (cost.get("stages") or {}).items():
        counters = ", ".join(f"{name} {count:,}" for name, count in sorted(entry["usage"].items()) if count)
        holds = [f"{what} {usd(entry[key])}" for what, key in (("held", "reserved_usd"), ("released", "released_usd"))
                 if entry.get(key)]
        holding = f"  [{', '.join(holds)}]" if holds else ""
        lines.append(f"  {stage:12} {usd(entry['cost_usd']):>12}  {counters}{holding}")
    return lines
