"""A run over real pages says how good its data is (issue 26): the scrape flow, on a site made of captured pages
from the corpus (tests/corpus), returns a content quality report listing the JSON-LD it repaired, the feed it
read, the times it took from the page's text, the all-day items and the items without a place; the CLI shows it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from harvest.models import RunConfig
from harvest.quality import report_lines
from tests.corpus.harness import CORPUS, serve_pages

HTML = "text/html; charset=utf-8"


def _site() -> dict[str, tuple[bytes, str]]:
    pages = {
        "/calendar/": "clecpc-calendar.html",  # 1 block with an invalid escape; date-only starts, times beside
        "/golf/": "golfavisen.html",  # 5 blocks with trailing commas and worse; all-day items, no place
        "/horka/": "wehranlage-horka.html",  # microdata only
        "/register/": "constantcontact-clihtf.html",  # hCalendar only
    }
    routes = {path: (Path(CORPUS / "pages" / name).read_bytes(), HTML) for path, name in pages.items()}
    routes["/feed.ics"] = ((CORPUS / "pages" / "clihtf-events.ics").read_bytes(), "text/calendar; charset=utf-8")
    links = "".join(f'<li><a href="{path}">{path}</a></li>' for path in routes)
    index = f"<html lang='en'><body><h1>What's on</h1><p>{'Our calendars and listings. ' * 12}</p><ul>{links}</ul>"
    routes["/"] = ((index + "</body></html>").encode(), HTML)
    return routes


def test_a_run_over_real_pages_reports_its_repairs_and_corrections(harvest_env) -> None:
    from flows.scrape import scrape_website
    from harvest_cli.main import app

    with serve_pages(_site()) as base:
        state = scrape_website(url=base + "/", config=RunConfig(max_depth=1, render="http", timezone="America/New_York"),
                               return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    quality = summary.quality
    print("\n".join(report_lines(quality)))  # shown with pytest -s
    assert quality["items_by_source"]["jsonld"] == 6 + 5
    assert quality["items_by_source"]["microdata"] >= 1 and quality["items_by_source"]["microformats"] == 1
    assert quality["jsonld_blocks_repaired"] == 6 and quality["jsonld_repairs"]["invalid escapes"] == 1
    assert quality["jsonld_repairs"]["trailing commas"] == 5
    assert quality["jsonld_blocks_unreadable"] == 0
    assert quality["feeds_read"] == 1 and quality["feeds_repaired"] == 1  # its VTIMEZONE names two zones
    assert quality["feed_events"] == 13  # a 2024 feed: nothing of it is in this run's horizon
    assert quality["times_from_page_text"] == 5  # the Cleveland grid's "6:30 pm" beside date-only starts
    assert quality["all_day"] >= 5 + 1  # the golf tournaments, the Cleveland item the grid shows no time for
    assert quality["without_place"] >= 5
    assert quality["without_zone"] == 0  # the run's zone, or the venue's coordinates, placed every time

    shown = CliRunner().invoke(app, ["runs", "show", summary.run_id])
    assert shown.exit_code == 0, shown.output
    assert "content quality:" in shown.output and "JSON-LD blocks repaired: 6" in shown.output
