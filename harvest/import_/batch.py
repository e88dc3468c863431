"""One batch of an import as the policy judged it, and how a record that cannot be written is counted: what
both write paths (the portable upsert, Postgres's COPY) share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harvest.import_.provenance import Touch
from harvest.models import ImportSummary

MAX_ERRORS = 50


@dataclass
class Verdicts:
    """One batch's rows judged by the upsert policy against the table as one key lookup found it: rows of keys
    the table did not hold (`new`) and stored rows the policy would write (`changed`), each with its record's
    number; `unchanged` rows were counted skipped and are not sent.

    A verdict picks how a row is written and spares the work of rows that would not be; it does not decide
    the write. `new` rows are COPYed into the table, which the unique index refuses if another import stored
    one of their keys since (they then go through the upsert); `changed` rows go through the upsert, whose
    ON CONFLICT ... WHERE applies the policy again to the row stored at write time. The portable path upserts
    both with that clause and counts them by the verdict (SQLite's upsert does not say which rows it inserted).

    `claims`: the claim of every row judged (written or not; harvest/import_/provenance.py), written in the
    transaction that writes the rows, less those of rows that could not be written (`without_failed`); `touch`:
    the claims of unchanged rows showing this source, confirmed without new values."""

    new: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    changed: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    unchanged: int = 0
    claims: list[dict[str, Any]] = field(default_factory=list)
    touch: Touch | None = None

    @property
    def claimed(self) -> bool:
        """Whether the batch has claims to record."""
        return bool(self.claims or (self.touch and self.touch.keys))

    def without_failed(self, failed: set[str]) -> list[dict[str, Any]]:
        """The claims but those of rows (dedupe keys) that failed to be written."""
        return [claim for claim in self.claims if claim["dedupe_key"] not in failed] if failed else self.claims


def record_failure(summary: ImportSummary, record: Any, exc: Exception) -> None:
    """One record that cannot be written: counted, with its reason (the first MAX_ERRORS of them)."""
    summary.failed += 1
    if len(summary.errors) < MAX_ERRORS:
        label = (record.get("id") or record.get("name") or "?") if isinstance(record, dict) else "?"
        summary.errors.append(f"{label}: {exc}")
