"""A real HTTP server on 127.0.0.1 whose pages each test defines, and a log of every request it received."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from harvest.models import RunConfig
from tests.crawl_harness import CrawlResult, crawl_runner, make_config

UA = "harvest/0.1 (+https://github.com/harvest; test)"

Response = tuple[int, dict[str, str], bytes]
Handler = Callable[["Request"], Response]


@dataclass
class Request:
    path: str  # path + query, as sent
    headers: dict[str, str]
    host: str
    at: float = field(default_factory=time.monotonic)


class Site:
    """Routes keyed by exact path+query (falling back to the path alone); unknown paths answer 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.hits: list[Request] = []
        self.lock = threading.Lock()
        self.port = 0

    def reset(self) -> None:
        with self.lock:
            self.routes.clear()
            self.hits.clear()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def page(
        self,
        path: str,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        all_headers = {"Content-Type": content_type, **(headers or {})} if content_type else dict(headers or {})
        self.routes[path] = lambda _request: (status, all_headers, data)

    def html(self, path: str, *, links: list[str] = (), title: str = "", extra: str = "") -> None:
        """A simple page with enough text to never look like a script shell, linking to `links`."""
        anchors = "".join(f'<a href="{link}">{link}</a> ' for link in links)
        text = f"{title or path} " + "Family fun activities for everyone this weekend. " * 6
        head = f"<head><title>{title or path}</title>{extra}</head>"
        self.page(path, f"<html>{head}<body><p>{text}</p>{anchors}</body></html>")

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = lambda _request: (status, {"Location": location}, b"")

    def requested(self, path: str) -> list[Request]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path]

    def paths(self) -> list[str]:
        with self.lock:
            return [hit.path for hit in self.hits]


def _make_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            headers = {key.lower(): value for key, value in self.headers.items()}
            request = Request(path=self.path, headers=headers, host=self.headers.get("Host", ""))
            with site.lock:
                site.hits.append(request)
            handler = site.routes.get(self.path) or site.routes.get(urlsplit(self.path).path)
            if handler is None:
                status, headers, body = 404, {"Content-Type": "text/html"}, b"<html><body>not found</body></html>"
            else:
                status, headers, body = handler(request)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the crawler stopped reading (size cap): expected

        def log_message(self, *args: object) -> None:
            pass

    return _Handler


def _serve(site: Site) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(site))
    server.daemon_threads = True
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def _module_site() -> Iterator[Site]:
    site = Site()
    server, thread = _serve(site)
    yield site
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def site(_module_site: Site) -> Site:
    """The module's server with an empty route table (no robots.txt, no sitemap) for this test."""
    _module_site.reset()
    return _module_site


@pytest.fixture
def other_site() -> Iterator[Site]:
    """A second origin, for cross-site and per-origin robots tests."""
    site = Site()
    server, thread = _serve(site)
    yield site
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def ua() -> str:
    return UA


@pytest.fixture
def cfg() -> Callable[..., RunConfig]:
    return make_config


@pytest.fixture
def run_crawl() -> Callable[..., CrawlResult]:
    """Crawl to the end and collect everything (loopback allowed, no browser unless given)."""
    return crawl_runner({"browser_path": None, "user_agent": UA, "allow_private_networks": True,
                         "per_host_concurrency": 4, "timeout_s": 5.0, "backoff_s": 0.05})
