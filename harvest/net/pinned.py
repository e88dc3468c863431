"""Connect to what was checked: httpcore network backends that dial only addresses the SSRF guard approved.

The guard resolves a name and checks its addresses; if the client then resolved the name again to
connect, a DNS answer that changed in between (DNS rebinding: public for the check, 127.0.0.1 or
169.254.169.254 for the connection) would get through. Here the check and the connection share one
resolution: `AddressBook` resolves and checks a host once (remembered briefly), and the backends
connect to those IP addresses themselves. The host name still goes to TLS (SNI, certificate check)
and to the Host header, because httpcore passes it on above the socket. Hand-written because httpx
has no resolver hook; an httpcore network backend is the documented place to decide where sockets go.
"""

from __future__ import annotations

import threading
import time
import typing

import anyio.to_thread
import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream, NetworkBackend, NetworkStream

from harvest.urls import approved_addresses, fetch_target

ADDRESS_TTL_SECONDS = 60.0


class AddressBook:
    """Each host's approved addresses (or its refusal), resolved once and remembered for `ttl_s`.

    Thread-safe: the crawler's loop, its resolver threads and the guard proxy share one book, so every
    check and every connection of a crawl use the same answer for a name.
    """

    def __init__(self, *, allow_private_networks: bool, ttl_s: float = ADDRESS_TTL_SECONDS) -> None:
        self.allow_private_networks = allow_private_networks
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, list[str] | Exception]] = {}
        self._lock = threading.Lock()

    def check(self, url: str) -> list[str]:
        """The guard for a URL: its host's approved addresses, or DisallowedURLError saying why not."""
        host, port = fetch_target(url)
        return self.approved(host, port, url=url)

    def approved(self, host: str, port: int, *, url: str | None = None) -> list[str]:
        """The addresses a connection to `host` may use; raises DisallowedURLError as the guard does."""
        key = host.lower().strip("[]")
        with self._lock:
            cached = self._entries.get(key)
        if cached is None or time.monotonic() - cached[0] >= self.ttl_s:
            try:
                verdict: list[str] | Exception = approved_addresses(
                    key, port, allow_private_networks=self.allow_private_networks, url=url)
            except Exception as exc:  # the refusal is remembered like an approval
                verdict = exc
            cached = (time.monotonic(), verdict)
            with self._lock:
                self._entries[key] = cached
        if isinstance(cached[1], Exception):
            raise cached[1]
        return list(cached[1])


def _connect_error(host: str, port: int, errors: list[Exception]) -> Exception:
    if errors and all(isinstance(e, httpcore.ConnectTimeout) for e in errors):
        return errors[-1]
    return httpcore.ConnectError(f"cannot connect to {host}:{port} at any approved address: "
                                 + "; ".join(f"{type(e).__name__}: {e}" for e in errors))


class PinnedBackend(NetworkBackend):
    """A sync backend that connects only to the addresses `book` approved for the requested host."""

    def __init__(self, book: AddressBook, inner: NetworkBackend | None = None) -> None:
        self.book = book
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> NetworkStream:
        errors: list[Exception] = []
        for address in self.book.approved(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                errors.append(exc)
        raise _connect_error(host, port, errors)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> NetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through the SSRF guard")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AsyncPinnedBackend(AsyncNetworkBackend):
    """The async twin of `PinnedBackend` (resolution runs off the event loop)."""

    def __init__(self, book: AddressBook, inner: AsyncNetworkBackend | None = None) -> None:
        self.book = book
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(self.book.approved, host, port)
        errors: list[Exception] = []
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                errors.append(exc)
        raise _connect_error(host, port, errors)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None) -> AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through the SSRF guard")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
