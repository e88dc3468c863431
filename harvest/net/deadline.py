"""A total deadline for a synchronous HTTP call, enforced on every socket read, write and connect.

httpx's timeouts bound each socket operation, so a server sending one byte a second never trips them;
and a sync call in a worker thread cannot be cancelled from outside (Prefect's task timeout raises in
the thread, which never lands while it waits on a socket). So the bound lives where the waiting
happens: `call_deadline(s)` sets a deadline for the calling thread (a context variable), and
`DeadlineBackend`, the httpcore network backend under our clients, gives each operation at most the
time left and raises a timeout once it is spent. Hand-written because httpx/httpcore offer no total timeout.
"""

from __future__ import annotations

import contextvars
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager

import httpcore
from httpcore import NetworkBackend, NetworkStream

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("harvest_call_deadline", default=None)


@contextmanager
def call_deadline(seconds: float) -> Iterator[float]:
    """Every HTTP call made inside (on a `DeadlineBackend`) ends within `seconds` from now; nests to the earlier."""
    deadline = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(deadline if outer is None else min(outer, deadline))
    try:
        yield deadline
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


class _DeadlineStream(NetworkStream):
    """A socket stream whose every operation waits no longer than the current call's deadline allows."""

    def __init__(self, inner: NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout, "reading"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout, "writing"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: typing.Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout, "starting TLS")
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(NetworkBackend):
    """Wraps a sync httpcore backend (by default the plain socket one) so calls honour `call_deadline`."""

    def __init__(self, inner: NetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout, "connecting")
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout, "connecting")
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
