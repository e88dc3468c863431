"""A stage's meter: it asks the run's book before each paid call and writes down what the call used.

The budget is a sum kept in the database (`harvest.db.ledger.RunBook`), not in this process: concurrent
chunks, other workers and a resumed run all see the same spent and reserved totals, so a run cannot overspend
by being split or restarted. Before a paid call the meter reserves the call's estimated cost; the book refuses
when spent + reserved + this estimate would pass the limit. After the call the reservation is released and
the usage the service reported is charged. A reservation whose call never reported back (the process died)
stays reserved until the run is reconciled as dead (`harvest sweep`, `harvest runs resume`, a new start of its
URL) or an operator releases it (`harvest runs release-reservations`): then it is recorded as released, no
longer counts against the budget, and stays in the run's cost record. A submitted embeddings batch keeps its
hold through reconciliation: the resumed run collects and charges it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from harvest.cost.prices import Prices, Usage, add_usage
from harvest.errors import DatabaseError

log = logging.getLogger(__name__)


class Book(Protocol):
    """Where a run's spending is kept (harvest.db.ledger.RunBook)."""

    def reserve(self, stage: str, usd: float, limit: float | None) -> bool: ...
    def charge(self, stage: str, usage: Usage, cost_usd: float, release_usd: float = 0.0) -> None: ...


@dataclass(frozen=True)
class Reservation:
    """An estimate held against the budget until the call it is for reports its usage."""

    usd: float


@dataclass
class Meter:
    """Counts one stage's paid calls and keeps them within `limit` (USD for the whole run; None: no limit).

    Without a `book` (a domain test, the dry-run estimate) usage is only counted here and the limit is checked
    against what this meter alone has charged and reserved.
    """

    stage: str
    prices: Prices = field(default_factory=Prices)
    limit: float | None = None
    book: Book | None = None
    usage: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    _held: float = 0.0
    _charged: float = 0.0
    # Charges the book could not take when they were made (a database outage): (usage, cost, hold released).
    unsettled: list[tuple[Usage, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, estimate: Usage, what: str) -> Reservation | None:
        """Hold the estimated cost of `estimate` for one call (about `what`), or None when the budget would
        be exceeded: then `what` is added to `refused` and the caller must not make the call."""
        usd = self.prices.cost(estimate)
        if self.unsettled:
            try:
                self.settle()
            except DatabaseError:
                pass  # the reservation below meets the same outage and says so
        if usd > 0:
            allowed = (self.book.reserve(self.stage, usd, self.limit) if self.book is not None
                       else self._reserve_here(usd))
            if not allowed:
                with self._lock:
                    self.refused.append(what)
                return None
        return Reservation(usd)

    def _reserve_here(self, usd: float) -> bool:
        with self._lock:
            if self.limit is not None and self._charged + self._held + usd > self.limit + 1e-12:
                return False
            self._held += usd
            return True

    def charge(self, actual: Usage, reservation: Reservation | None = None, *, later_on_error: bool = False) -> float:
        """Write down what a call used (from the service's own answer) and release its reservation; returns
        the cost charged.

        With `later_on_error`, a book that cannot take the charge (DatabaseError) does not fail the call that was
        already paid for: the charge waits in `unsettled` and is retried by `settle` (and before the next
        reservation); until then its hold stays in the book, where reconciling a dead run releases it."""
        usd = self.prices.cost(actual)
        released = reservation.usd if reservation else 0.0
        with self._lock:
            add_usage(self.usage, actual)
            self._held = max(0.0, self._held - released)
            self._charged += usd
        if self.book is not None:
            try:
                self.book.charge(self.stage, actual, usd, released)
            except DatabaseError as exc:
                if not later_on_error:
                    raise
                with self._lock:
                    self.unsettled.append((dict(actual), usd, released))
                log.warning("%s: a paid call's cost could not be recorded yet (%s); recording it later",
                            self.stage, exc)
        return usd

    def settle(self) -> None:
        """Record the charges the book could not take when they were made; DatabaseError while it still cannot
        (what is left stays in `unsettled`)."""
        while self.book is not None:
            with self._lock:
                if not self.unsettled:
                    return
                usage, usd, released = self.unsettled[0]
            self.book.charge(self.stage, usage, usd, released)
            with self._lock:
                self.unsettled.pop(0)

    def release(self, reservation: Reservation | None) -> None:
        """Give back a reservation whose call was not made or failed before using anything."""
        if reservation is None or reservation.usd == 0:
            return
        self.charge({}, reservation)

    @property
    def cost_usd(self) -> float:
        return self.prices.cost(self.usage)


def tokens_from_chars(chars: int) -> int:
    """Tokens estimated from text length: about 4 characters per token for English (OpenAI's rule of thumb),
    used where the exact count would need the text sent or a tokenizer download."""
    return -(-max(0, chars) // 4)

