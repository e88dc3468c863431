"""A total deadline for a synchronous HTTP call, enforced on every socket read, write and connect.

httpx's timeouts bound each socket operation, so a server sending one byte a second never trips them;
and a sync call in a worker thread cannot be cancelled from outside (Prefect's task timeout raises in
the thread, which never lands while it waits on a socket). So the bound lives where the waiting
happens: `call_deadline(s)` sets a deadline for the calling thread (a context variable), and
`DeadlineBackend`, the httpcore network backend under our clients, gives each operation at most the
time left and raises a timeout once it is spent. Hand-written because httpx/httpcore offer no total timeout.
The backend takes the httpcore module it serves (`httpcore`, or `httpcore2` under the OpenAI SDK's httpx2),
whose exceptions it raises so that each client maps them to its own timeout errors.
"""

from __future__ import annotations

import contextvars
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import httpcore

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("harvest_call_deadline", default=None)


@contextmanager
def call_deadline(seconds: float) -> Iterator[float]:
    """Every HTTP call made inside (on a `DeadlineBackend`) ends within `seconds` from now; nests to the earlier."""
    with deadline_at(time.monotonic() + seconds) as deadline:
        yield deadline


@contextmanager
def deadline_at(deadline: float) -> Iterator[float]:
    """Like `call_deadline`, for an absolute `time.monotonic()` deadline (to resume one, e.g. reading a body)."""
    outer = _DEADLINE.get()
    effective = deadline if outer is None else min(outer, deadline)
    token = _DEADLINE.set(effective)
    try:
        yield effective
    finally:
        _DEADLINE.reset(token)


def remaining_seconds() -> float | None:
    """Seconds left before the current deadline (may be <= 0), or None outside `call_deadline`."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def _bounded(timeout: float | None, error: type[Exception], doing: str) -> float | None:
    left = remaining_seconds()
    if left is None:
        return timeout
    if left <= 0:
        raise error(f"call deadline passed while {doing}")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream:
    """A socket stream whose every operation waits no longer than the current call's deadline allows."""

    def __init__(self, inner: typing.Any, core: ModuleType) -> None:
        self._inner = inner
        self._core = core

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._inner.read(max_bytes, _bounded(timeout, self._core.ReadTimeout, "reading"))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, self._core.WriteTimeout, "writing"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: typing.Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> _DeadlineStream:
        bounded = _bounded(timeout, self._core.ConnectTimeout, "starting TLS")
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded), self._core)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend:
    """Wraps a sync httpcore backend (by default `core`'s plain socket one) so calls honour `call_deadline`.

    Duck-typed rather than subclassing `httpcore.NetworkBackend`, so one class serves httpcore and httpcore2.
    """

    def __init__(self, inner: typing.Any = None, *, core: ModuleType = httpcore) -> None:
        self._core = core
        self._inner = inner if inner is not None else core.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> _DeadlineStream:
        bounded = _bounded(timeout, self._core.ConnectTimeout, "connecting")
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options), self._core)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> _DeadlineStream:
        bounded = _bounded(timeout, self._core.ConnectTimeout, "connecting")
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options), self._core)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
