"""SSRF guard with HARVEST_ALLOW_PRIVATE_NETWORKS false: internal addresses are refused and logged, at the
first hop, after a redirect from an allowed host, in sitemaps, and for images; nothing off loopback is
ever contacted (the suite's tripwire would fail the test)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from harvest.enrich.images.client import process_activity_image
from harvest.errors import DisallowedURLError
from harvest.storage import LocalStore
from harvest.urls import check_fetch_allowed
from tests.hostile.support import PUBLIC_HOST, UA, make_config, public_url

# (URL, what the refusal must say). Beyond tests/unit/test_urls_and_polling.py: the whole private ranges,
# IPv6 link-local/ULA/mapped forms, and the numeric spellings of 127.0.0.1 that resolvers accept.
INTERNAL = [
    ("http://127.1.2.3/", "non-public address 127.1.2.3"),
    ("http://10.255.0.9:8080/admin", "non-public address 10.255.0.9"),
    ("http://172.31.255.254/", "non-public address 172.31.255.254"),
    ("http://192.168.255.1/", "non-public address 192.168.255.1"),
    ("http://169.254.10.10/", "non-public address 169.254.10.10"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address 169.254.169.254"),
    ("http://[fd00:ec2::254]/", "cloud metadata address fd00:ec2::254"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata address"),
    ("http://[::1]:8080/", "non-public address ::1"),
    ("http://[fe80::1]/", "non-public address fe80::1"),
    ("http://[fc00::1]/", "non-public address fc00::1"),
    ("http://[fd12:3456::1]/", "non-public address fd12:3456::1"),
    ("http://[::ffff:10.0.0.1]/", "non-public address ::ffff:10.0.0.1"),
    ("http://100.64.0.1/", "non-public address 100.64.0.1"),  # carrier-grade NAT
    ("http://0.0.0.0/", "non-public address 0.0.0.0"),
    ("http://2130706433/", "non-public address 127.0.0.1"),  # 127.0.0.1 as one decimal number
    ("http://0x7f000001/", "non-public address 127.0.0.1"),
    ("http://0177.0.0.1/", "non-public address 127.0.0.1"),  # octal
    ("http://127%E3%80%820%E3%80%820%E3%80%821/".replace("%E3%80%82", "\u3002"), "non-public address 127.0.0.1"),
    ("http://localhost/", "localhost resolves to non-public address 127.0.0.1"),
    ("http://LocalHost:9/", "resolves to non-public address 127.0.0.1"),
]


@pytest.mark.parametrize(("url", "reason"), INTERNAL)
def test_guard_refuses_internal_addresses_and_names_resolving_there(url: str, reason: str) -> None:
    with pytest.raises(DisallowedURLError, match="refused") as refused:
        check_fetch_allowed(url, allow_private_networks=False)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://" + "a" * 64 + ".example/",  # a DNS label over 63 characters: the IDNA codec raises UnicodeError
        "http://a..example/",  # an empty label
        "http://" + "\u00e9" * 70 + ".example/",
        "http://93.184.216.34:99999/",  # port out of range: urlsplit raises ValueError
    ],
)
def test_guard_refuses_malformed_hosts_with_its_own_error(url: str) -> None:
    """A hostile page decides these strings: the guard must answer DisallowedURLError, never crash."""
    with pytest.raises(DisallowedURLError, match="refused"):
        check_fetch_allowed(url, allow_private_networks=False)
    with pytest.raises(DisallowedURLError, match="refused"):
        check_fetch_allowed(url, allow_private_networks=True)


def test_guard_allows_a_public_address_so_the_tests_above_can_fail() -> None:
    check_fetch_allowed(f"http://{PUBLIC_HOST}/", allow_private_networks=False)
    check_fetch_allowed("http://[2606:2800:220:1:248:1893:25c8:1946]/", allow_private_networks=False)


# ---- the crawler, starting on an allowed (public) host --------------------------------------------


def test_links_to_internal_hosts_are_refused_and_logged(public_proxy, run_crawl, caplog) -> None:
    site = public_proxy
    targets = [
        f"http://127.0.0.1:{site.port}/secret",
        f"http://localhost:{site.port}/secret",
        "http://10.0.0.7/secret",
        "http://172.16.5.4/secret",
        "http://192.168.1.1/secret",
        "http://169.254.169.254/latest/meta-data/iam",
        "http://[::1]/secret",
        "http://[fd00::5]/secret",
    ]
    links = "".join(f'<a href="{t}">x</a>' for t in targets) + '<a href="/ok">ok</a>'
    site.page(public_url("/"), f"<html><body><p>{'Family events. ' * 20}</p>{links}</body></html>")
    site.page(public_url("/ok"), f"<html><body><p>{'Fine page. ' * 30}</p></body></html>")

    with caplog.at_level(logging.WARNING, logger="harvest.crawl"):
        result = run_crawl(public_url("/"), make_config(follow_external_links=True), allow_private_networks=False)

    assert sorted(result.paths()) == ["/", "/ok"]
    refused = {failure.url: failure.reason for failure in result.stats.failed_urls}
    assert len(refused) == len(targets), refused
    for reason in refused.values():
        assert reason.startswith("refused") and ("non-public address" in reason or "metadata" in reason), reason
    # Every plain-HTTP request goes through the proxy, so a request that got past the guard would show here.
    assert not [t for t in site.targets() if "secret" in t or "meta-data" in t]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert logged.count("crawl failed for") == len(targets)


@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.1:{port}/internal", "http://localhost:{port}/internal", "http://10.1.2.3/internal",
     "http://[::1]:{port}/internal", "http://169.254.169.254/latest/meta-data/"],
)
def test_redirect_from_an_allowed_host_to_an_internal_one_is_refused(public_proxy, run_crawl, caplog,
                                                                      location: str) -> None:
    site = public_proxy
    target = location.format(port=site.port)
    site.page(public_url("/"), f"<html><body><p>{'Family events. ' * 20}</p><a href='/go'>go</a></body></html>")
    site.redirect(public_url("/go"), target)
    site.page("/internal", "<html><body>internal admin page</body></html>")

    with caplog.at_level(logging.WARNING, logger="harvest.crawl"):
        result = run_crawl(public_url("/"), make_config(), allow_private_networks=False)

    failure = result.failed("/go")
    assert failure.reason.startswith("refused") and target in failure.reason
    assert result.paths() == ["/"]
    assert len(site.hits(public_url("/go"))) == 1
    assert not [t for t in site.targets() if "internal" in t or "meta-data" in t]
    assert any("crawl failed for" in r.getMessage() and "/go" in r.getMessage() for r in caplog.records)


def test_a_start_url_redirecting_inside_is_refused_before_any_page(public_proxy, run_crawl) -> None:
    from harvest.errors import CrawlError

    public_proxy.redirect(public_url("/"), "http://192.168.0.1/")
    with pytest.raises(CrawlError, match=r"start URL .* refused .*192\.168\.0\.1"):
        run_crawl(public_url("/"), make_config(), allow_private_networks=False)


def test_sitemaps_pointing_inside_are_refused_and_reported(public_proxy, run_crawl, caplog) -> None:
    site = public_proxy
    site.page(public_url("/robots.txt"),
              "User-agent: *\nSitemap: http://10.9.9.9/sitemap.xml\nSitemap: http://" + "a" * 64 + ".example/s.xml\n"
              f"Sitemap: {public_url('/sitemap.xml')}\n", content_type="text/plain")
    index = (
        '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>http://127.0.0.1:{site.port}/inner.xml</loc></sitemap>"
        "<sitemap><loc>http://a..example/s.xml</loc></sitemap></sitemapindex>"
    )
    site.page(public_url("/sitemap.xml"), index, content_type="application/xml")
    site.page(public_url("/"), f"<html><body><p>{'Family events. ' * 20}</p></body></html>")

    with caplog.at_level(logging.WARNING, logger="harvest.crawl"):
        result = run_crawl(public_url("/"), make_config(), allow_private_networks=False)

    assert result.paths() == ["/"]
    problems = " | ".join(result.stats.problems)
    assert "sitemap http://10.9.9.9/sitemap.xml" in problems and "non-public address 10.9.9.9" in problems
    assert f"sitemap http://127.0.0.1:{site.port}/inner.xml" in problems
    assert problems.count("refused") == 4, problems
    assert "/inner.xml" not in " ".join(site.targets())


# ---- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [(url, reason) for url, reason in INTERNAL if "metadata" not in reason][:6]
    + [("http://localhost:{port}/photo.jpg", "localhost resolves to non-public address 127.0.0.1"),
       ("http://127.0.0.1:{port}/photo.jpg", "non-public address 127.0.0.1"),
       ("http://169.254.169.254/latest/meta-data/", "cloud metadata address")],
)
def test_images_at_internal_addresses_are_refused_without_a_request(site, tmp_path: Path, url: str,
                                                                     reason: str) -> None:
    url = url.format(port=site.port)
    info = process_activity_image("a1", url, LocalStore(tmp_path), max_bytes=10_000, max_pixels=10_000,
                                  timeout_s=2.0, user_agent=UA, allow_private_networks=False)
    assert info.error and "refused by the address guard" in info.error and reason in info.error
    assert info.uri is None and info.source_url == url
    assert site.targets() == []
