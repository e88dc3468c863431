"""A tiny forward proxy on 127.0.0.1 that applies the SSRF guard to every connection Chromium opens.

Playwright's request interception only sees the first URL of a request: redirect hops are followed
inside Chromium without calling the route handler (verified with Playwright 1.65), so a public page
redirecting the browser to 169.254.169.254 or an intranet host would slip past it. Chromium is
therefore launched with this proxy (Playwright forces loopback through it too): each redirect hop,
fetch(), iframe and WebSocket is a new proxied connection and is checked by
the SSRF guard before we connect upstream. The proxy dials the address the guard approved itself (never the
name again), so a DNS answer that changes between the check and the connection cannot lead it inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from urllib.parse import urlsplit

from harvest.errors import DisallowedURLError
from harvest.net.pinned import AddressBook

log = logging.getLogger(__name__)

REFUSED_HEADER = "X-Harvest-Refused"
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# Hop-by-hop headers of the client-proxy connection; never forwarded upstream.
_HOP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}


class GuardProxy:
    """Forward proxy (HTTP absolute-form + CONNECT tunnels) that refuses what the SSRF guard refuses."""

    def __init__(
        self,
        *,
        allow_private_networks: bool,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        refused: Counter[str] | None = None,
        book: AddressBook | None = None,
    ) -> None:
        self.allow_private_networks = allow_private_networks
        self.book = book if book is not None else AddressBook(allow_private_networks=allow_private_networks)
        self.connect_timeout_s = connect_timeout_s
        self.refused: Counter[str] = refused if refused is not None else Counter()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on an ephemeral loopback port; return the proxy URL to give Chromium."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD_BYTES)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            log.debug("proxy connection ended: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = request_line.split(" ", 2)
        except ValueError:
            await _reply(writer, 400, "malformed request line")
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host = host.strip("[]")
            port = int(port_text) if port_text.isdigit() else 443
            # The guard only accepts http(s) URLs; a tunnel is checked as https to the same host:port.
            check_url = f"https://{_netloc(host, port)}/"
        else:
            parts = urlsplit(target)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                await _reply(writer, 400, f"proxy expects an absolute http URL, got {target!r}")
                return
            host = parts.hostname
            port = parts.port or 80
            check_url = target
        try:
            addresses = await asyncio.to_thread(self.book.check, check_url)
        except DisallowedURLError as exc:
            self.refused[host] += 1
            log.info("browser connection refused by the SSRF guard proxy: %s", exc)
            await _reply(writer, 403, str(exc))
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                _open_first(addresses, port), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            await _reply(writer, 502, f"cannot connect to {host}:{port}: {exc}")
            return
        try:
            if method.upper() == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                path = parts.path or "/"
                if parts.query:
                    path += f"?{parts.query}"
                headers = [
                    line
                    for line in header_lines
                    if line and line.split(":", 1)[0].strip().lower() not in _HOP_HEADERS
                ]
                # One request per upstream connection: the next request may be for another host.
                upstream_head = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
                upstream_writer.write(upstream_head.encode("latin-1"))
                await upstream_writer.drain()
            await _pipe_both(reader, writer, upstream_reader, upstream_writer)
        finally:
            with contextlib.suppress(Exception):
                upstream_writer.close()


async def _open_first(addresses: list[str], port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first approved address that answers (by IP: the name is not resolved again)."""
    error: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(address, port, limit=MAX_HEAD_BYTES)
        except OSError as exc:
            error = exc
    raise error if error is not None else OSError(f"no approved address to connect to on port {port}")


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _reply(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = reason.encode("utf-8", "replace")
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}.get(status, "Error")
    safe_reason = reason.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 403:
        head += f"{REFUSED_HEADER}: {safe_reason}\r\n"
    writer.write(head.encode("latin-1") + b"\r\n" + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


async def _pipe_both(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until either side closes (then the whole exchange is over)."""
    tasks = [
        asyncio.ensure_future(_copy(client_reader, upstream_writer)),
        asyncio.ensure_future(_copy(upstream_reader, client_writer)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
