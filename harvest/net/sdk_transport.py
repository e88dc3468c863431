"""The OpenAI SDK's transport (httpx2): every request, headers and body, ends within a stated total time.

The SDK's `timeout` is httpx2's per-operation timeout, so an API (or a proxy in front of it) that trickles
its answer never trips it, and a sync call in a worker thread cannot be cancelled from outside. Here each
HTTP request gets a total deadline (`harvest.net.deadline`) that also covers reading its body; the SDK's
own retries each get a fresh one. Batch output and input files (`/files/{id}/content`) can be hundreds of
megabytes, so their downloads get a separate, longer bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, cast

import httpcore2
import httpx2

from harvest.net.deadline import DeadlineBackend, deadline_at
from harvest.net.tls import shared_ssl_context

DOWNLOAD_SUFFIX = "/content"


class _BoundedBody(httpx2.SyncByteStream):
    """A response body read under the deadline its request started with."""

    def __init__(self, inner: Any, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            with deadline_at(self._deadline):
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._inner.close()


class DeadlineTransport(httpx2.HTTPTransport):
    """httpx2 transport: each request ends within `request_s` (file downloads: `download_s`), body included."""

    def __init__(self, *, request_s: float, download_s: float, limits: httpx2.Limits | None = None) -> None:
        limits = limits if limits is not None else httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
        super().__init__(verify=shared_ssl_context(), limits=limits)
        self.request_s = request_s
        self.download_s = download_s
        # httpx2 builds its httpcore2 pool without a backend argument; the pool is the one place to give it one.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=shared_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=cast(httpcore2.NetworkBackend, DeadlineBackend(core=httpcore2)),  # duck-typed
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        seconds = self.download_s if request.url.path.endswith(DOWNLOAD_SUFFIX) else self.request_s
        deadline = time.monotonic() + seconds
        with deadline_at(deadline):
            response = super().handle_request(request)
        return httpx2.Response(status_code=response.status_code, headers=response.headers,
                               stream=_BoundedBody(response.stream, deadline), extensions=response.extensions)


def deadline_http_client(*, request_s: float, download_s: float) -> httpx2.Client:
    """An httpx2 client for `openai.OpenAI(http_client=...)`: the SDK's defaults, our per-request deadlines,
    and the environment's proxies (httpx2 ignores them once given a transport)."""
    from httpx2._utils import get_environment_proxies  # httpx2's own reading of HTTP(S)_PROXY/NO_PROXY
    from openai import DefaultHttpxClient

    mounts: dict[str, Any] = {
        pattern: None if proxy is None else httpx2.HTTPTransport(proxy=proxy, verify=shared_ssl_context())
        for pattern, proxy in get_environment_proxies().items()
    }
    return DefaultHttpxClient(transport=DeadlineTransport(request_s=request_s, download_s=download_s), mounts=mounts)
