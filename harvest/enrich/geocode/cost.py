"""A geocoder that asks the run's budget before each request and counts it in the ledger, by provider."""

from __future__ import annotations

from harvest.cost.meter import Meter, Reservation
from harvest.enrich.geocode.client import GatedGeocoder, RequestRefused
from harvest.models import Geocode

OVER_BUDGET = "skipped: the request would pass the run's budget (max_cost_usd)"


class MeteredGeocoder:
    """Wraps a geocoder: every request it sends, each retry included, is held against the budget before it goes
    and counted (`geocode_requests_<provider>`; Google's are paid, per request, Nominatim's free). An address
    whose first request the budget cannot pay for gets an error instead of a request, and one whose retry it
    cannot pay for stops there with the same error: neither is cached, so a later run with budget asks again."""

    def __init__(self, geocoder: GatedGeocoder, provider: str, meter: Meter) -> None:
        self.geocoder = geocoder
        self.counter = f"geocode_requests_{provider}"
        self.meter = meter

    def geocode(self, address: str) -> Geocode:
        sent: list[Reservation] = []

        def hold_before_sending() -> None:
            held = self.meter.reserve({self.counter: 1}, address)
            if held is None:
                raise RequestRefused(OVER_BUDGET)
            sent.append(held)

        try:
            return self.geocoder.geocode(address, before_request=hold_before_sending)
        finally:
            # Charged whatever the answer (an error, a timeout, or this thread interrupted): each went out.
            for held in sent:
                self.meter.charge({self.counter: 1}, held)
