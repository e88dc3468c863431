"""Geocoding as an enrichment (harvest/enrich/base.py): chunked; an address costs a request when no earlier run
geocoded it with this provider (activities with page coordinates or no address are never geocoded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

from harvest.cost import Counter
from harvest.db.schema import activities
from harvest.enrich.base import ChunkedEnrichment, EnrichContext, GlobalLimit, WorkCount, counted
from harvest.enrich.geocode.book import addresses_to_geocode
from harvest.enrich.geocode.cache import answered_address_keys, cached_geocodes
from harvest.enrich.geocode.client import Geocoder, make_geocoder
from harvest.enrich.geocode.cost import MeteredGeocoder
from harvest.enrich.geocode.stage import geocode_addresses
from harvest.models import FileRef, RunConfig
from harvest.pipeline import Chunk, StageResult
from harvest.settings import HarvestSettings

GEOCODER_LIMIT = "harvest-geocoder"  # a Prefect global concurrency limit: the geocoder's shared request rate


def geocode_work(engine: Engine | None, provider: str) -> WorkCount:
    """Count the addresses of a slice of records that `provider` has not answered before (all of them without
    `engine`), asking the cache the slice's keys at once."""

    def count(records: list[dict[str, Any]]) -> int:
        keys = [key for key, _ in addresses_to_geocode(records)]
        answered = answered_address_keys(engine, provider, set(keys)) if engine is not None and keys else set()
        return sum(1 for key in keys if key not in answered)

    return count


class Geocoding(ChunkedEnrichment):
    name = "geocode"
    map_kind = "geocoded_map"
    merged_key = "geocode"
    columns = (activities.c.latitude, activities.c.longitude, activities.c.place_id)
    limit = GlobalLimit(
        GEOCODER_LIMIT, "rate", slots=lambda settings: 1,
        per_second=lambda settings: settings.geocoder_rate_per_second,
        note=lambda settings: f"{settings.geocoder_rate_per_second}/s",
    )
    work_fields = ("location",)

    def work(self, engine: Engine | None, settings: HarvestSettings) -> WorkCount | None:
        return geocode_work(engine, settings.geocoder) if settings.geocoder != "none" else None

    def enrich_chunk(self, context: EnrichContext, standardized: FileRef, chunk: Chunk) -> StageResult:
        """Each distinct address is asked once per run, and never again once cached; a request the run's budget
        cannot pay for is not sent (warned)."""
        settings = context.settings
        made = make_geocoder(
            settings.geocoder, base_url=settings.geocoder_url,
            google_api_key=settings.google_maps_api_key.get_secret_value() if settings.google_maps_api_key else None,
            user_agent=settings.user_agent, rate_per_second=settings.geocoder_rate_per_second,
            timeout_s=settings.request_timeout_seconds, before_call=context.gate,
        )
        active = settings.geocoder != "none"
        geocoder: Geocoder = MeteredGeocoder(made, settings.geocoder, context.meter) if active else made
        result = geocode_addresses(context.store, context.run_id, standardized, geocoder,
                                   cache=(context.engine, settings.geocoder) if active else None, chunk=chunk)
        if context.meter.refused:
            result.warn(f"budget: {len(context.meter.refused)} address(es) not geocoded, the run's max_cost_usd "
                        "would have been passed: " + ", ".join(context.meter.refused[:20]))
        return result

    def merged(self, line: dict[str, Any] | None) -> Any:
        return line if line and line.get("latitude") is not None else None

    def finish(self, record: dict[str, Any], value: Any) -> None:
        """The geocode's coordinates, unless the page gave its own (they are data, and win: `final_record` has
        set them with source `page`)."""
        location = record["location"]
        if value and location["coordinates_source"] != "page":
            location["latitude"], location["longitude"] = value.get("latitude"), value.get("longitude")
            location["coordinates_source"] = value.get("source") or "geocoder"  # maps written before sources
            location["place_id"] = value.get("place_id")
            location["geocoded_address"] = value.get("formatted_address")

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        location = record.get("location") or {}
        return {"latitude": location.get("latitude"), "longitude": location.get("longitude"),
                "place_id": location.get("place_id")}

    def free_counters(self, step: str, items_out: int, details: Mapping[str, Any]) -> dict[str, int]:
        return {Counter.geocode_cache_hits: counted(details, "geocode_cache_hits")}

    def estimate(self, records: list[dict[str, Any]], config: RunConfig, settings: HarvestSettings,
                 engine: Engine | None) -> dict[str, int] | None:
        """Distinct addresses without page coordinates that no earlier run geocoded with this provider."""
        if settings.geocoder == "none":
            return {}
        keys = {key for key, _ in addresses_to_geocode(records)}
        cached = set(cached_geocodes(engine, settings.geocoder, keys)) if engine and keys else set()
        return {f"geocode_requests_{settings.geocoder}": len(keys - cached), Counter.geocode_cache_hits: len(cached)}


GEOCODING = Geocoding()
