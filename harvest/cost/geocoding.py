"""A geocoder that asks the run's budget before each request and counts it in the ledger, by provider."""

from __future__ import annotations

from harvest.cost.meter import Meter
from harvest.geocode import Geocoder
from harvest.models import Geocode

OVER_BUDGET = "skipped: the request would pass the run's budget (max_cost_usd)"


class MeteredGeocoder:
    """Wraps a Geocoder: one counted request per address asked (`geocode_requests_<provider>`; Google's are
    paid, Nominatim's free). An address the budget cannot pay for gets an error instead of a request: it is
    not cached, so a later run with budget asks again."""

    def __init__(self, geocoder: Geocoder, provider: str, meter: Meter) -> None:
        self.geocoder = geocoder
        self.counter = f"geocode_requests_{provider}"
        self.meter = meter

    def geocode(self, address: str) -> Geocode:
        held = self.meter.reserve({self.counter: 1}, address)
        if held is None:
            return Geocode(address=address, error=OVER_BUDGET)
        try:
            answer = self.geocoder.geocode(address)
        except BaseException:
            self.meter.release(held)
            raise
        self.meter.charge({self.counter: 1}, held)
        return answer
