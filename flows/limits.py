"""Limits shared by every worker: Prefect global concurrency limits, one per enrichment that declares one
(`Enrichment.limit`: the geocoder's request rate, OpenAI's calls at once).

`harvest blocks register` creates them (blocks/register.py). Where they do not exist (a laptop, the tests), only
each process's own limiter applies and no API round trip is spent per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from prefect import get_client
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from harvest.enrich.base import GlobalLimit

__all__ = ["gate", "limit_exists", "slot"]


def limit_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return bool(limit.active)


def gate(limit: GlobalLimit | None) -> Callable[[], None] | None:
    """For a shared rate: a call that blocks until the limit grants a slot (each request passes it), or None when
    the limit is not a rate or does not exist."""
    if limit is None or limit.kind != "rate" or not limit_exists(limit.name):
        return None
    return partial(rate_limit, limit.name, occupy=1, strict=True)


@contextmanager
def slot(limit: GlobalLimit | None) -> Iterator[None]:
    """For a concurrency limit: hold one of its slots (when it exists) around a block of calls."""
    if limit is None or limit.kind != "concurrency" or not limit_exists(limit.name):
        yield
        return
    with concurrency(limit.name, occupy=1, strict=True):
        yield
