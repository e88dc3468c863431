"""Backoff schedule for polling an embeddings batch with Prefect task retries."""

from __future__ import annotations

MAX_PREFECT_DELAYS = 50  # Prefect refuses more than 50 explicit retry delays; later retries reuse the last.


def poll_schedule(first_s: float, cap_s: float, total_s: float) -> tuple[int, list[float]]:
    """(retries, delays): intervals doubling from `first_s` to `cap_s` until they add up to `total_s`."""
    first_s = max(first_s, 0.01)
    cap_s = max(cap_s, first_s)
    delays: list[float] = []
    waited = 0.0
    delay = first_s
    retries = 0
    while waited < total_s:
        if len(delays) < MAX_PREFECT_DELAYS:
            delays.append(round(delay, 3))
        waited += delay
        retries += 1
        delay = min(delay * 2, cap_s)
    return max(retries, 1), delays or [first_s]
