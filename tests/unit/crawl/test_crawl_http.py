"""The crawler in plain-HTTP mode against a real loopback server: what it fetches, refuses, retries, records."""

from __future__ import annotations

import threading
import time

import pytest

from harvest.crawl import CrawlOptions, CrawlStats, crawl
from harvest.errors import CrawlError
from harvest.models import RunConfig


def _options(ua: str, browser_path: str | None = None) -> CrawlOptions:
    return CrawlOptions(
        browser_path=browser_path, user_agent=ua, allow_private_networks=True, per_host_concurrency=4, timeout_s=20.0
    )


def _counter_handler(responses: list[tuple[int, dict[str, str], bytes]]):
    """Answer with the given responses in order, then keep repeating the last one."""
    calls = {"n": 0}

    def handler(_request) -> tuple[int, dict[str, str], bytes]:
        index = min(calls["n"], len(responses) - 1)
        calls["n"] += 1
        return responses[index]

    return handler


PAGE = (
    200,
    {"Content-Type": "text/html"},
    b"<html><body><p>" + b"Recovered page with content. " * 10 + b"</p></body></html>",
)


# ---- traversal -----------------------------------------------------------------------------------


def test_breadth_first_order_and_depth_limit(site, run_crawl, cfg) -> None:
    site.html("/", links=["/a", "/b"])
    site.html("/a", links=["/a1"])
    site.html("/b", links=["/b1"])
    site.html("/a1", links=["/a2"])
    site.html("/b1")
    site.html("/a2")

    result = run_crawl(site.url("/"), cfg(max_depth=2), max_concurrency=1)

    assert result.paths() == ["/", "/a", "/b", "/a1", "/b1"]
    assert [page.depth for page in result.pages] == [0, 1, 1, 2, 2]
    assert "/a2" not in site.paths()
    assert result.stats.skipped["max_depth"] == 1
    assert result.stats.pages_fetched == result.stats.pages_http == 5
    assert result.stats.pages_rendered == 0
    assert all(page.status == 200 and page.content_type == "text/html" and not page.rendered for page in result.pages)


def test_max_depth_zero_fetches_only_the_start_page(site, run_crawl, cfg) -> None:
    site.html("/", links=["/a"])
    site.html("/a")
    result = run_crawl(site.url("/"), cfg(max_depth=0))
    assert result.paths() == ["/"]
    assert "/a" not in site.paths()


def test_max_pages_stops_the_crawl(site, run_crawl, cfg) -> None:
    links = [f"/p{i}" for i in range(20)]
    site.html("/", links=links)
    for link in links:
        site.html(link)

    result = run_crawl(site.url("/"), cfg(max_pages=5))

    assert len(result.pages) == 5
    assert result.stats.pages_fetched == 5
    assert sum(1 for path in site.paths() if path.startswith("/p")) == 4
    assert result.stats.skipped["max_pages"] == 16


def test_include_and_exclude_globs_filter_paths(site, run_crawl, cfg) -> None:
    site.html("/", links=["/events/1", "/events/2", "/events/private/3", "/blog/x"])
    for path in ("/events/1", "/events/2", "/events/private/3", "/blog/x"):
        site.html(path)

    result = run_crawl(site.url("/"), cfg(include_paths=["/events/*"], exclude_paths=["/events/private/*"]))

    assert sorted(result.paths()) == ["/", "/events/1", "/events/2"]
    assert "/blog/x" not in site.paths() and "/events/private/3" not in site.paths()
    assert result.stats.skipped["excluded"] == 2


def test_external_links_are_ignored_unless_asked(site, other_site, run_crawl, cfg) -> None:
    site.html("/", links=[other_site.url("/ext", host="localhost"), "/local"])
    site.html("/local")
    other_site.html("/ext")

    result = run_crawl(site.url("/"), cfg())
    assert sorted(result.paths()) == ["/", "/local"]
    assert other_site.paths() == []
    assert result.stats.skipped["external"] == 1

    followed = run_crawl(site.url("/"), cfg(follow_external_links=True))
    assert other_site.url("/ext", host="localhost") in followed.urls
    assert "/ext" in other_site.paths()


def test_non_http_links_are_never_followed(site, run_crawl, cfg) -> None:
    site.html(
        "/",
        links=[
            "mailto:info@example.org",
            "tel:+15551234",
            "javascript:alert(1)",
            "data:text/html,<b>x</b>",
            "file:///etc/passwd",
            "ftp://example.org/file",
            "/ok",
        ],
    )
    site.html("/ok")

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/ok"]
    assert result.stats.skipped["non_http"] == 6


def test_fragments_and_session_ids_do_not_refetch_a_page(site, run_crawl, cfg) -> None:
    site.html("/", links=["/a#top", "/a;jsessionid=123ABC", "/a?PHPSESSID=abc", "/a?sid=9", "/a", "/A-other#x"])
    site.html("/a")
    site.html("/A-other")

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/A-other", "/a"]
    assert [path for path in site.paths() if path.lower().startswith("/a")] in (["/a", "/A-other"], ["/A-other", "/a"])


def test_rel_nofollow_and_meta_nofollow_are_honoured(site, run_crawl, cfg) -> None:
    site.page(
        "/",
        '<html><body><p>' + "Lots of text here. " * 20 + '</p><a href="/followed">a</a>'
        '<a rel="nofollow" href="/not-followed">b</a><a href="/meta">c</a></body></html>',
    )
    site.html("/followed")
    site.html("/meta", links=["/behind-meta"], extra='<meta name="robots" content="noindex, nofollow">')
    site.html("/behind-meta")

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/followed", "/meta"]
    assert "/not-followed" not in site.paths() and "/behind-meta" not in site.paths()
    assert result.stats.skipped["nofollow"] == 2


def test_non_html_responses_are_skipped_not_failed(site, run_crawl, cfg) -> None:
    site.html("/", links=["/flyer.pdf"])
    site.page("/flyer.pdf", b"%PDF-1.4 ...", content_type="application/pdf")

    result = run_crawl(site.url("/"), cfg())

    assert result.paths() == ["/"]
    assert result.stats.skipped["not_html"] == 1
    assert result.stats.failed_urls == []


# ---- robots.txt and sitemaps ---------------------------------------------------------------------


def test_robots_txt_rules_for_our_agent_are_honoured(site, run_crawl, cfg) -> None:
    site.page(
        "/robots.txt",
        "User-agent: *\nDisallow: /private\n\n"
        "User-agent: harvest\nDisallow: /secret\nAllow: /secret/public\nDisallow: /*.cgi$\n",
        content_type="text/plain",
    )
    site.html("/", links=["/private/x", "/secret/a", "/secret/public/b", "/open", "/run.cgi"])
    for path in ("/private/x", "/secret/a", "/secret/public/b", "/open", "/run.cgi"):
        site.html(path)

    result = run_crawl(site.url("/"), cfg())

    # Our own group replaces the * group; the longest match wins (Allow /secret/public).
    assert sorted(result.paths()) == ["/", "/open", "/private/x", "/secret/public/b"]
    assert "/secret/a" not in site.paths() and "/run.cgi" not in site.paths()
    assert result.stats.skipped["robots"] == 2
    assert len(site.requested("/robots.txt")) == 1


def test_robots_txt_with_a_byte_order_mark_is_honoured_from_its_first_line(site, run_crawl, cfg) -> None:
    # Notepad and some CMSs save robots.txt with a UTF-8 BOM; read as plain UTF-8 it hid this first group.
    site.page("/robots.txt", b"\xef\xbb\xbfUser-agent: *\nDisallow: /private\n", content_type="text/plain")
    site.html("/", links=["/private/x", "/open"])
    site.html("/private/x")
    site.html("/open")

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/open"]
    assert "/private/x" not in site.paths() and result.stats.skipped["robots"] == 1


def test_robots_crawl_delay_spaces_requests(site, run_crawl, cfg) -> None:
    site.page("/robots.txt", "User-agent: *\nCrawl-delay: 0.3\n", content_type="text/plain")
    site.html("/", links=["/a", "/b"])
    site.html("/a")
    site.html("/b")

    run_crawl(site.url("/"), cfg())

    starts = sorted(hit.at for hit in site.hits if hit.path in ("/", "/a", "/b"))
    assert len(starts) == 3
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    # Arrival times at the server: a gap is short by however late the earlier request arrived (a clean-clone CI
    # saw 0.27988 s against a 0.28 bound), so each gap gets 50 ms for that and the whole span holds the delay.
    assert min(gaps) >= 0.25, gaps
    assert starts[-1] - starts[0] >= 2 * 0.3 - 0.02, gaps


def test_robots_crawl_delay_spaces_the_sitemap_fetch_too(site, run_crawl, cfg) -> None:
    """The sitemap is asked for through the host's gate like a page (issue 32's fleet bench saw a site asking for
    Crawl-delay 0.2 get its /sitemap.xml 0.13 s after the start page)."""
    site.page("/robots.txt", "User-agent: *\nCrawl-delay: 0.5\n", content_type="text/plain")
    site.html("/", links=["/a"])
    site.html("/a")

    run_crawl(site.url("/"), cfg())

    starts = sorted(hit.at for hit in site.hits if hit.path in ("/", "/sitemap.xml", "/a"))
    assert len(starts) == 3, [hit.path for hit in site.hits]
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert min(gaps) >= 0.4, gaps


def test_robots_txt_server_error_means_disallow_everything(site, run_crawl, cfg) -> None:
    site.page("/robots.txt", "overloaded", status=503, content_type="text/plain")
    site.html("/")

    with pytest.raises(CrawlError, match=r"robots\.txt answered HTTP 503"):
        run_crawl(site.url("/"), cfg(), retries=1)
    assert "/" not in site.paths()


def test_sitemap_index_from_robots_seeds_the_frontier(site, run_crawl, cfg) -> None:
    robots = f"User-agent: *\nAllow: /\nSitemap: {site.url('/sitemap-index.xml')}\n"
    site.page("/robots.txt", robots, content_type="text/plain")
    site.page(
        "/sitemap-index.xml",
        '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>{site.url('/sitemap-events.xml')}</loc></sitemap></sitemapindex>",
        content_type="application/xml",
    )
    site.page(
        "/sitemap-events.xml",
        '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<url><loc>{site.url('/orphan-1')}</loc></url><url><loc>{site.url('/orphan-2')}</loc></url>"
        "<url><loc>https://elsewhere.example/page</loc></url></urlset>",
        content_type="application/xml",
    )
    site.html("/")  # links to nothing: the orphans are only in the sitemap
    site.html("/orphan-1")
    site.html("/orphan-2")

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/orphan-1", "/orphan-2"]
    assert {page.depth for page in result.pages if page.url.endswith("orphan-1")} == {1}
    assert result.stats.skipped["external"] == 1
    assert "/sitemap.xml" not in site.paths()  # robots.txt named the sitemap; no guessing


def test_default_sitemap_location_is_tried(site, run_crawl, cfg) -> None:
    site.page(
        "/sitemap.xml",
        f"<urlset><url><loc>{site.url('/listed')}</loc></url></urlset>",
        content_type="text/xml",
    )
    site.html("/")
    site.html("/listed")

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/listed"]


def test_text_rss_and_atom_sitemaps_from_robots_seed_the_frontier(site, run_crawl, cfg) -> None:
    robots = (
        "User-agent: *\nAllow: /\n"
        f"Sitemap: {site.url('/sitemap.txt')}\nSitemap: {site.url('/events.rss')}\nSitemap: {site.url('/news.atom')}\n"
    )
    site.page("/robots.txt", robots, content_type="text/plain")
    site.page("/sitemap.txt", f"\ufeff{site.url('/from-text')}\r\nnot a url\n\n", content_type="text/plain")
    site.page(
        "/events.rss",
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Events</title>'
        f"<link>{site.url('/')}</link><item><title>Fair</title><link>{site.url('/from-rss')}</link></item>"
        "</channel></rss>",
        content_type="application/rss+xml",
    )
    site.page(
        "/news.atom",
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f'<link rel="self" href="{site.url("/news.atom")}"/>'
        f'<entry><title>Story</title><link rel="edit" href="{site.url("/edit/1")}"/>'
        '<link href="/from-atom"/></entry></feed>',
        content_type="application/atom+xml",
    )
    site.html("/")  # links to nothing: the pages are only in the sitemaps
    for path in ("/from-text", "/from-rss", "/from-atom", "/edit/1"):
        site.html(path)

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.paths()) == ["/", "/from-atom", "/from-rss", "/from-text"]
    assert result.stats.problems == []


# ---- identity ------------------------------------------------------------------------------------


def test_canonical_url_dedupes_pages(site, run_crawl, cfg) -> None:
    canonical = f'<link rel="canonical" href="{site.url("/product")}">'
    site.html("/", links=["/product?ref=home", "/product?ref=mail", "/product"])
    for path in ("/product?ref=home", "/product?ref=mail", "/product"):
        site.html(path, extra=canonical)

    result = run_crawl(site.url("/"), cfg())

    assert sorted(result.urls) == [site.url("/"), site.url("/product")]
    assert result.stats.skipped["duplicate"] == 2
    product = next(page for page in result.pages if page.url.endswith("/product"))
    assert product.requested_url.startswith(site.url("/product"))


# ---- redirects and the SSRF guard ----------------------------------------------------------------


def test_redirects_up_to_ten_hops_are_followed_and_more_are_refused(site, run_crawl, cfg) -> None:
    for i in range(10):
        site.redirect(f"/ten/{i}", f"/ten/{i + 1}" if i < 9 else "/ten-end", status=301 if i % 2 else 302)
    for i in range(11):
        site.redirect(f"/eleven/{i}", f"/eleven/{i + 1}" if i < 10 else "/eleven-end")
    site.html("/ten-end")
    site.html("/eleven-end")
    site.html("/", links=["/ten/0", "/eleven/0"])

    result = run_crawl(site.url("/"), cfg())

    ten = next(page for page in result.pages if page.requested_url.endswith("/ten/0"))
    assert ten.url == site.url("/ten-end") and ten.final_url == site.url("/ten-end")
    failure = result.failed("/eleven/0")
    assert "too many redirects" in failure.reason
    assert "/eleven-end" not in site.paths()


def test_redirect_loop_is_detected(site, run_crawl, cfg) -> None:
    site.redirect("/loop-a", "/loop-b")
    site.redirect("/loop-b", site.url("/loop-a"))
    site.html("/", links=["/loop-a"])

    result = run_crawl(site.url("/"), cfg())

    assert "redirect loop" in result.failed("/loop-a").reason
    assert len(site.requested("/loop-a")) == 1


def test_redirect_to_the_metadata_address_is_refused(site, run_crawl, cfg) -> None:
    site.redirect("/innocent", "http://169.254.169.254/latest/meta-data/iam")
    site.html("/", links=["/innocent"])

    result = run_crawl(site.url("/"), cfg())

    failure = result.failed("/innocent")
    assert "metadata" in failure.reason and "refused" in failure.reason
    assert result.paths() == ["/"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_guard_refuses_a_loopback_start_url(site, run_crawl, cfg, host: str) -> None:
    site.html("/")
    with pytest.raises(CrawlError, match=r"refused .*non-public address"):
        run_crawl(site.url("/", host=host), cfg(), allow_private_networks=False)
    assert site.paths() == []  # refused before any connection


# ---- retries and failures ------------------------------------------------------------------------


def test_server_error_is_retried_until_success(site, run_crawl, cfg) -> None:
    site.html("/", links=["/flaky"])
    site.route("/flaky", _counter_handler([(500, {}, b"oops"), (502, {}, b"oops"), PAGE]))

    result = run_crawl(site.url("/"), cfg())

    assert site.url("/flaky") in result.urls
    assert len(site.requested("/flaky")) == 3
    assert result.stats.failed_urls == []


def test_429_retry_after_is_honoured(site, run_crawl, cfg) -> None:
    site.html("/", links=["/busy"])
    site.route("/busy", _counter_handler([(429, {"Retry-After": "1"}, b"slow down"), PAGE]))

    result = run_crawl(site.url("/"), cfg())

    assert site.url("/busy") in result.urls
    first, second = site.requested("/busy")
    assert second.at - first.at >= 0.95


def test_503_with_a_fractional_retry_after_waits_that_long(site, run_crawl, cfg) -> None:
    # A "0.6" used to be read as garbage here (whole seconds only), so the crawler came back after its own
    # 0.05 s backoff instead of the 0.6 s the server asked for.
    site.html("/", links=["/busy"])
    site.route("/busy", _counter_handler([(503, {"Retry-After": "0.6"}, b"busy"), PAGE]))

    result = run_crawl(site.url("/"), cfg())

    assert site.url("/busy") in result.urls
    first, second = site.requested("/busy")
    assert second.at - first.at >= 0.55


def test_an_absurd_retry_after_is_waited_30_seconds_by_default(site, caplog) -> None:
    """The documented default cap on a server's Retry-After (30 s, docs/reliability.md): `Retry-After: 86400`
    becomes a 30 s wait, taken because it fits the URL's budget. The planned wait is read from the retry's log
    line (written before the sleep starts) and the fetch is cancelled there, so nothing waits 30 s."""
    import asyncio
    import logging

    from harvest.crawl.http_fetch import HttpFetcher

    site.page("/busy", "busy", status=429, headers={"Retry-After": "86400"})
    caplog.set_level(logging.INFO, logger="harvest.crawl.http_fetch")
    announced: list[str] = []

    async def fetch_until_the_retry_is_planned() -> None:
        planned = asyncio.Event()

        class Announcement(logging.Handler):  # called in the fetcher's own loop, just before its sleep
            def emit(self, record: logging.LogRecord) -> None:
                if "; retry 1/" in record.getMessage():
                    announced.append(record.getMessage())
                    planned.set()

        handler = Announcement()
        logging.getLogger("harvest.crawl.http_fetch").addHandler(handler)
        try:
            async with HttpFetcher(user_agent="harvest-test", allow_private_networks=True, url_budget_s=120) as fetcher:
                fetch = asyncio.create_task(fetcher.fetch(site.url("/busy")))
                waiter = asyncio.create_task(planned.wait())
                await asyncio.wait({fetch, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                for task in (fetch, waiter):
                    task.cancel()
                await asyncio.gather(fetch, waiter, return_exceptions=True)
        finally:
            logging.getLogger("harvest.crawl.http_fetch").removeHandler(handler)

    asyncio.run(fetch_until_the_retry_is_planned())

    # A larger cap (or none) would not fit the 120 s budget: no retry planned, the 429 returned at once.
    assert len(announced) == 1, announced
    assert announced[0].endswith("retry 1/3 in 30.00s"), announced
    assert len(site.requested("/busy")) == 1


def test_persistent_errors_and_404_are_recorded_and_crawl_continues(site, run_crawl, cfg) -> None:
    site.html("/", links=["/missing", "/down", "/fine"])
    site.page("/down", "down", status=503)
    site.html("/fine")

    result = run_crawl(site.url("/"), cfg(), retries=2)

    missing = result.failed("/missing")
    assert (missing.status, missing.reason) == (404, "HTTP 404")
    assert result.failed("/down").status == 503
    assert len(site.requested("/missing")) == 1  # a 404 is not retried
    assert len(site.requested("/down")) == 3
    assert site.url("/fine") in result.urls


def test_connection_failures_are_recorded(site, run_crawl, cfg) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/gone"
    site.html("/", links=[dead])

    result = run_crawl(site.url("/"), cfg(follow_external_links=True), retries=1)

    failure = result.failed("/gone")
    assert "robots.txt unreachable" in failure.reason and "connection failed" in failure.reason


def test_start_url_failure_raises_crawl_error(site, run_crawl, cfg) -> None:
    with pytest.raises(CrawlError, match=r"start URL .*HTTP 404"):
        run_crawl(site.url("/nothing-here"), cfg())


# ---- content -------------------------------------------------------------------------------------


def test_non_utf8_pages_are_decoded(site, run_crawl, cfg) -> None:
    site.html("/", links=["/latin", "/sjis", "/undeclared"])
    site.page(
        "/latin",
        "<html><body><p>Café à la plage, journée famille, goûter compris.</p></body></html>".encode("latin-1"),
        content_type="text/html; charset=ISO-8859-1",
    )
    site.page(
        "/sjis",
        '<html><head><meta charset="shift_jis"></head><body><p>子ども向けイベント 夏祭り</p></body></html>'.encode("shift_jis"),
        content_type="text/html",
    )
    site.page(
        "/undeclared",
        "<html><body><p>Crêpes et cidre pour les enfants</p></body></html>".encode("cp1252"),
        content_type="text/html",
    )

    result = run_crawl(site.url("/"), cfg())
    html = {page.url.rsplit("/", 1)[1]: page.html for page in result.pages}

    assert "Café à la plage, journée famille" in html["latin"]
    assert "子ども向けイベント 夏祭り" in html["sjis"]
    assert "Crêpes et cidre" in html["undeclared"]


def test_huge_pages_are_capped(site, run_crawl, cfg) -> None:
    filler = "<p>" + "x" * 1000 + "</p>"
    site.page("/huge", "<html><body>" + filler * 1000 + '<a href="/after-cap">late</a></body></html>')
    site.html("/", links=["/huge"])
    site.html("/after-cap")

    result = run_crawl(site.url("/"), cfg(), max_page_bytes=100_000)

    huge = next(page for page in result.pages if page.url.endswith("/huge"))
    assert huge.truncated
    assert len(huge.html.encode("utf-8")) <= 100_000
    assert "/after-cap" not in site.paths()


def test_calendar_trap_is_bounded(site, run_crawl, cfg) -> None:
    def calendar(request) -> tuple[int, dict[str, str], bytes]:
        month = int(request.path.rsplit("=", 1)[1])
        body = (
            f"<html><body><p>{'Calendar of events. ' * 20}</p>"
            f'<a href="/calendar?month={month + 1}">next</a> <a href="/calendar?month={month - 1}">prev</a>'
            "</body></html>"
        )
        return 200, {"Content-Type": "text/html"}, body.encode()

    site.route("/calendar", calendar)
    site.html("/", links=["/calendar?month=0"])

    result = run_crawl(site.url("/"), cfg(max_depth=50, max_pages=500), trap_limit=10)

    calendar_hits = [path for path in site.paths() if path.startswith("/calendar")]
    assert 5 <= len(calendar_hits) <= 10
    assert result.stats.skipped["trap"] >= 1


# ---- the sync API --------------------------------------------------------------------------------


def test_progress_is_reported_and_stats_are_final(site, run_crawl, cfg) -> None:
    site.html("/", links=["/a", "/b"])
    site.html("/a")
    site.html("/b")
    reports: list[CrawlStats] = []

    result = run_crawl(site.url("/"), cfg(), on_progress=reports.append)

    assert len(reports) == 4  # after each page, and once at the end
    # The crawl runs ahead of the consumer, so counts only ever grow and end at the total.
    counts = [report.pages_fetched for report in reports]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == 3
    assert result.stats.pages_fetched == 3
    assert result.stats.seconds > 0


def test_closing_early_stops_the_crawl_thread(site, cfg, ua) -> None:
    for i in range(60):
        site.html(f"/chain/{i}", links=[f"/chain/{i + 1}"])
    site.html("/", links=["/chain/0"])

    with crawl(
        site.url("/"), cfg(max_depth=50, max_pages=100), CrawlOptions(
            browser_path=None, user_agent=ua, allow_private_networks=True, per_host_concurrency=4, timeout_s=20.0,
            max_concurrency=1,
        ),
    ) as running:
        first = [next(running), next(running)]
    assert [page.depth for page in first] == [0, 1]

    assert not [thread for thread in threading.enumerate() if thread.name.startswith("harvest-crawl")]
    hits = len(site.hits)
    time.sleep(0.3)
    assert len(site.hits) == hits  # nothing fetched after close
    assert hits < 40  # the bounded hand-off queue stopped it well before the end
    assert list(running) == []  # a closed crawl yields nothing more
    assert running.stats.pages_fetched >= 2


def test_consumer_exception_inside_with_block_shuts_down(site, cfg, ua) -> None:
    site.html("/", links=["/a"])
    site.html("/a")
    with pytest.raises(RuntimeError, match="consumer broke"):
        with crawl(site.url("/"), cfg(), _options(ua)) as running:
            for _page in running:
                raise RuntimeError("consumer broke")
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("harvest-crawl")]


def test_browser_mode_without_chromium_fails_at_start(site, cfg, ua) -> None:
    for path in (None, "/nonexistent/chromium"):
        with pytest.raises(CrawlError, match="no Chromium found: set HARVEST_BROWSER_PATH"):
            crawl(site.url("/"), cfg(render="browser"), _options(ua, browser_path=path))
    assert site.paths() == []


def test_auto_mode_without_chromium_records_pages_that_need_it(site, run_crawl, cfg) -> None:
    site.html("/", links=["/spa"])
    site.page("/spa", '<html><body><div id="root"></div><script src="/app.js"></script></body></html>')

    result = run_crawl(site.url("/"), cfg(render="auto"), browser_path=None)

    assert result.paths() == ["/"]
    assert "no Chromium found: set HARVEST_BROWSER_PATH" in result.failed("/spa").reason


def test_works_when_called_from_a_thread_that_runs_an_event_loop(site, cfg) -> None:
    """Prefect may call us from inside a running loop; the crawl has its own loop on its own thread."""
    import asyncio

    from harvest.settings import HarvestSettings

    site.html("/", links=["/a"])
    site.html("/a")
    settings = HarvestSettings(allow_private_networks=True, browser_path=None, request_timeout_seconds=5)

    async def caller() -> list[str]:
        with crawl(site.url("/"), cfg(), CrawlOptions.from_settings(settings)) as running:
            return sorted(page.url for page in running)

    assert asyncio.run(caller()) == [site.url("/"), site.url("/a")]
    assert all(hit.headers["user-agent"] == settings.user_agent for hit in site.hits)


def test_a_next_month_calendar_that_gives_nothing_new_costs_at_most_8_pages(site, run_crawl, cfg) -> None:
    """Issue 26: next-page links keep the listing's depth only while its pages give something new; an empty
    "next month" chain is cut by max_depth with the default config, long before max_pages or the trap guard."""

    def calendar(request) -> tuple[int, dict[str, str], bytes]:
        month = int(request.path.rsplit("=", 1)[1])
        body = (
            f"<html><body><h1>Events</h1><p>{'No events this month. ' * 20}</p><a href='/about'>About</a>"
            f'<a href="/events?month={month + 1}" rel="next">Next month</a> '
            f'<a href="/events?month={month - 1}" rel="prev">Previous month</a></body></html>'
        )
        return 200, {"Content-Type": "text/html"}, body.encode()

    site.route("/events", calendar)
    site.html("/about")
    site.html("/", links=["/events?month=0", "/about"])

    run_crawl(site.url("/"), cfg(max_pages=60, max_depth=RunConfig().max_depth))  # the defaults; 100 per trap pattern

    calendar_hits = [path for path in site.paths() if path.startswith("/events")]
    assert 2 <= len(calendar_hits) <= 8


def test_a_listing_that_keeps_giving_new_items_is_followed_past_max_depth(site, run_crawl, cfg) -> None:
    for page in range(1, 13):
        items = [f"/item/{page}-{n}" for n in range(4)]
        more = [f"/list?page={page + 1}"] if page < 12 else []
        anchors = "".join(f'<a href="{link}">{link}</a> ' for link in items)
        nxt = "".join(f'<a href="{link}" rel="next">Older »</a>' for link in more)
        site.page(f"/list?page={page}", f"<html><body><p>{'Listing. ' * 30}</p>{anchors}{nxt}</body></html>")
        for link in items:
            site.html(link)
    site.html("/", links=["/list?page=1"])

    run_crawl(site.url("/"), cfg(max_depth=2, max_pages=200))

    assert {f"/list?page={n}" for n in range(1, 13)} <= set(site.paths())
    assert {f"/item/12-{n}" for n in range(4)} <= set(site.paths())


def test_pages_a_calendar_feed_already_gave_are_not_fetched(site, run_crawl, cfg) -> None:
    """Issue 26: a consumer that read a feed covers its events' pages; the crawl skips them (counted)."""
    site.html("/", links=[f"/event/{n}" for n in range(5)])
    for n in range(5):
        site.html(f"/event/{n}")
    options = CrawlOptions(browser_path=None, user_agent="harvest-test", allow_private_networks=True,
                           per_host_concurrency=1, timeout_s=5.0, max_concurrency=1, queue_size=1)
    with crawl(site.url("/"), cfg(max_depth=2), options) as session:
        pages = iter(session)
        next(pages)  # the start page: its links are queued, not yet fetched
        session.cover([site.url(f"/event/{n}") for n in range(2, 5)])
        fetched = [page.url for page in pages]
        stats = session.stats
    assert not any(url.endswith(("/event/2", "/event/3", "/event/4")) for url in fetched)
    assert stats.skipped.get("covered_by_feed", 0) >= 1
