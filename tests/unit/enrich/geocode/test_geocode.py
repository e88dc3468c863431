"""The real httpx geocoders against the local Nominatim/Google wire-protocol server: results, retries,
per-address failures that never raise, the Google key kept out of every message, and the rate limiter."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from harvest.enrich.geocode.client import (
    Geocoder,
    GoogleGeocoder,
    NominatimGeocoder,
    NullGeocoder,
    RateLimiter,
    make_geocoder,
    normalize_address,
)
from harvest.errors import ConfigError
from testkit.geocoder_server import GeocoderTestServer

UA = "harvest-tests/1.0 (geocode unit tests)"
ELTHAM = "829 Main Rd, Eltham, Australia"
SECRET = "AIza-s3cret/key+with=chars"


@pytest.fixture
def geo() -> Iterator[GeocoderTestServer]:
    with GeocoderTestServer(api_key=SECRET) as server:
        yield server


def nominatim(server: GeocoderTestServer, **kwargs: object) -> NominatimGeocoder:
    options: dict = {"user_agent": UA, "rate_per_second": 1000.0, "timeout_s": 2.0, "retries": 2,
                     "backoff_s": 0.01, **kwargs}
    return NominatimGeocoder(server.base_url, **options)


def google(server: GeocoderTestServer, key: str = SECRET, **kwargs: object) -> GoogleGeocoder:
    options: dict = {"rate_per_second": 1000.0, "timeout_s": 2.0, "retries": 2, "backoff_s": 0.01, **kwargs}
    return GoogleGeocoder(key, server.base_url, **options)


def test_normalize_address_folds_spelling_variants() -> None:
    assert normalize_address("277 Saint Helena Road,  St Helena") == normalize_address("277 st. helena rd, ST HELENA")
    assert normalize_address("829 Main Rd, Eltham") != normalize_address("831 Main Rd, Eltham")
    assert normalize_address("  Café  Street ") == "café st"


def test_nominatim_returns_the_real_geocode_and_sends_the_user_agent(geo: GeocoderTestServer) -> None:
    with nominatim(geo) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.error is None and result.address == ELTHAM
    assert (result.latitude, result.longitude) == (-37.7182446, 145.1448264)
    assert result.formatted_address == "829 Main Rd, Eltham VIC 3095, Australia"
    assert result.components["postal_code"] == "3095" and result.components["country_code"] == "AU"
    assert result.components["street_address"] == "829 Main Road" and result.components["city"] == "Eltham"
    [request] = geo.requests_seen()
    assert request["user_agent"] == UA
    assert request["query"] == {"q": ELTHAM, "format": "jsonv2", "limit": "1", "addressdetails": "1"}


def test_google_returns_the_real_geocode_with_components(geo: GeocoderTestServer) -> None:
    with google(geo) as geocoder:
        result = geocoder.geocode("13 Halwyn Cres, Preston, 3072, Australia")
    assert result.error is None
    assert result.place_id == "ChIJLV6C2L1E1moRqoSs0Y_S14I"
    assert (result.latitude, result.longitude) == (-37.74919060000001, 144.9811479)
    assert result.components == {
        "street_number": "13", "route": "Halwyn Crescent", "street_address": "13 Halwyn Crescent", "city": "Preston",
        "state_province": "Victoria", "postal_code": "3072", "country_code": "AU",
    }


@pytest.mark.parametrize("make", [nominatim, google])
def test_no_result_is_an_error_not_an_exception(geo: GeocoderTestServer, make) -> None:
    with make(geo) as geocoder:
        result = geocoder.geocode("1 Nowhere Lane, Atlantis")
        blank = geocoder.geocode("   ")
    assert result.latitude is None and result.longitude is None and "no result" in (result.error or "")
    assert blank.error == "empty address"
    assert sum(geo.stats().get(k, 0) for k in ("nominatim.search", "google.geocode")) == 1  # blank never sent


@pytest.mark.parametrize("status", [429, 500])
def test_transient_status_then_success(geo: GeocoderTestServer, status: int) -> None:
    geo.fail_next(2, mode="status", status=status, retry_after=0.05 if status == 429 else None)
    with nominatim(geo, retries=2) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.error is None and result.latitude == -37.7182446
    assert geo.stats()["nominatim.search"] == 3


def test_retry_after_is_honoured_and_capped(geo: GeocoderTestServer) -> None:
    geo.fail_next(1, mode="status", status=429, retry_after=0.3)
    geo.fail_next(1, mode="status", status=429, retry_after=60)
    started = time.monotonic()
    with nominatim(geo, retries=2, max_retry_after_s=0.2) as geocoder:
        result = geocoder.geocode(ELTHAM)
    elapsed = time.monotonic() - started
    assert result.error is None
    arrivals = [r["at"] for r in geo.requests_seen()]
    assert arrivals[1] - arrivals[0] >= 0.19  # asked 0.3 s, capped at 0.2 s
    # asked 60 s, capped at 0.2 s: a generous cap that only an uncapped 60 s wait would break
    assert arrivals[2] - arrivals[1] >= 0.19 and elapsed < 30


def test_retry_after_as_an_http_date_is_honoured(geo: GeocoderTestServer) -> None:
    from email.utils import formatdate

    geo.fail_next(1, mode="status", status=503, retry_after=formatdate(time.time() + 1.5, usegmt=True))
    with nominatim(geo, retries=1, max_retry_after_s=5.0) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.error is None
    first, second = (r["at"] for r in geo.requests_seen())
    assert second - first >= 0.4  # the date has one-second resolution; the 0.01 s backoff alone is far shorter


def test_retry_after_in_seconds_replaces_the_backoff(geo: GeocoderTestServer) -> None:
    geo.fail_next(1, mode="status", status=429, retry_after=0.5)
    with nominatim(geo, retries=1, backoff_s=0.01) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.error is None
    first, second = (r["at"] for r in geo.requests_seen())
    assert second - first >= 0.45


def test_rate_limited_past_the_retries_returns_an_error(geo: GeocoderTestServer) -> None:
    geo.fail_next(5, mode="status", status=429, retry_after=0.01)
    with nominatim(geo, retries=2) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.latitude is None and result.error == "nominatim: HTTP 429 (after 3 attempts)"
    assert geo.stats()["nominatim.search"] == 3


def test_timeout_is_retried_then_reported(geo: GeocoderTestServer) -> None:
    geo.fail_next(1, mode="timeout", sleep_s=1.0)
    with nominatim(geo, timeout_s=0.2, retries=1) as geocoder:
        recovered = geocoder.geocode(ELTHAM)
    assert recovered.error is None and recovered.latitude is not None

    # The server would answer after 30 s; two 0.2 s attempts give up long before (a cap only a client
    # that waited for the answer would break, whatever the load).
    geo.fail_next(2, mode="timeout", sleep_s=30.0)
    started = time.monotonic()
    with nominatim(geo, timeout_s=0.2, retries=1) as geocoder:
        failed = geocoder.geocode(ELTHAM)
    assert failed.latitude is None and "timed out" in (failed.error or "")
    assert time.monotonic() - started < 20


def test_a_dripping_geocoder_is_cut_at_the_per_call_deadline(geo: GeocoderTestServer) -> None:
    # One byte every 0.05 s of a ~4 KB answer: ~200 s a call, and no single read waits anywhere near the
    # 0.5 s timeout, so only a total deadline per call ends it. Bound: 2 calls x 0.5 s + a 0.05 s backoff; the
    # cap is generous, since without the deadline one call alone would take the drip's ~200 s.
    geo.fail_next(2, mode="drip", sleep_s=0.05)
    started = time.monotonic()
    with nominatim(geo, timeout_s=0.5, retries=1, backoff_s=0.05) as geocoder:
        failed = geocoder.geocode(ELTHAM)
    elapsed = time.monotonic() - started
    assert failed.latitude is None and "timed out" in (failed.error or "") and "0.5s per call" in (failed.error or "")
    assert geo.stats()["injected.drip"] == 2
    assert 1.0 <= elapsed < 20, elapsed  # both calls ran to their deadline


@pytest.mark.parametrize("make", [nominatim, google])
def test_garbage_json_is_a_failure_without_retry(geo: GeocoderTestServer, make) -> None:
    geo.fail_next(1, mode="garbage")
    with make(geo) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.latitude is None and "invalid JSON" in (result.error or "")
    assert geo.stats()["injected.garbage"] == 1 and geo.stats()["requests"] == 1


def test_google_over_query_limit_is_retried(geo: GeocoderTestServer) -> None:
    geo.fail_next(1, mode="over_query_limit")
    with google(geo) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.error is None and result.place_id == "ChIJgaJpvts31moRo3KzIyav0-w"
    assert geo.stats()["google.geocode"] == 2


def test_google_wrong_key_never_leaks_the_key(geo: GeocoderTestServer, caplog: pytest.LogCaptureFixture) -> None:
    wrong_key = "AIza-WRONG/secret+key=1"
    caplog.set_level(logging.DEBUG)
    with google(geo, key=wrong_key) as geocoder:
        result = geocoder.geocode(ELTHAM)
        assert wrong_key not in repr(geocoder)
    assert result.latitude is None and "REQUEST_DENIED" in (result.error or "")
    assert geo.stats()["google.geocode"] == 1  # a denied key is not retried
    request_logs = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert request_logs and all("key=***" in message for message in request_logs)  # httpx did log the URL
    encoded = ("AIza-WRONG%2Fsecret%2Bkey%3D1", "AIza-WRONG/secret+key=1", "AIza-WRONG%2Fsecret+key")
    for text in [result.error or "", caplog.text, *request_logs]:
        assert not any(form in text for form in encoded), text


def test_google_transport_errors_are_scrubbed_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = GeocoderTestServer(api_key=SECRET).start()
    base_url = server.base_url
    server.stop()  # nothing listens there any more: every attempt is a connection error
    with GoogleGeocoder(SECRET, base_url, rate_per_second=1000, timeout_s=1, retries=1, backoff_s=0.01) as geocoder:
        result = geocoder.geocode(ELTHAM)
    assert result.latitude is None and "transport error" in (result.error or "")
    assert "2 attempts" in (result.error or "")
    assert SECRET not in caplog.text and "s3cret" not in (result.error or "") + caplog.text


def test_geocoders_are_safe_to_share_between_threads(geo: GeocoderTestServer) -> None:
    addresses = [f"{n} Example St, Preston VIC 3072" for n in range(1, 25)]
    with nominatim(geo) as geocoder, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(geocoder.geocode, addresses))
    assert [r.address for r in results] == addresses
    assert all(r.error is None and r.latitude is not None for r in results)
    assert len({(r.latitude, r.longitude) for r in results}) == len(addresses)


def test_rate_limiter_spaces_calls_across_threads() -> None:
    limiter = RateLimiter(20.0)  # one slot every 50 ms
    stamps: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        limiter.acquire()
        with lock:
            stamps.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    # The k-th call to get through cannot start before its slot, k × 50 ms after the first: a lower bound
    # that holds on a loaded machine too (a late wake-up only makes a call later, never earlier).
    for k, stamp in enumerate(stamps):
        assert stamp - started >= k * 0.05 - 0.005, (k, [round(s - started, 3) for s in stamps])
    assert len(stamps) == 6  # every caller got through (no upper time bound: a loaded machine is slow)


def test_geocoder_requests_arrive_no_faster_than_the_rate(geo: GeocoderTestServer) -> None:
    addresses = [f"{n} Example St, Preston VIC 3072" for n in range(1, 6)]
    with nominatim(geo, rate_per_second=25.0) as geocoder, ThreadPoolExecutor(max_workers=5) as pool:
        started = time.monotonic()  # the server stamps arrivals with the same clock (it runs in this process)
        list(pool.map(geocoder.geocode, addresses))
    arrivals = sorted(r["at"] for r in geo.requests_seen())
    assert len(arrivals) == 5
    # The k-th request cannot arrive before its slot, k × 40 ms after the first slot (lower bounds hold
    # under load: delays only make requests later).
    for k, arrival in enumerate(arrivals):
        assert arrival - started >= k * 0.04 - 0.005, (k, [round(a - started, 3) for a in arrivals])


def test_make_geocoder_picks_and_validates() -> None:
    common = {"base_url": None, "user_agent": UA, "rate_per_second": 1.0, "timeout_s": 5.0}
    assert isinstance(make_geocoder("nominatim", google_api_key=None, **common), NominatimGeocoder)
    assert make_geocoder("nominatim", google_api_key=None, **common).base_url == "https://nominatim.openstreetmap.org"
    made = make_geocoder("google", google_api_key="k", **{**common, "base_url": "http://127.0.0.1:9"})
    assert isinstance(made, GoogleGeocoder) and made.base_url == "http://127.0.0.1:9"
    none = make_geocoder("none", google_api_key=None, **common)
    assert isinstance(none, NullGeocoder) and isinstance(none, Geocoder)
    assert none.geocode("x").model_dump() == {"address": "x", "latitude": None, "longitude": None, "place_id": None,
                                              "formatted_address": None, "components": {}, "error": None}
    with pytest.raises(ConfigError, match="GOOGLE_MAPS_API_KEY"):
        make_geocoder("google", google_api_key=None, **common)
    with pytest.raises(ConfigError, match="API key"):
        GoogleGeocoder("  ")
    with pytest.raises(ConfigError, match="unknown geocoder"):
        make_geocoder("bing", google_api_key=None, **common)
    with pytest.raises(ConfigError, match="rate_per_second"):
        make_geocoder("nominatim", google_api_key=None, **{**common, "rate_per_second": 0})
