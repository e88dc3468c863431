"""The hostile-input suite: real crawler, extractor and image code against a misbehaving site on loopback.

A tripwire makes sure no test here ever opens a connection off 127.0.0.1/::1: if a guard regressed, the
test fails on the tripwire instead of sending a packet to a private or public address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator

import pytest

from testkit.hostile_site import HostileSite
from tests.crawl_harness import crawl_runner
from tests.hostile.support import UA, CrawlResult, make_config

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback_or_local(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX socket path
        return True
    host = str(address[0]).split("%", 1)[0]  # type: ignore[index]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse (and record) any connection to an address that is not loopback; the test then fails."""
    attempts: list[object] = []

    def connect(self: socket.socket, address: object) -> None:
        if not _is_loopback_or_local(address):
            attempts.append(address)
            raise OSError(101, f"hostile-suite tripwire: connection to {address} refused (not loopback)")
        return _real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if not _is_loopback_or_local(address):
            attempts.append(address)
            return 101
        return _real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert attempts == [], f"connections attempted off loopback: {attempts}"


@pytest.fixture(scope="module")
def _module_site() -> Iterator[HostileSite]:
    with HostileSite() as server:
        yield server


@pytest.fixture
def site(_module_site: HostileSite) -> HostileSite:
    """The module's hostile site with no routes (so no robots.txt and no sitemap: both 404)."""
    _module_site.reset()
    return _module_site


@pytest.fixture
def public_proxy(site: HostileSite, monkeypatch: pytest.MonkeyPatch) -> HostileSite:
    """Route the crawler's plain-HTTP requests through the hostile site as a forward proxy.

    Then `http://93.184.216.34/...` passes the SSRF guard (a public address) and is answered by the
    site's routes keyed by absolute URL, so a test can start on an allowed host with private networks
    refused, and check what happens at the next hop.
    """
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, site.base_url)
    for name in ("ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return site


@pytest.fixture
def run_crawl() -> Callable[..., CrawlResult]:
    """Crawl to the end (plain HTTP, loopback allowed unless told otherwise, short timeouts)."""
    return crawl_runner({"browser_path": None, "user_agent": UA, "allow_private_networks": True,
                         "per_host_concurrency": 4, "timeout_s": 2.0, "backoff_s": 0.02, "retries": 1},
                        config_for=make_config)
