"""Turn an address into coordinates with Nominatim or Google, one address at a time, never failing the run.

Geocoding is an enrichment: a single address that cannot be resolved (no result, rate limited past the
retries, a broken answer) comes back as ``Geocode(address=..., error="...")`` with empty coordinates, and
the caller records it. Only a misconfiguration (Google without a key, an unknown geocoder) raises, because
then every address would fail.

Both public services ask clients to throttle (Nominatim: at most 1 request/s), and the flow calls the
geocoder from several threads, so each geocoder owns one thread-safe :class:`RateLimiter`.

The Google key travels in the query string (that is how the Geocoding API takes it), so it would show up
in httpx's exception messages and its request log lines; every error string is scrubbed and a logging
filter on httpx's loggers scrubs every registered key from their records.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, quote_plus

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from harvest.errors import ConfigError
from harvest.models import Geocode
from harvest.net.deadline import call_deadline
from harvest.net.transport import env_proxy_mounts, sync_transport
from harvest.retries import exponential_backoff, parse_retry_after, wait_retry_after

logger = logging.getLogger(__name__)

NOMINATIM_URL = "https://nominatim.openstreetmap.org"
GOOGLE_URL = "https://maps.googleapis.com"
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}

# Street types and "saint" collapse to one spelling: "277 Saint Helena Road" and "277 St Helena Rd" share a key.
_ABBREVIATIONS = {
    "road": "rd", "street": "st", "saint": "st", "drive": "dr", "avenue": "ave", "av": "ave",
    "crescent": "cres", "court": "ct", "place": "pl", "parade": "pde", "boulevard": "blvd",
    "highway": "hwy", "lane": "ln", "terrace": "tce", "circuit": "cct", "close": "cl", "grove": "gr",
}


def normalize_address(address: str) -> str:
    """The per-run cache key: case, accents' width forms, punctuation, spacing and street-type spelling folded."""
    text = unicodedata.normalize("NFKC", address).casefold()
    words = re.findall(r"[^\W_]+", text)
    return " ".join(_ABBREVIATIONS.get(word, word) for word in words)


NO_RESULT = "no result for this address"


def is_settled(geocode: Geocode) -> bool:
    """An answer worth remembering: coordinates, or the service saying it knows no such address (a timeout or
    a 429 is not: the next run asks again)."""
    return geocode.latitude is not None or bool(geocode.error and geocode.error.endswith(NO_RESULT))


@runtime_checkable
class Geocoder(Protocol):
    """Anything that turns one address into a Geocode (errors in ``.error``, never raised)."""

    def geocode(self, address: str) -> Geocode: ...


class RequestRefused(Exception):
    """Raised by a `before_request` gate to stop a request before it is sent; its message becomes the address's
    error (the budget cannot pay for it)."""


class GatedGeocoder(Protocol):
    """A Geocoder that calls `before_request` right before each request it sends, every retry included: what
    a paid service bills is requests, not addresses."""

    def geocode(self, address: str, *, before_request: Callable[[], None] | None = None) -> Geocode: ...


class RateLimiter:
    """Spaces calls at least ``1/rate_per_second`` apart across all threads sharing it."""

    def __init__(self, rate_per_second: float) -> None:
        if not rate_per_second > 0:
            raise ConfigError(f"geocoder rate_per_second must be > 0, got {rate_per_second!r}")
        self.interval = 1.0 / rate_per_second
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        """Block until this caller's slot; slots are handed out in call order."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        delay = slot - now
        if delay > 0:
            time.sleep(delay)


_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_LIMITERS_GUARD = threading.Lock()


def shared_limiter(base_url: str, rate_per_second: float) -> RateLimiter:
    """One limiter per service and rate in this process: geocoders built by parallel chunk tasks share it,
    so together they still make at most `rate_per_second` calls."""
    with _LIMITERS_GUARD:
        key = (base_url, rate_per_second)
        if key not in _LIMITERS:
            _LIMITERS[key] = RateLimiter(rate_per_second)
        return _LIMITERS[key]


class _Attempt(Exception):
    """One failed attempt: `retryable` says whether another try may help, `wait_s` what the server asked."""

    def __init__(self, message: str, *, retryable: bool, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.wait_s = wait_s


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Attempt) and exc.retryable


def _asked_wait(state: RetryCallState) -> float | None:
    """What the failed attempt's server asked for in Retry-After, if anything."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc.wait_s if isinstance(exc, _Attempt) else None


class _HttpGeocoder:
    """Shared machinery: one httpx client, the rate limiter, retries with capped backoff, scrubbed errors."""

    service = "geocoder"

    def __init__(self, base_url: str, *, user_agent: str, rate_per_second: float, timeout_s: float,
                 retries: int, backoff_s: float, max_retry_after_s: float) -> None:
        if retries < 0:
            raise ConfigError(f"geocoder retries must be >= 0, got {retries}")
        if not timeout_s > 0:
            raise ConfigError(f"geocoder timeout_s must be > 0, got {timeout_s!r}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.limiter = shared_limiter(self.base_url, rate_per_second)
        # A limit shared with other processes (the flow passes Prefect's global rate limit here).
        self.before_call: Callable[[], None] | None = None
        self.timeout_s = timeout_s
        # httpx's timeout is per socket operation (a drip of one byte a second never trips it); the transport
        # also holds each call to `call_deadline(timeout_s)` in total, headers and body included.
        self._client = httpx.Client(
            timeout=timeout_s, headers={"User-Agent": user_agent, "Accept": "application/json"},
            follow_redirects=False, transport=sync_transport(), mounts=env_proxy_mounts(asynchronous=False),
        )

    # Subclasses: build the request and read the answer.
    def _request(self, address: str) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    def _parse(self, address: str, data: Any) -> Geocode:
        raise NotImplementedError

    def _scrub(self, text: str) -> str:
        return text

    def geocode(self, address: str, *, before_request: Callable[[], None] | None = None) -> Geocode:
        """Geocode one address; failures come back in ``.error`` (retries exhausted, no result, bad answer, or
        `before_request` refusing a request: it runs before each one, retries included)."""
        if not address or not address.strip():
            return Geocode(address=address, error="empty address")
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_retry_after(_asked_wait, fallback=exponential_backoff(self.backoff_s),
                                  cap_s=self.max_retry_after_s),
            retry=retry_if_exception(_is_retryable),
            before_sleep=self._log_retry,
            reraise=True,  # the last _Attempt itself, turned into the Geocode's error below
        )
        try:
            result: Geocode = retrying(self._limited_attempt, address, before_request)
            return result
        except RequestRefused as refused:
            return Geocode(address=address, error=str(refused))
        except _Attempt as failure:
            last = self._scrub(str(failure))
        tries = "1 attempt" if self.retries == 0 else f"{self.retries + 1} attempts"
        return Geocode(address=address, error=f"{self.service}: {last} (after {tries})")

    def _limited_attempt(self, address: str, before_request: Callable[[], None] | None) -> Geocode:
        """One attempt, after this process's rate limiter and the shared limit (every retry waits its turn too),
        then the caller's gate."""
        self.limiter.acquire()
        if self.before_call is not None:
            self.before_call()
        if before_request is not None:
            before_request()
        return self._attempt(address)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.debug("%s: %s; retry %d/%d in %.2fs", self.service, self._scrub(str(exc)), state.attempt_number,
                     self.retries, delay)

    def _attempt(self, address: str) -> Geocode:
        url, params = self._request(address)
        try:
            with call_deadline(self.timeout_s):
                response = self._client.get(url, params=params)
        except httpx.TimeoutException as exc:
            raise _Attempt(f"timed out ({type(exc).__name__}, {self.timeout_s:g}s per call)", retryable=True) from None
        except httpx.TransportError as exc:
            raise _Attempt(f"transport error: {type(exc).__name__}: {exc}", retryable=True) from None
        if response.status_code in RETRYABLE_STATUS:
            raise _Attempt(f"HTTP {response.status_code}", retryable=True,
                           wait_s=parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code != 200:
            raise _Attempt(f"HTTP {response.status_code}", retryable=False)
        try:
            data = response.json()
        except ValueError:
            snippet = response.text[:60].replace("\n", " ")
            raise _Attempt(f"invalid JSON in response: {snippet!r}", retryable=False) from None
        return self._parse(address, data)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> _HttpGeocoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NominatimGeocoder(_HttpGeocoder):
    """OpenStreetMap Nominatim (public or self-hosted): needs a real User-Agent and at most 1 request/s."""

    service = "nominatim"

    def __init__(self, base_url: str = NOMINATIM_URL, *, user_agent: str, rate_per_second: float = 1.0,
                 timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 1.0,
                 max_retry_after_s: float = 30.0, countrycodes: str | None = None) -> None:
        super().__init__(base_url, user_agent=user_agent, rate_per_second=rate_per_second, timeout_s=timeout_s,
                         retries=retries, backoff_s=backoff_s, max_retry_after_s=max_retry_after_s)
        self.countrycodes = countrycodes

    def _request(self, address: str) -> tuple[str, dict[str, str]]:
        params = {"q": address, "format": "jsonv2", "limit": "1", "addressdetails": "1"}
        if self.countrycodes:
            params["countrycodes"] = self.countrycodes
        return f"{self.base_url}/search", params

    def _parse(self, address: str, data: Any) -> Geocode:
        if not isinstance(data, list):
            raise _Attempt(f"unexpected answer: a JSON {type(data).__name__}, not a list", retryable=False)
        if not data:
            return Geocode(address=address, error=f"nominatim: {NO_RESULT}")
        top = data[0]
        try:
            latitude, longitude = float(top["lat"]), float(top["lon"])
        except (KeyError, TypeError, ValueError):
            raise _Attempt("result without usable lat/lon", retryable=False) from None
        details = top.get("address") or {}
        components = {
            "street_number": details.get("house_number"),
            "route": details.get("road"),
            "street_address": " ".join(p for p in (details.get("house_number"), details.get("road")) if p) or None,
            "city": details.get("city") or details.get("town") or details.get("village") or details.get("suburb"),
            "state_province": details.get("state"),
            "postal_code": details.get("postcode"),
            "country_code": (details.get("country_code") or "").upper() or None,
        }
        return Geocode(
            address=address, latitude=latitude, longitude=longitude,
            place_id=str(top["place_id"]) if top.get("place_id") is not None else None,
            formatted_address=top.get("display_name"),
            components={k: str(v) for k, v in components.items() if v},
        )


class _ScrubSecrets(logging.Filter):
    """Rewrites log records that carry a registered secret (httpx logs full request URLs at INFO)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        scrubbed = message
        for secret in list(self.secrets):
            scrubbed = _scrub_key(scrubbed, secret)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


# One filter for the process, installed once: geocoders are created per task run and often never closed.
_SECRET_FILTER = _ScrubSecrets()
_HTTP_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")
for _name in _HTTP_LOGGERS:
    logging.getLogger(_name).addFilter(_SECRET_FILTER)


def _scrub_key(text: str, secret: str) -> str:
    """`text` with the secret (raw or URL-encoded) and any ``key=`` query value replaced by ***."""
    if secret:
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, "***")
    return re.sub(r"([?&]key=)[^&\s'\"]+", r"\1***", text)


class GoogleGeocoder(_HttpGeocoder):
    """Google Geocoding API. The key is a secret: it never appears in an error, a log line or ``repr``."""

    service = "google"

    def __init__(self, api_key: str, base_url: str = GOOGLE_URL, *, user_agent: str = "harvest",
                 rate_per_second: float = 10.0, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 1.0,
                 max_retry_after_s: float = 30.0, region: str | None = None) -> None:
        if not api_key or not api_key.strip():
            raise ConfigError("the google geocoder needs an API key: set GOOGLE_MAPS_API_KEY")
        super().__init__(base_url, user_agent=user_agent, rate_per_second=rate_per_second, timeout_s=timeout_s,
                         retries=retries, backoff_s=backoff_s, max_retry_after_s=max_retry_after_s)
        self._api_key = api_key
        self.region = region
        _SECRET_FILTER.secrets.add(api_key)

    def __repr__(self) -> str:
        return f"GoogleGeocoder(base_url={self.base_url!r}, api_key='***')"

    def _scrub(self, text: str) -> str:
        return _scrub_key(text, self._api_key)

    def _request(self, address: str) -> tuple[str, dict[str, str]]:
        params = {"address": address, "key": self._api_key}
        if self.region:
            params["region"] = self.region
        return f"{self.base_url}/maps/api/geocode/json", params

    def _parse(self, address: str, data: Any) -> Geocode:
        if not isinstance(data, dict):
            raise _Attempt(f"unexpected answer: a JSON {type(data).__name__}, not an object", retryable=False)
        status = data.get("status")
        detail = self._scrub(str(data.get("error_message") or "").strip())
        if status == "ZERO_RESULTS":
            return Geocode(address=address, error=f"google: {NO_RESULT}")
        if status in ("OVER_QUERY_LIMIT", "UNKNOWN_ERROR"):
            raise _Attempt(f"status {status}" + (f": {detail}" if detail else ""), retryable=True)
        if status != "OK":
            raise _Attempt(f"status {status}" + (f": {detail}" if detail else ""), retryable=False)
        results = data.get("results") or []
        if not results:
            return Geocode(address=address, error=f"google: status OK but {NO_RESULT}")
        top = results[0]
        try:
            location = top["geometry"]["location"]
            latitude, longitude = float(location["lat"]), float(location["lng"])
        except (KeyError, TypeError, ValueError):
            raise _Attempt("result without usable geometry.location", retryable=False) from None
        return Geocode(
            address=address, latitude=latitude, longitude=longitude, place_id=top.get("place_id"),
            formatted_address=top.get("formatted_address"), components=_google_components(top),
        )



def _google_components(result: dict[str, Any]) -> dict[str, str]:
    by_type: dict[str, dict[str, str]] = {}
    for component in result.get("address_components") or []:
        for kind in component.get("types") or []:
            by_type.setdefault(kind, component)

    def long(kind: str) -> str | None:
        return by_type.get(kind, {}).get("long_name")

    number, route = long("street_number"), long("route")
    components = {
        "street_number": number,
        "route": route,
        "street_address": " ".join(p for p in (number, route) if p) or None,
        "city": long("locality") or long("postal_town") or long("sublocality"),
        "state_province": long("administrative_area_level_1"),
        "postal_code": long("postal_code"),
        "country_code": by_type.get("country", {}).get("short_name"),
    }
    return {k: v for k, v in components.items() if v}


class NullGeocoder:
    """Geocoding switched off (``HARVEST_GEOCODER=none``): no request, no coordinates, and no error either."""

    def geocode(self, address: str, *, before_request: Callable[[], None] | None = None) -> Geocode:
        return Geocode(address=address)  # no request, so nothing to gate


def make_geocoder(kind: str, *, base_url: str | None, google_api_key: str | None, user_agent: str,
                  rate_per_second: float, timeout_s: float, retries: int = 3,
                  before_call: Callable[[], None] | None = None) -> GatedGeocoder:
    """The geocoder the settings ask for; raises ConfigError for an unknown kind or Google without a key.

    `before_call` runs before every request, after the in-process limiter: a limit shared across processes.
    """
    kind = (kind or "").strip().lower()
    geocoder: _HttpGeocoder
    if kind == "none":
        return NullGeocoder()
    if kind == "nominatim":
        geocoder = NominatimGeocoder(base_url or NOMINATIM_URL, user_agent=user_agent, rate_per_second=rate_per_second,
                                     timeout_s=timeout_s, retries=retries)
    elif kind == "google":
        if not google_api_key:
            raise ConfigError("HARVEST_GEOCODER=google needs GOOGLE_MAPS_API_KEY (or use nominatim/none)")
        geocoder = GoogleGeocoder(google_api_key, base_url or GOOGLE_URL, user_agent=user_agent,
                                  rate_per_second=rate_per_second, timeout_s=timeout_s, retries=retries)
    else:
        raise ConfigError(f"unknown geocoder {kind!r}: use nominatim, google or none")
    geocoder.before_call = before_call
    return geocoder
