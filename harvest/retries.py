"""Retries with backoff (tenacity) and the one Retry-After parser, shared by the crawler's fetcher and the geocoders.

Each caller keeps its own rules of what is worth retrying and how many attempts it makes; what they share is
here: how long to wait. The server's Retry-After, when the failed attempt carried one, wins over our backoff
(the server knows when it will have capacity again), and both are capped so that one header cannot park a
worker for a day. The OpenAI SDK does the same for itself and is left to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import RetryCallState
from tenacity.wait import wait_base, wait_exponential, wait_random


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header; None when it is absent or garbled.

    Accepts delta-seconds, fractions included (RFC 9110 says whole seconds, but servers and proxies send
    "0.5" and it means what it says), and an HTTP date (a date in the past means "now": 0). A negative,
    infinite or NaN number is garbled, not "retry at once" or "never".
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT; "-0000" parses as naive
    current = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC)
    return max(0.0, (when - current).total_seconds())


def exponential_backoff(base_s: float) -> wait_base:
    """`base_s`, 2×, 4×, ... after the 1st, 2nd, 3rd failed attempt, plus up to a quarter of `base_s` of jitter
    so that parallel callers that failed together do not all come back at the same instant."""
    return wait_exponential(multiplier=base_s, exp_base=2) + wait_random(0, base_s / 4)


class wait_retry_after(wait_base):  # lower case like tenacity's own wait strategies
    """The server's Retry-After when the last attempt carried one, else `fallback`; at most `cap_s` either way."""

    def __init__(
        self, asked: Callable[[RetryCallState], float | None], *, fallback: wait_base, cap_s: float
    ) -> None:
        self.asked = asked
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> float:
        asked = self.asked(retry_state)
        wait = self.fallback(retry_state) if asked is None else asked
        return max(0.0, min(wait, self.cap_s))
