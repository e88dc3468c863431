"""DNS rebinding (issue 16): a name whose DNS answer changes between the guard's check and the connection.

The resolver stand-in replaces `socket.getaddrinfo` for the process (what httpx/anyio, the image client,
asyncio's `open_connection` in the guard proxy and the SSRF guard all end up calling) and answers one
made-up name with a first address, then a different one on every later call. The guard is not touched.
Two shapes of the attack:

* private networks allowed (tests, an intranet crawl): the check sees loopback, the rebind points at the
  cloud metadata address, which is refused even then. The page must come from loopback, and the tripwire
  (tests/hostile/conftest.py) fails the test if anything dials 169.254.169.254.
* private networks refused (production): the check sees a public address, the rebind points at 127.0.0.1.
  The connection must go to the public address (the tripwire stops it there, off loopback) and the
  loopback site must never see the request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from harvest.crawl.guard_proxy import GuardProxy
from harvest.crawl.http_fetch import FetchFailed, HttpFetcher
from harvest.enrich.images.client import Validators, fetch_image_if_changed
from harvest.errors import ImageError
from harvest.settings import HarvestSettings
from testkit.hostile_site import HostileSite
from tests.helpers import self_signed_certificate
from tests.hostile.support import PUBLIC_HOST, UA, make_config
from tests.hostile.test_hostile_sites import event_page, names

NAME = "rebind.test"
METADATA = "169.254.169.254"
CHROMIUM = HarvestSettings().browser_path or "/usr/bin/chromium"
_real_getaddrinfo = socket.getaddrinfo
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")  # served as bytes, never decoded here


class RebindingDNS:
    """`socket.getaddrinfo` with one name whose answer is `first` on the first call and `then` afterwards."""

    def __init__(self, first: str, then: str) -> None:
        self.first = first
        self.then = then
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,  # noqa: A002
                 flags: int = 0) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if not isinstance(name, str) or name.lower().rstrip(".") != NAME:
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        with self._lock:
            self.calls += 1
            address = self.first if self.calls == 1 else self.then
        return _real_getaddrinfo(address, port, family, type, proto, flags)


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], RebindingDNS]:
    def install(first: str, then: str) -> RebindingDNS:
        dns = RebindingDNS(first, then)
        monkeypatch.setattr(socket, "getaddrinfo", dns)
        return dns

    return install


def _rebound_url(site: HostileSite, path: str) -> str:
    return site.url(path, host=NAME)


def _fetch(url: str, *, allow_private_networks: bool) -> Any:
    async def go() -> Any:
        async with HttpFetcher(user_agent=UA, allow_private_networks=allow_private_networks, timeout_s=2.0,
                               retries=0) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(go())


def test_a_redirect_hop_to_a_rebinding_name_is_fetched_from_the_checked_address(site, rebinding, loopback_only):
    site.redirect("/start", _rebound_url(site, "/page"))
    site.page("/page", event_page("Pinned"))
    dns = rebinding("127.0.0.1", METADATA)

    result = _fetch(site.url("/start"), allow_private_networks=True)

    assert result.status == 200 and result.redirects == [site.url("/start")]
    assert len(site.hits("/page")) == 1 and site.hits("/page")[0].headers["host"] == f"{NAME}:{site.port}"
    assert dns.calls == 1  # checked once; the connection used that answer instead of asking again
    assert loopback_only == []  # nothing dialled the metadata address


def test_a_public_answer_then_loopback_never_reaches_loopback(site, rebinding, loopback_only) -> None:
    site.page("/page", event_page("Internal"))
    rebinding(PUBLIC_HOST, "127.0.0.1")

    with pytest.raises(FetchFailed, match="connection failed"):
        _fetch(_rebound_url(site, "/page"), allow_private_networks=False)

    assert site.hits() == []  # the internal (loopback) address never saw the request
    assert loopback_only == [(PUBLIC_HOST, site.port)]  # the connection went where the guard checked
    loopback_only.clear()


def test_an_image_on_a_rebinding_name_is_downloaded_from_the_checked_address(site, rebinding, loopback_only):
    site.redirect("/img", _rebound_url(site, "/pic.jpg"))
    site.page("/pic.jpg", JPEG, content_type="image/jpeg")
    dns = rebinding("127.0.0.1", METADATA)

    data, _ = fetch_image_if_changed(site.url("/img"), Validators(), max_bytes=10_000, timeout_s=2.0,
                                     user_agent=UA, allow_private_networks=True)

    assert data == JPEG and len(site.hits("/pic.jpg")) == 1
    assert site.hits("/pic.jpg")[0].headers["host"] == f"{NAME}:{site.port}"
    assert dns.calls == 1
    assert loopback_only == []


def test_an_image_with_a_public_answer_then_loopback_never_reaches_loopback(site, rebinding, loopback_only):
    site.page("/pic.jpg", JPEG, content_type="image/jpeg")
    rebinding(PUBLIC_HOST, "127.0.0.1")

    with pytest.raises(ImageError, match="could not be downloaded"):
        fetch_image_if_changed(_rebound_url(site, "/pic.jpg"), Validators(), max_bytes=10_000, timeout_s=2.0,
                               user_agent=UA, allow_private_networks=False)

    assert site.hits() == []
    assert loopback_only == [(PUBLIC_HOST, site.port)]
    loopback_only.clear()


def _through_proxy(url: str, *, allow_private_networks: bool) -> httpx.Response:
    async def go() -> httpx.Response:
        proxy = GuardProxy(allow_private_networks=allow_private_networks)
        proxy_url = await proxy.start()
        try:
            async with httpx.AsyncClient(proxy=proxy_url, trust_env=False, timeout=5.0) as client:
                return await client.get(url)
        finally:
            await proxy.close()

    return asyncio.run(go())


def test_the_guard_proxy_dials_the_checked_address(site, rebinding, loopback_only) -> None:
    site.page("/page", event_page("Through the proxy"))
    dns = rebinding("127.0.0.1", METADATA)

    response = _through_proxy(_rebound_url(site, "/page"), allow_private_networks=True)

    assert response.status_code == 200 and "Through the proxy" in response.text
    assert len(site.hits("/page")) == 1 and site.hits("/page")[0].headers["host"] == f"{NAME}:{site.port}"
    assert dns.calls == 1
    assert loopback_only == []


def test_the_guard_proxy_never_reaches_loopback_after_a_public_answer(site, rebinding, loopback_only) -> None:
    site.page("/page", event_page("Internal"))
    rebinding(PUBLIC_HOST, "127.0.0.1")

    response = _through_proxy(_rebound_url(site, "/page"), allow_private_networks=False)

    assert response.status_code == 502
    assert site.hits() == []
    assert loopback_only == [(PUBLIC_HOST, site.port)]
    loopback_only.clear()


def test_chromium_renders_a_rebinding_name_from_the_checked_address(site, rebinding, run_crawl, loopback_only):
    site.page("/", event_page("Rendered", links=["/next"]))
    site.page("/next", event_page("Next"))
    dns = rebinding("127.0.0.1", METADATA)

    result = run_crawl(_rebound_url(site, "/"), make_config(render="browser"), browser_path=CHROMIUM,
                       allow_private_networks=True)

    assert names(result.pages) == {"Rendered", "Next"} and all(page.rendered for page in result.pages)
    # Chromium's navigations (httpx sends no Upgrade-Insecure-Requests), through the proxy's own connection.
    browser_hits = [hit for hit in site.hits("/") if "upgrade-insecure-requests" in hit.headers]
    assert browser_hits and browser_hits[0].headers["host"] == f"{NAME}:{site.port}"
    assert dns.calls == 1  # the crawl's guard, the route handler and the proxy share one answer
    assert result.stats.failed_urls == []
    assert loopback_only == []


def test_https_to_a_rebinding_name_keeps_the_name_for_sni_and_the_certificate(tmp_path, rebinding, loopback_only,
                                                                              monkeypatch) -> None:
    cert_path, key_path = self_signed_certificate(tmp_path, NAME)
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)  # type: ignore[assignment,return-value]

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = event_page("Over TLS").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # trust this site's certificate, as a CA bundle would
    dns = rebinding("127.0.0.1", METADATA)
    try:
        result = _fetch(f"https://{NAME}:{server.server_address[1]}/", allow_private_networks=True)
    finally:
        server.shutdown()
        server.server_close()

    assert result.status == 200 and "Over TLS" in result.text()  # the certificate was checked against the name
    assert server_names == [NAME]  # SNI carried the name while the socket went to 127.0.0.1
    assert dns.calls == 1
    assert loopback_only == []
