"""The pure rules of the crawler: URL normalization, the frontier, robots.txt, links, sitemaps, heuristics."""

from __future__ import annotations

import gzip

import pytest

from harvest.crawl import Page, needs_browser, normalize_url, parse_robots, site_of
from harvest.crawl.frontier import Frontier, has_repeated_segments, trap_pattern
from harvest.crawl.links import extract_links
from harvest.crawl.robots import decode_robots, product_token
from harvest.crawl.sitemap import parse_sitemap
from harvest.models import RunConfig
from harvest.retries import parse_retry_after


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://Example.ORG:80/a#frag", "http://example.org/a"),
        ("https://example.org:443", "https://example.org/"),
        ("https://example.org:8443/x", "https://example.org:8443/x"),
        ("http://example.org/a;jsessionid=ABC123?x=1", "http://example.org/a?x=1"),
        ("http://example.org/a?PHPSESSID=1&b=2&sid=3&SessionId=4", "http://example.org/a?b=2"),
        ("http://example.org/a?print&q=a+b", "http://example.org/a?print&q=a+b"),
        ("http://example.org/a b", "http://example.org/a%20b"),
        ("http://example.org/caf%C3%A9", "http://example.org/caf%C3%A9"),
        ("mailto:x@example.org", None),
        ("javascript:void(0)", None),
        ("data:text/html,hi", None),
        ("file:///etc/passwd", None),
        ("", None),
    ],
)
def test_normalize_url(raw: str, expected: str | None) -> None:
    assert normalize_url(raw) == expected


def test_normalize_url_resolves_relative_links() -> None:
    assert normalize_url("../b?x=1#y", "http://example.org/a/c/d") == "http://example.org/a/b?x=1"


def test_same_site_includes_the_www_variant() -> None:
    assert site_of("https://www.Example.org/x") == site_of("http://example.org") == "example.org"
    frontier = Frontier("https://example.org/", RunConfig(max_depth=3))
    assert frontier.add("https://www.example.org/events", 1)
    assert not frontier.add("https://other.org/events", 1)
    assert frontier.skipped["external"] == 1


def test_frontier_is_fifo_and_deduplicates() -> None:
    frontier = Frontier("http://example.org/", RunConfig(max_depth=3))
    frontier.mark_seen("http://example.org/")
    assert frontier.add("/1", 1, base="http://example.org/")
    assert frontier.add("http://example.org/2", 2)
    assert frontier.add("http://example.org/3", 1)
    assert not frontier.add("http://example.org/1#again", 1)
    assert not frontier.add("http://example.org/", 1)
    order = []
    while (item := frontier.pop()) is not None:
        order.append((item.url, item.depth))
    assert order == [("http://example.org/1", 1), ("http://example.org/2", 2), ("http://example.org/3", 1)]
    assert len(frontier) == 0


def test_trap_guard_caps_urls_differing_only_by_numbers() -> None:
    same = trap_pattern("http://e.org/cal/2024/05?day=3&view=m")
    assert same == trap_pattern("http://e.org/cal/1999/12?view=w&day=30")
    assert trap_pattern("http://e.org/event/12-fair") != trap_pattern("http://e.org/event/12-market")
    frontier = Frontier("http://e.org/", RunConfig(max_depth=50), trap_limit=5)
    added = [frontier.add(f"http://e.org/calendar?month={i}", 1) for i in range(20)]
    assert added == [True] * 5 + [False] * 15
    assert frontier.skipped["trap"] == 15
    assert frontier.add("http://e.org/event/1-fair", 1)  # other patterns are unaffected


def test_repeated_path_segments_are_a_trap() -> None:
    assert has_repeated_segments("/a/b/a/b/a/b/a/b")
    assert not has_repeated_segments("/events/2024/05/kids")


def test_globs_apply_to_the_path() -> None:
    config = RunConfig(max_depth=3, include_paths=["/events/*", "/camps"], exclude_paths=["*/archive/*"])
    frontier = Frontier("http://e.org/", config)
    assert frontier.add("http://e.org/events/summer?x=1", 1)
    assert frontier.add("http://e.org/camps", 1)
    assert not frontier.add("http://e.org/camps/2", 1)
    assert not frontier.add("http://e.org/events/archive/old", 1)
    assert frontier.skipped["excluded"] == 2


def test_frontier_refuses_links_beyond_max_depth() -> None:
    frontier = Frontier("http://e.org/", RunConfig(max_depth=1))
    assert frontier.add("http://e.org/a", 1)
    assert not frontier.add("http://e.org/b", 2)
    assert frontier.skipped["max_depth"] == 1


# ---- robots.txt ----------------------------------------------------------------------------------

ROBOTS = """
# comment
User-agent: *
Disallow: /
Crawl-delay: 1

User-agent: OtherBot
User-agent: harvest
Disallow: /private
Allow: /private/events
Disallow: /*?sessionid=
Disallow: /*.pdf$
Crawl-delay: 2.5

Sitemap: https://e.org/sitemap.xml
Sitemap: https://e.org/sitemap-events.xml
"""


def test_robots_uses_our_group_and_longest_match() -> None:
    policy = parse_robots("https://e.org", ROBOTS, "harvest/0.1 (+https://x)")
    assert policy.can_fetch("https://e.org/")
    assert not policy.can_fetch("https://e.org/private/x")
    assert policy.can_fetch("https://e.org/private/events/1")
    assert policy.can_fetch("https://e.org/list?a=1&sessionid=2")  # the pattern needs "?sessionid="
    assert not policy.can_fetch("https://e.org/list?sessionid=2")
    assert not policy.can_fetch("https://e.org/flyer.pdf")
    assert policy.can_fetch("https://e.org/flyer.pdf.html")
    assert policy.can_fetch("https://e.org/robots.txt")
    assert policy.crawl_delay == 2.5
    assert policy.sitemaps == ["https://e.org/sitemap.xml", "https://e.org/sitemap-events.xml"]


def test_robots_falls_back_to_the_star_group() -> None:
    policy = parse_robots("https://e.org", ROBOTS, "somebot/1.0")
    assert not policy.can_fetch("https://e.org/anything")
    assert policy.crawl_delay == 1


def test_robots_without_rules_allows_everything_and_caps_delay() -> None:
    policy = parse_robots("https://e.org", "User-agent: *\nDisallow:\nCrawl-delay: 3600\n", "harvest")
    assert policy.can_fetch("https://e.org/anything")
    assert policy.crawl_delay == 30.0


def test_robots_with_a_byte_order_mark_keeps_its_first_group() -> None:
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /private\n"
    policy = parse_robots("https://e.org", decode_robots(body), "harvest")
    assert not policy.can_fetch("https://e.org/private/x")
    assert policy.can_fetch("https://e.org/public")
    # A caller that decoded with plain utf-8 hands over the BOM as U+FEFF: still the first group.
    policy = parse_robots("https://e.org", body.decode("utf-8"), "harvest")
    assert not policy.can_fetch("https://e.org/private/x")


def test_robots_tolerates_misspelled_directives() -> None:
    text = "User agent: harvest\nDissallow: /a\nDisalow: /b\nuseragent: other\nDisallow: /\nsite-map: https://e.org/s.xml\n"
    policy = parse_robots("https://e.org", text, "harvest/0.1")
    assert not policy.can_fetch("https://e.org/a/1") and not policy.can_fetch("https://e.org/b")
    assert policy.can_fetch("https://e.org/c")
    assert policy.sitemaps == ["https://e.org/s.xml"]


def test_robots_wildcards_and_end_anchor() -> None:
    text = (
        "User-agent: *\n"
        "Disallow: /*/print\n"          # a * inside the path
        "Disallow: /*.php$\n"           # $ anchors the end
        "Allow: /*.php$ \n"             # same length as the Disallow: Allow wins the tie
        "Disallow: /fish*.txt\n"
        "Disallow: /exact$\n"
        "Disallow: /caf%C3%A9\n"        # percent-encoded and raw spellings are one path
    )
    policy = parse_robots("https://e.org", text, "harvest")
    assert not policy.can_fetch("https://e.org/events/2024/print")
    assert not policy.can_fetch("https://e.org/events/printable")  # /*/print is a prefix pattern
    assert policy.can_fetch("https://e.org/index.php")  # Allow wins the tie
    assert not policy.can_fetch("https://e.org/fishing/notes.txt")
    assert policy.can_fetch("https://e.org/fish.html")
    assert not policy.can_fetch("https://e.org/exact")
    assert policy.can_fetch("https://e.org/exact/more") and policy.can_fetch("https://e.org/exactly")
    assert not policy.can_fetch("https://e.org/café/menu")
    assert policy.can_fetch("https://e.org/cafe")


def test_robots_matches_our_product_token_not_words_elsewhere_in_the_user_agent() -> None:
    text = "User-agent: github\nDisallow: /\n\nUser-agent: *\nDisallow: /private\n"
    policy = parse_robots("https://e.org", text, "harvest/0.1 (+https://github.com/harvest)")
    assert policy.can_fetch("https://e.org/events") and not policy.can_fetch("https://e.org/private")


def test_product_token() -> None:
    assert product_token("harvest/0.1 (+https://github.com/harvest)") == "harvest"
    assert product_token("Harvest") == "harvest"


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_after_accepts_fractions_and_refuses_nonsense() -> None:
    # The crawler read "0.5" as garbage (whole seconds only) while the geocoder honoured it: one parser now.
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("120") == 120.0
    for garbled in ("-1", "nan", "inf", "", "   ", "Wed, 99 Foo 2015 07:28:10 GMT"):
        assert parse_retry_after(garbled) is None, garbled
    # An obsolete RFC 850 date still parses; a date without a zone is taken as GMT.
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 -0000", now=1445412480.0) == pytest.approx(10.0)


# ---- links, sitemaps, heuristics -----------------------------------------------------------------


def test_extract_links_honours_base_and_canonical() -> None:
    html = """<html><head><base href="https://e.org/events/"><link rel="Canonical" href="/events/fair"></head>
    <body><a href="fair?x=1">a</a><a href="#top">skip</a><a href=" /about ">b</a><area href="map"></body></html>"""
    links = extract_links(html, "https://e.org/events/fair?utm=1")
    assert links.links == ["https://e.org/events/fair?x=1", "https://e.org/about", "https://e.org/events/map"]
    assert links.canonical == "https://e.org/events/fair"


def test_extract_links_tolerates_empty_and_broken_html() -> None:
    assert extract_links("", "https://e.org/").links == []
    assert extract_links("<a href='/x'>unclosed", "https://e.org/").links == ["https://e.org/x"]


def test_webcal_and_calendar_alternate_links_are_followed_as_feeds() -> None:
    html = (
        '<html><head><link rel="alternate" type="text/calendar" href="/events/?ical=1"></head><body>'
        '<a href="webcal://example.org/cal.ics">Subscribe</a></body></html>'
    )
    links = extract_links(html, "https://example.org/events/").links
    assert "https://example.org/events/?ical=1" in links and "https://example.org/cal.ics" in links


def test_parse_sitemap_urlset_index_and_gzip() -> None:
    urlset = (
        b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<url><loc> /a </loc></url><url><loc>https://e.org/b</loc></url></urlset>"
    )
    assert parse_sitemap(urlset, "https://e.org/sitemap.xml") == (["https://e.org/a", "https://e.org/b"], [])
    index = b"<sitemapindex><sitemap><loc>https://e.org/s1.xml.gz</loc></sitemap></sitemapindex>"
    assert parse_sitemap(index, "https://e.org/sitemap.xml") == ([], ["https://e.org/s1.xml.gz"])
    assert parse_sitemap(gzip.compress(urlset), "https://e.org/s.xml.gz")[0] == ["https://e.org/a", "https://e.org/b"]
    assert parse_sitemap(b"not xml at all", "https://e.org/sitemap.xml") == ([], [])


def test_parse_text_sitemap() -> None:
    body = "\ufeffhttps://e.org/a\r\n  https://e.org/b?x=1  \n\n/relative\nnot a url\nftp://e.org/f\nhttps://e.org/c d\n"
    assert parse_sitemap(body.encode("utf-8"), "https://e.org/sitemap.txt") == (
        ["https://e.org/a", "https://e.org/b?x=1"], [],
    )
    assert parse_sitemap(gzip.compress(b"https://e.org/z\n"), "https://e.org/s.txt.gz") == (["https://e.org/z"], [])


def test_parse_rss_sitemaps() -> None:
    rss2 = b"""<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Events</title>
    <link>https://e.org/</link>
    <item><title>Fair</title><link>https://e.org/events/fair</link></item>
    <item><title>Relative</title><link> /events/swim </link></item>
    <item><title>No link</title><guid isPermaLink="false">x</guid></item></channel></rss>"""
    assert parse_sitemap(rss2, "https://e.org/feed.rss") == (
        ["https://e.org/events/fair", "https://e.org/events/swim"], [],
    )
    rss1 = b"""<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
    xmlns="http://purl.org/rss/1.0/"><channel rdf:about="https://e.org/"><link>https://e.org/</link></channel>
    <item rdf:about="https://e.org/a"><title>A</title><link>https://e.org/a</link></item></rdf:RDF>"""
    assert parse_sitemap(rss1, "https://e.org/feed.rdf") == (["https://e.org/a"], [])


def test_parse_atom_sitemap() -> None:
    atom = b"""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">
    <title>News</title><link rel="self" href="https://e.org/feed.atom"/><link href="https://e.org/"/>
    <entry><title>One</title><link rel="edit" href="https://e.org/edit/1"/>
      <link rel="alternate" type="text/html" href="https://e.org/news/1"/></entry>
    <entry><title>Two</title><link href="news/2"/><link rel="enclosure" href="https://e.org/two.mp3"/></entry>
    <entry><title>No page</title><link rel="self" href="https://e.org/x"/></entry></feed>"""
    assert parse_sitemap(atom, "https://e.org/feed.atom") == (["https://e.org/news/1", "https://e.org/news/2"], [])


def test_parse_sitemap_does_not_expand_entities() -> None:
    evil = b"""<?xml version="1.0"?><!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]>
    <urlset><url><loc>https://e.org/&x;</loc></url></urlset>"""
    pages, _ = parse_sitemap(evil, "https://e.org/sitemap.xml")
    assert all("root:" not in page for page in pages)


def _page(html: str) -> Page:
    url = "https://e.org/"
    return Page(url=url, requested_url=url, status=200, html=html, depth=0, rendered=False, content_type="text/html")


def test_needs_browser_heuristic() -> None:
    text = "<p>" + "A real paragraph about a family event. " * 10 + "</p>"
    assert needs_browser(_page('<html><body><div id="root"></div><script src="/app.js"></script></body></html>'))
    assert needs_browser(_page('<html><body><div id="app"></div><script>x()</script>' + text + "</body></html>"))
    assert needs_browser(_page("<html><body><p>Loading…</p><script>render()</script></body></html>"))
    assert not needs_browser(_page("<html><body>" + text + "<script>track()</script></body></html>"))
    assert not needs_browser(_page("<html><body><p>short, but no scripts</p></body></html>"))
    assert not needs_browser(
        _page('<html><body><script type="application/ld+json">{"@type":"Event"}</script><script>x()</script></body>')
    )
    assert not needs_browser(_page(""))


def test_internationalised_hosts_are_one_site_in_either_spelling() -> None:
    unicode_host = normalize_url("http://bücher.de/Seite?q=ü")
    assert unicode_host == normalize_url("http://xn--bcher-kva.de/Seite?q=%C3%BC") == normalize_url(
        "http://BÜCHER.de:80/Seite?q=%C3%BC#top"
    )
    assert unicode_host == "http://xn--bcher-kva.de/Seite?q=%C3%BC"
    assert site_of("https://www.bücher.de/a") == site_of("https://xn--bcher-kva.de/b") == "xn--bcher-kva.de"

    frontier = Frontier("https://bücher.de/", RunConfig(max_depth=3))
    assert frontier.add("https://xn--bcher-kva.de/kinder", 1) is True
    assert frontier.add("https://bücher.de/kinder", 1) is False  # the same page in the other spelling
    assert frontier.add("https://www.xn--bcher-kva.de/kurse", 1) is True  # the same site
    assert frontier.add("https://bücher.example/", 1) is False  # another site
