"""The enrichment's fan-out follows the records that cost a request (harvest.enrich.fan_out): a first run is cut
as it always was, a re-run whose addresses are all cached geocodes in one chunk."""

from __future__ import annotations

from typing import Any

import pytest

from harvest.enrich.fan_out import enrichment_chunks, network_work
from harvest.enrich.geocode.cache import store_geocodes
from harvest.enrich.geocode.client import normalize_address
from harvest.enrich.geocode.enrichment import geocode_work
from harvest.enrich.images.enrichment import IMAGES
from harvest.pipeline import chunk_ranges
from harvest.storage import write_jsonl

DATABASES = ["postgres", "sqlite"]


def _record(number: int, *, address: str | None = "x", coordinates: bool = False, image: bool = False) -> dict[str, Any]:
    location: dict[str, Any] = {"formattedAddress": f"{number} Main Rd, Eltham" if address == "x" else address}
    if coordinates:
        location.update(latitude=-37.7, longitude=145.1)
    return {"id": f"a{number}", "name": f"Playground {number}", "location": location,
            "image_url": f"https://img.example/{number}.jpg" if image else None}


def work(store, standardized, engine, provider: str | None) -> dict[str, int]:  # noqa: ANN001
    """The two built-in chunked enrichments' counts, geocoding with `provider` (None: geocoding off)."""
    counters = {"geocode": geocode_work(engine, provider) if provider else None, "images": IMAGES.work(None, None)}
    return network_work(store, standardized, counters, ["location", "image_url"])


def test_network_work_counts_uncached_addresses_and_every_image(engine, store) -> None:  # noqa: ANN001
    records = [_record(n, image=n % 3 == 0) for n in range(2500)]  # three slices of the cache lookup
    records += [_record(2500, coordinates=True), _record(2501, address=None), _record(2502, address="")]
    records.append(_record(8))  # the same address as a8: one key, two records that need it
    standardized = write_jsonl(store, "runs/r/standardized.jsonl", "standardized", records)

    assert work(store, standardized, engine, "nominatim") == {"geocode": 2501, "images": 834}
    store_geocodes(engine, "nominatim", {normalize_address(f"{n} Main Rd, Eltham"): {"latitude": 1.0}
                                         for n in range(0, 2500, 2)})
    # Even addresses are cached now (a8 and its twin among them): the 1,250 odd ones need the geocoder.
    assert work(store, standardized, engine, "nominatim") == {"geocode": 1250, "images": 834}
    assert work(store, standardized, engine, "google") == {"geocode": 2501, "images": 834}
    assert work(store, standardized, engine, None) == {"geocode": 0, "images": 834}
    assert work(store, standardized, None, "nominatim")["geocode"] == 2501


@pytest.mark.parametrize(("records", "size", "most"), [(10_000, 1000, 4), (10, 4, 3), (9, 3, 8), (1, 1000, 4)])
def test_all_records_costing_a_request_cut_as_the_chunk_rule_always_did(records: int, size: int, most: int) -> None:
    assert enrichment_chunks(records, records, size, most) == chunk_ranges(records, size, most)


def test_fewer_requests_fewer_chunks_over_every_line() -> None:
    assert enrichment_chunks(10_000, 0, 1000, 4) == [(0, 10_000)]
    assert enrichment_chunks(10_000, 1500, 1000, 4) == [(0, 5000), (5000, 10_000)]
    assert enrichment_chunks(5, 4, 1, 4) == [(0, 1), (1, 2), (2, 3), (3, 5)]
    assert enrichment_chunks(0, 0, 1000, 4) == [(0, 0)]
