"""What a run costs: the price table and a stage's meter (budget reservations and charges). The dry-run estimate
is harvest/estimate.py; the ledger's free counters per step, harvest/steps.py."""

from harvest.cost.meter import Book, Meter, Reservation, tokens_from_chars
from harvest.cost.prices import Counter, Prices, Usage, add_usage

__all__ = ["Book", "Counter", "Meter", "Prices", "Reservation", "Usage", "add_usage", "tokens_from_chars"]
