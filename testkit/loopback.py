"""The lifecycle shared by the local wire-protocol servers: a threaded HTTP server on loopback that
starts on a free port, and stops without serving kept-alive connections after shutdown."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

Self = TypeVar("Self", bound="LoopbackServer")


class TrackingHTTPServer(ThreadingHTTPServer):
    """Tracks open connections so stop() can close kept-alive ones instead of serving them after shutdown."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class LoopbackHandler(BaseHTTPRequestHandler):
    """Hands each GET/POST to `app.handle(self, method)` and gives it body and response helpers."""

    protocol_version = "HTTP/1.1"
    json_content_type = "application/json"
    app: Any

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.app.handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.app.handle(self, "POST")

    def read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked): always read, so keep-alive stays in sync."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status: int, payload: bytes, content_type: str,
                   headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout fired): nothing left to answer

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(data).encode("utf-8"), self.json_content_type, headers)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass


class LoopbackServer:
    """Base for a test server: subclasses set `handler_class` (whose `app` attribute receives the server
    object) and `thread_name`, and use `_host`/`_port`/`_stopping`."""

    handler_class: type[BaseHTTPRequestHandler] = LoopbackHandler
    thread_name = "loopback-test-server"

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self._host = host
        self._port = port
        self._stopping = threading.Event()
        self._httpd: TrackingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self: Self) -> Self:
        handler = type("_BoundHandler", (self.handler_class,), {"app": self})
        self._httpd = TrackingHTTPServer((self._host, self._port), handler)
        self._port = self._httpd.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_all()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self: Self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    # The control routes every test server offers, so an out-of-process server can be driven too.
    def stats(self) -> dict[str, int]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def configure(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        raise NotImplementedError

    def _handle_control(self, req: Any, method: str, path: str, body: bytes) -> None:
        """`GET /_testkit/stats`, `POST /_testkit/reset`, `POST /_testkit/config` (JSON body)."""
        try:
            if path == "/_testkit/stats" and method == "GET":
                req.send_json(200, self.stats())
            elif path == "/_testkit/reset" and method == "POST":
                self.reset()
                req.send_json(200, {"ok": True})
            elif path == "/_testkit/config" and method == "POST":
                self.configure(json.loads(body or b"{}"))
                req.send_json(200, {"ok": True})
            else:
                req.send_json(404, {"error": f"no control route {method} {path}"})
        except (ValueError, TypeError) as exc:
            req.send_json(400, {"error": str(exc)})
