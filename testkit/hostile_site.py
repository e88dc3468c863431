"""A misbehaving web site on loopback, for the hostile-input tests: each route answers with fixed bytes or
runs a function that writes (or withholds) the response itself: slow heads, byte drips, endless redirects.

It also works as a plain forward proxy: a client configured with ``HTTP_PROXY=<site.base_url>`` sends
``GET http://93.184.216.34/page`` here, and the route key is then the absolute URL. That lets a test give
the crawler a *public* first hop (the SSRF guard allows it) while every byte still stays on 127.0.0.1.

    with HostileSite() as site:
        site.page("/", "<html>...</html>")
        site.route("/slow", lambda req: (time.sleep(2), req.send_bytes(200, b"late", "text/html")))
        site.hits("/slow")    # -> [Hit(...)]: every request received, in order
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from testkit.loopback import LoopbackHandler, LoopbackServer

RouteFunc = Callable[[LoopbackHandler], None]


@dataclass
class Hit:
    target: str  # the request target as sent: "/path?q" directly, "http://host/path" through the proxy
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class HostileSite(LoopbackServer):
    """Routes keyed by request target (exact, then without the query); anything else is a 404."""

    thread_name = "hostile-site"

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self.routes: dict[str, RouteFunc] = {}
        self._hits: list[Hit] = []
        self._lock = threading.Lock()

    # ---- defining the site ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self._host}:{self.port}{path}"

    def reset(self) -> None:
        with self._lock:
            self.routes.clear()
            self._hits.clear()

    def route(self, target: str, func: RouteFunc) -> None:
        self.routes[target] = func

    def page(self, target: str, body: str | bytes, *, status: int = 200,
             content_type: str = "text/html; charset=utf-8", headers: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.routes[target] = lambda req: req.send_bytes(status, data, content_type, headers)

    def redirect(self, target: str, location: str, status: int = 302) -> None:
        self.routes[target] = lambda req: req.send_bytes(status, b"", "text/plain", {"Location": location})

    # ---- what was asked ------------------------------------------------------------------------

    def hits(self, target: str | None = None) -> list[Hit]:
        with self._lock:
            return [hit for hit in self._hits if target is None or hit.target == target]

    def targets(self) -> list[str]:
        return [hit.target for hit in self.hits()]

    # ---- serving -------------------------------------------------------------------------------

    def handle(self, req: LoopbackHandler, method: str) -> None:
        target = req.path
        with self._lock:
            self._hits.append(Hit(target, {k.lower(): v for k, v in req.headers.items()}))
        if method == "POST":
            req.read_body()
        func = self.routes.get(target) or self.routes.get(target.split("?", 1)[0])
        if func is None and not target.startswith("/"):  # proxied: also try the path alone
            func = self.routes.get(urlsplit(target).path)
        if func is None:
            req.send_bytes(404, b"<html><body>not found</body></html>", "text/html")
            return
        try:
            func(req)
        except (BrokenPipeError, ConnectionResetError):
            req.close_connection = True  # the client gave up: that is what most of these routes test


def drip(body: bytes, *, every_s: float, content_type: str = "text/html",
         chunk: int = 1) -> RouteFunc:
    """A route that sends its headers at once, then `chunk` bytes every `every_s` seconds."""

    def route(req: LoopbackHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        for start in range(0, len(body), chunk):
            req.wfile.write(body[start : start + chunk])
            req.wfile.flush()
            time.sleep(every_s)

    return route


def stall(seconds: float, then: bytes = b"<html><body>too late</body></html>") -> RouteFunc:
    """A route that says nothing for `seconds` (a read timeout for any sane client), then answers."""

    def route(req: LoopbackHandler) -> None:
        time.sleep(seconds)
        req.send_bytes(200, then, "text/html")

    return route


def counter(*responses: tuple[int, dict[str, str], bytes]) -> RouteFunc:
    """Answer with the given (status, headers, body) in turn, then keep repeating the last one."""
    calls = {"n": 0}
    lock = threading.Lock()

    def route(req: LoopbackHandler) -> None:
        with lock:
            index = min(calls["n"], len(responses) - 1)
            calls["n"] += 1
        status, headers, body = responses[index]
        content_type = headers.get("Content-Type", "text/html")
        extra = {k: v for k, v in headers.items() if k != "Content-Type"}
        req.send_bytes(status, body, content_type, extra)

    return route
