"""The crawl step's content quality report counts listings that gave nothing (issue 26), and only those: a listing
page without items of its own that leads to unseen detail pages gave them."""

from __future__ import annotations

from pathlib import Path

from harvest.crawl.stage import collect_raw_activities
from harvest.models import RunConfig
from harvest.settings import HarvestSettings
from harvest.storage import LocalStore
from testkit.demo_site import serve_site

_EVENT = """<html><head><title>{name}</title><script type="application/ld+json">
{{"@context": "https://schema.org", "@type": "Event", "name": "{name}", "startDate": "2026-06-01T10:00:00+10:00",
  "location": {{"@type": "Place", "name": "Town Hall", "address": "1 Main St, Springfield"}}}}
</script></head><body><h1>{name}</h1><a href="/">Home</a></body></html>"""


def _write(root: Path, path: str, html: str) -> None:
    target = root / path.strip("/") / "index.html" if path.endswith("/") else root / path.strip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")


def test_only_a_listing_that_leads_nowhere_new_counts_as_having_given_nothing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _write(site, "/", '<html><body><a href="/events/">Events</a></body></html>')
    # Page 1 of the listing has no items of its own, but links to two detail pages nobody else links to.
    _write(site, "/events/", '<html><body><a href="/events/story-time.html">Story time</a>'
           '<a href="/events/pottery.html">Pottery</a><a rel="next" href="/events/page/2/">Next</a></body></html>')
    _write(site, "/events/story-time.html", _EVENT.format(name="Story time"))
    _write(site, "/events/pottery.html", _EVENT.format(name="Pottery"))
    # Page 2 shows nothing and links only back to what the crawl has seen.
    _write(site, "/events/page/2/", '<html><body><a href="/events/">Previous</a><a href="/">Home</a></body></html>')

    with serve_site(site) as server:
        result = collect_raw_activities(
            LocalStore(tmp_path / "store"), "run-1", server.url("/"), RunConfig(render="http", max_pages=20),
            HarvestSettings(allow_private_networks=True, browser_path=None),
        )
        page_2 = server.url("/events/page/2/")

    assert result.stats.items_out == 2
    assert result.quality["listing_pages_without_items"] == 1
    assert result.quality["listing_pages_without_items_examples"] == [page_2]
