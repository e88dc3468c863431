"""What a run costs: the price table, a stage's meter (budget reservations and charges), the dry-run estimate."""

from harvest.cost.meter import Book, Meter, Reservation, tokens_from_chars
from harvest.cost.prices import Counter, Prices, Usage, add_usage

__all__ = ["Book", "Counter", "Meter", "Prices", "Reservation", "Usage", "add_usage", "tokens_from_chars"]
