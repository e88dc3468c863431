"""httpx transports on our network backends: pinned to approved addresses and/or bounded by `call_deadline`."""

from __future__ import annotations

from typing import Any, cast

import httpcore
import httpx

from harvest.net.deadline import DeadlineBackend
from harvest.net.pinned import AddressBook, AsyncPinnedBackend, PinnedBackend
from harvest.net.tls import shared_ssl_context

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def sync_transport(*, book: AddressBook | None = None,
                   limits: httpx.Limits = DEFAULT_LIMITS) -> httpx.HTTPTransport:
    """A sync transport whose calls honour `call_deadline`; with `book`, it connects only to approved addresses."""
    backend = DeadlineBackend(PinnedBackend(book) if book is not None else None)
    transport = httpx.HTTPTransport(verify=shared_ssl_context(), limits=limits)
    # httpx builds its httpcore pool without a backend argument; the pool is the one place to give it one.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=shared_ssl_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=cast(httpcore.NetworkBackend, backend),  # duck-typed (see DeadlineBackend)
    )
    return transport


def async_transport(*, book: AddressBook, limits: httpx.Limits = DEFAULT_LIMITS) -> httpx.AsyncHTTPTransport:
    """An async transport that connects only to addresses `book` approved (asyncio cancellation bounds its time)."""
    transport = httpx.AsyncHTTPTransport(verify=shared_ssl_context(), limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=shared_ssl_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncPinnedBackend(book),
    )
    return transport


def env_proxy_mounts(*, asynchronous: bool, limits: httpx.Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The proxy transports HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY ask for, as httpx would mount them.

    httpx ignores the environment once it is given a transport, so a client on ours passes these as `mounts`
    to keep an operator's proxy. Through a proxy the proxy resolves names: pinning covers direct connections.
    """
    # httpx's own reading of the variables (NO_PROXY rules included), rather than a second copy of it.
    from httpx._utils import get_environment_proxies

    mounts: dict[str, Any] = {}
    for pattern, proxy in get_environment_proxies().items():
        if proxy is None:
            mounts[pattern] = None  # NO_PROXY: the client's own (pinned) transport
        elif asynchronous:
            mounts[pattern] = httpx.AsyncHTTPTransport(proxy=proxy, verify=shared_ssl_context(), limits=limits)
        else:
            mounts[pattern] = httpx.HTTPTransport(proxy=proxy, verify=shared_ssl_context(), limits=limits)
    return mounts
