"""testkit.demo_site: a site built from the real fixture data, served on 127.0.0.1 and fetched over HTTP."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import extruct
import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from testkit.demo_site import (
    DATA_PATH,
    MANIFEST_NAME,
    SYNTAXES,
    SiteInfo,
    SiteServer,
    build_demo_site,
    load_site_info,
    serve_site,
)

REPO = Path(__file__).resolve().parents[3]
SOURCE = json.loads(DATA_PATH.read_text("utf-8"))
JSONLD_RE = re.compile(r'<script type="application/ld\+json">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SiteInfo, SiteServer, httpx.Client]]:
    root = tmp_path_factory.mktemp("site")
    info = build_demo_site(root, limit=40)
    with serve_site(root) as server, httpx.Client(base_url=server.base_url, timeout=5) as client:
        yield info, server, client


def names_in(data: object) -> set[str]:
    """Every schema.org name anywhere in an extruct result (uniform or JSON-LD shapes)."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("name", "https://schema.org/name"):
                for item in value if isinstance(value, list) else [value]:
                    found.add(item["@value"] if isinstance(item, dict) else item)
            found |= names_in(value)
    elif isinstance(data, list):
        for item in data:
            found |= names_in(item)
    return found


def test_build_uses_only_the_real_activities_and_every_syntax(site) -> None:
    info, _, _ = site
    assert [a.name for a in info.activities] == [a["name"] for a in SOURCE[:40]]
    counts = {s: len(info.expected_names[s]) for s in SYNTAXES}
    assert counts["text"] == 2 and counts["js"] == 2
    assert counts["microdata"] == 6 and counts["rdfa"] == 6 and counts["jsonld"] == 24
    assert sorted(info.names()) == sorted(a["name"] for a in SOURCE[:40])
    assert len(set(info.activity_pages)) == 40  # duplicate names still get their own pages
    assert load_site_info(info.root).expected_names == info.expected_names


def test_home_listing_and_pagination(site) -> None:
    info, server, client = site
    home = client.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert f'<link rel="canonical" href="{server.base_url}/">' in home.text
    assert 'href="/activities/page/1/"' in home.text and 'href="/private/"' in home.text
    assert "?ref=home" in home.text
    page1 = client.get("/activities/page/1/").text
    page2 = client.get("/activities/page/2/").text
    assert 'rel="next" href="/activities/page/2/"' in page1 and 'rel="prev" href="/activities/page/1/"' in page2
    linked = set(re.findall(r'href="(/activities/[^"/?]+/)(?:\?ref=[^"]*)?"', page1 + page2)) - {
        "/activities/page/"}
    assert linked == set(info.activity_pages)
    assert re.search(r'href="/activities/[^"]+/\?ref=listing"', page1)
    assert client.get("/activities/page/3/").status_code == 404


def test_ref_variant_serves_the_same_page_with_the_clean_canonical(site) -> None:
    info, server, client = site
    path = info.activity_pages[2]
    plain, variant = client.get(path), client.get(path + "?ref=listing")
    assert variant.status_code == 200 and variant.text == plain.text
    assert f'<link rel="canonical" href="{server.base_url}{path}">' in variant.text


def test_tag_pages_list_their_activities(site) -> None:
    info, _, client = site
    slug = next(s for s, tag in info.tags.items() if tag == "water play")
    page = client.get(f"/tags/{slug}/").text
    tagged = [a for a in info.activities if "water play" in SOURCE[a.source_index]["tags"]]
    assert tagged and all(f'href="{a.path}"' in page for a in tagged)
    assert f'href="/tags/{slug}/"' in client.get("/tags/").text


def test_each_page_carries_exactly_its_syntax(site) -> None:
    info, server, client = site
    for activity in info.activities:
        url = server.url(activity.path)
        page = client.get(activity.path).text
        data = extruct.extract(page, base_url=url, syntaxes=["json-ld", "microdata", "rdfa"], uniform=True)
        found = {key: activity.name in names_in(data[key]) for key in ("json-ld", "microdata", "rdfa")}
        expected = {"json-ld": activity.syntax == "jsonld", "microdata": activity.syntax == "microdata",
                    "rdfa": activity.syntax == "rdfa"}
        assert found == expected, (activity, data)
        assert "{{BASE}}" not in page
        if activity.syntax == "text":
            assert f"<p>Activity: {activity.name}</p>" in page.replace("&#x27;", "'")
        if activity.syntax == "js":
            assert activity.name not in page and '<div id="root"></div>' in page
            assert not JSONLD_RE.search(page)


def test_jsonld_is_valid_json_with_absolute_urls(site) -> None:
    info, server, client = site
    checked = 0
    for activity in info.activities:
        if activity.syntax != "jsonld":
            continue
        blocks = JSONLD_RE.findall(client.get(activity.path).text)
        assert len(blocks) == 1
        document = json.loads(blocks[0])
        entity = next(e for e in document.get("@graph", [document]) if e["@type"] == activity.schema_type)
        assert entity["name"] == activity.name
        assert entity["url"] == server.url(activity.path)
        raw = SOURCE[activity.source_index]
        assert entity.get("startDate") == raw.get("startDate")
        if activity.image_path:
            assert entity["image"] == server.url(activity.image_path)
        if raw.get("location", {}).get("city"):
            assert entity["location"]["address"]["addressLocality"] == raw["location"]["city"]
        checked += 1
    assert checked == 24


def test_microdata_and_rdfa_carry_address_date_and_image(site) -> None:
    info, server, client = site
    for syntax in ("microdata", "rdfa"):
        activity = next(a for a in info.activities if a.syntax == syntax and a.image_path
                        and SOURCE[a.source_index].get("startDate"))
        url = server.url(activity.path)
        data = extruct.extract(client.get(activity.path).text, base_url=url, syntaxes=[syntax])[syntax]
        text = json.dumps(data)
        assert server.url(activity.image_path) in text
        assert SOURCE[activity.source_index]["startDate"] in text
        assert "PostalAddress" in text


def test_robots_and_sitemap(site) -> None:
    info, server, client = site
    robots = client.get("/robots.txt")
    assert robots.headers["content-type"].startswith("text/plain")
    assert "Disallow: /private/" in robots.text and f"Sitemap: {server.base_url}/sitemap.xml" in robots.text
    sitemap = client.get("/sitemap.xml")
    assert sitemap.headers["content-type"].startswith("application/xml")
    ns = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    locs = [e.text for e in ET.fromstring(sitemap.content).findall("s:url/s:loc", ns)]
    assert set(locs) >= {server.url(p) for p in info.activity_pages}
    assert not any("/private/" in loc for loc in locs)
    assert client.get("/private/").status_code == 200  # it exists: only robots.txt keeps a crawler out


def test_images_are_real_images_except_the_planted_failures(site) -> None:
    info, _, client = site
    sizes = []
    for path, kind in info.images.items():
        response = client.get(path)
        if kind == "missing":
            assert response.status_code == 404
            continue
        assert response.status_code == 200
        assert response.headers["content-type"] == ("image/png" if path.endswith(".png") else "image/jpeg")
        if kind == "broken":
            assert response.content.startswith(b"<!doctype html>")
            with pytest.raises(UnidentifiedImageError):
                Image.open(io.BytesIO(response.content))
            continue
        with Image.open(io.BytesIO(response.content)) as img:
            img.load()
            assert img.format == {"jpeg": "JPEG", "png": "PNG"}[kind]
            sizes.append(img.size)
    assert sorted(info.images.values()).count("broken") == 1 and sorted(info.images.values()).count("missing") == 1
    assert any(w > 1200 and h > 630 for w, h in sizes) and any(w < 1200 and h < 630 for w, h in sizes)
    with_image = [a for a in info.activities if SOURCE[a.source_index].get("imageURL")]
    assert {a.image_path for a in with_image} == set(info.images)


def test_server_head_404_redirect_counters_and_traversal(site) -> None:
    info, server, client = site
    before = server.requests["/robots.txt"]
    head = client.head("/robots.txt")
    get = client.get("/robots.txt")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(get.content)
    assert server.requests["/robots.txt"] == before + 2
    assert client.get("/no/such/page/").status_code == 404
    moved = client.get("/tags?x=1")
    assert moved.status_code == 301 and moved.headers["location"] == "/tags/?x=1"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # httpx would normalize the ".."
        sock.sendall(b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 404")
    assert server.total_requests() == sum(server.requests.values())
    assert ("HEAD", "/robots.txt", 200) in server.log


def test_same_folder_served_on_another_port_uses_that_port(site) -> None:
    info, server, _ = site
    with serve_site(info.root) as other:
        assert other.port != server.port
        assert other.info is not None and other.info.activity_pages == info.activity_pages
        text = httpx.get(other.url("/robots.txt")).text
        assert f"Sitemap: {other.base_url}/sitemap.xml" in text


@pytest.mark.browser
def test_js_only_page_renders_its_activity_in_a_browser(site) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    info, server, _ = site
    activity = next(a for a in info.activities if a.syntax == "js")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            page = browser.new_page()
            page.goto(server.url(activity.path))
            rendered = page.content()
            ld = json.loads(page.eval_on_selector('script[type="application/ld+json"]', "e => e.textContent"))
        finally:
            browser.close()
    assert f"<h1>{activity.name}</h1>".replace("&", "&amp;") in rendered
    assert ld["name"] == activity.name and ld["url"] == server.url(activity.path)
    if activity.image_path:
        assert ld["image"] == server.url(activity.image_path)


def test_full_build_is_complete(tmp_path: Path) -> None:
    started = time.perf_counter()
    info = build_demo_site(tmp_path / "full")
    elapsed = time.perf_counter() - started
    assert elapsed < 120, f"building 300 activities took {elapsed:.1f}s"  # a generous cap, not a speed claim
    assert len(info.activities) == len(SOURCE) == 300
    assert {s: len(n) for s, n in info.expected_names.items()} == {
        "jsonld": 180, "microdata": 45, "rdfa": 45, "text": 15, "js": 15}
    assert len(info.images) == sum(1 for a in SOURCE if a.get("imageURL"))


def test_rebuild_replaces_a_previous_build_but_never_a_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "site"
    build_demo_site(root, limit=5)
    (root / "stale.html").write_text("old")
    info = build_demo_site(root, limit=6, seed=3)
    assert len(info.activities) == 6 and not (root / "stale.html").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_demo_site(foreign, limit=5)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_cli_build(tmp_path: Path) -> None:
    out = tmp_path / "cli-site"
    result = subprocess.run([sys.executable, "-m", "testkit.demo_site", "build", str(out), "--limit", "10"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "built 10 activities" in result.stdout
    assert (out / MANIFEST_NAME).is_file() and (out / "robots.txt").is_file()
    assert len(load_site_info(out).activity_pages) == 10
