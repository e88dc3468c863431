"""Limits shared by every worker: Prefect global concurrency limits on the geocoder and OpenAI.

`harvest blocks register` creates them (`harvest-geocoder`: a rate limit of HARVEST_GEOCODER_RATE_PER_SECOND
calls/s; `harvest-openai`: at most HARVEST_OPENAI_MAX_CONCURRENT calls at once). Where they do not exist
(a laptop, the tests), only each process's own limiter applies and no API round trip is spent per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from prefect import get_client
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from blocks.register import GEOCODER_LIMIT, OPENAI_LIMIT

__all__ = ["GEOCODER_LIMIT", "OPENAI_LIMIT", "geocoder_gate", "limit_exists", "openai_slot"]


def limit_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return bool(limit.active)


def geocoder_gate() -> Callable[[], None] | None:
    """A call that blocks until the shared geocoder rate limit grants a slot, or None when there is none."""
    if not limit_exists(GEOCODER_LIMIT):
        return None
    return partial(rate_limit, GEOCODER_LIMIT, occupy=1, strict=True)


@contextmanager
def openai_slot() -> Iterator[None]:
    """Hold one slot of the shared OpenAI limit (when it exists) around a block of OpenAI calls."""
    if not limit_exists(OPENAI_LIMIT):
        yield
        return
    with concurrency(OPENAI_LIMIT, occupy=1, strict=True):
        yield
