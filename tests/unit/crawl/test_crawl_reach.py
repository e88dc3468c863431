"""Crawl reach (issue 11): pagination does not use up max_depth, and links a limit leaves unfollowed are reported."""

from __future__ import annotations

import pytest

from harvest.crawl.links import extract_links, is_pagination, listing_key


@pytest.mark.parametrize(
    ("link", "page", "rel", "text"),
    [
        ("http://s/events/page/2/", "http://s/events/page/1/", None, "2"),
        ("http://s/events/page/2/", "http://s/events/", None, ""),
        ("http://s/events?page=3&sort=date", "http://s/events?sort=date&page=2", None, ""),
        ("http://s/events?page=2", "http://s/events", None, ""),
        ("http://s/whatever", "http://s/events", ["next"], ""),
        ("http://s/whatever", "http://s/events", None, "Next page"),
        ("http://s/whatever", "http://s/events", None, "Older posts »"),
        ("http://s/whatever", "http://s/events", None, "›"),
        ("http://s/whatever", "http://s/events", None, "« Previous"),
    ],
)
def test_next_page_links_are_recognised(link: str, page: str, rel: list[str] | None, text: str) -> None:
    assert is_pagination(link, page, rel=rel, text=text)


@pytest.mark.parametrize(
    ("link", "page", "text"),
    [
        ("http://s/events/summer-fair/", "http://s/events/page/1/", "Summer fair"),
        ("http://s/news/page/2/", "http://s/events/page/1/", "2"),  # another listing's page
        ("http://s/events?page=2&tag=kids", "http://s/events?page=1", "2"),  # another filter: another listing
        ("http://s/events/next-big-thing/", "http://s/events/", "Next big thing at the park"),
    ],
)
def test_other_links_are_not_pagination(link: str, page: str, text: str) -> None:
    assert not is_pagination(link, page, text=text)


@pytest.mark.parametrize(
    "text",
    [
        "Page suivante ›", "« Précédent", "Suivant", "Articles plus anciens",  # French
        "Weiter »", "« Zurück", "Nächste Seite", "Ältere Beiträge",  # German
        "Siguiente", "Página anterior", "Entradas anteriores",  # Spanish
        "Successivo", "Avanti ›", "Pagina precedente", "Articoli meno recenti",  # Italian
        "Volgende", "Vorige pagina", "Oudere berichten",  # Dutch
        "Próximo »", "Próxima página", "Seguinte", "Posts mais antigos",  # Portuguese
        "Charger plus", "Mehr laden", "Cargar más",
        "  nächste\n Seite  ",  # as text_content() gives it: spread over lines
        "Pr\u00e9c\u00e9dent", "Pre\u0301ce\u0301dent",  # é composed and decomposed
    ],
)
def test_next_page_words_of_other_languages_are_recognised(text: str) -> None:
    # A URL with no page number in it: only the anchor text says it is the listing's next page.
    assert is_pagination("http://s/agenda/suite.html", "http://s/agenda/", text=text)


@pytest.mark.parametrize(
    "text",
    [
        "Weiter lesen", "Weiterlesen", "Lire la suite", "Leer más", "Leggi tutto", "Lees meer", "Ler mais",
        "La semaine suivante au parc", "Siguiente evento: taller de cerámica", "Nächster Termin",
        "Página", "Voir plus", "Anterior edición del festival",
    ],
)
def test_ordinary_links_in_other_languages_are_not_pagination(text: str) -> None:
    assert not is_pagination("http://s/agenda/atelier-poterie.html", "http://s/agenda/", text=text)


def test_listing_key_drops_only_the_page_number() -> None:
    assert listing_key("http://s/events/page/7/") == "http://s/events"
    assert listing_key("http://s/events?page=7&sort=date") == "http://s/events?sort=date"
    assert listing_key("http://s/events/summer/") is None


def test_link_rel_next_in_the_head_is_followed_as_a_next_page() -> None:
    html = '<html><head><link rel="next" href="/list?p=2"><link rel="stylesheet" href="/s.css"></head><body></body></html>'
    links = extract_links(html, "http://s/list")
    assert links.links == ["http://s/list?p=2"]
    assert links.pagination == ["http://s/list?p=2"]


def _listing(site, pages: int, per_page: int, style: str) -> list[str]:
    items = []
    for number in range(1, pages + 1):
        here = [f"/item/{number}-{i}" for i in range(per_page)]
        items += here
        anchors = "".join(f'<a href="{path}">item {path}</a> ' for path in here)
        if number < pages:
            nxt = f"/list/page/{number + 1}/" if style == "path" else f"/list?page={number + 1}"
            anchors += f'<a href="{nxt}">Next</a>'
        path = f"/list/page/{number}/" if style == "path" else f"/list?page={number}"
        text = "Family fun activities for everyone this weekend. " * 6
        site.page(path, f"<html><head><title>list</title></head><body><p>{text}</p>{anchors}</body></html>")
        for item in here:
            site.html(item)
    return items


@pytest.mark.parametrize("style", ["path", "query"])
def test_pagination_does_not_consume_depth(site, run_crawl, cfg, style: str) -> None:
    items = _listing(site, pages=12, per_page=3, style=style)
    start = "/list/page/1/" if style == "path" else "/list?page=1"
    site.html("/", links=[start])

    result = run_crawl(site.url("/"), cfg(max_depth=2, max_pages=500))

    fetched = set(result.paths())
    assert set(items) <= fetched, sorted(set(items) - fetched)
    listing_depths = {page.depth for page in result.pages if "list" in page.url}
    assert listing_depths == {1}
    assert result.stats.unfollowed == {}


@pytest.mark.parametrize(
    ("lang", "next_text"),
    [("fr", "Page suivante ›"), ("de", "Weiter »"), ("es", "Siguiente"), ("it", "Successivo"),
     ("nl", "Volgende"), ("pt", "Próxima página")],
)
def test_pagination_in_other_languages_does_not_consume_depth(site, run_crawl, cfg, lang: str, next_text: str) -> None:
    """An agenda whose further pages carry no page number in their URL (`suite-2.html`): only the words of the
    link say they are the same listing, so only they keep the events of page 5 within max_depth."""
    items = []
    for number in range(1, 6):
        here = [f"/agenda/evenement-{number}-{i}.html" for i in range(3)]
        items += here
        anchors = "".join(f'<li><a href="{path}">Atelier {path[-8:-5]}</a></li>' for path in here)
        if number < 5:
            anchors += f'<nav class="pagination"><a class="next" href="/agenda/suite-{number + 1}.html">{next_text}</a></nav>'
        path = "/agenda/" if number == 1 else f"/agenda/suite-{number}.html"
        text = "Activités pour toute la famille ce week-end. " * 6
        site.page(path, f'<html lang="{lang}"><head><title>Agenda</title></head>'
                        f"<body><p>{text}</p><ul>{anchors}</ul></body></html>")
        for item in here:
            site.html(item)
    site.html("/", links=["/agenda/"])

    result = run_crawl(site.url("/"), cfg(max_depth=2, max_pages=500))

    fetched = set(result.paths())
    assert set(items) <= fetched, sorted(set(items) - fetched)
    assert {page.depth for page in result.pages if "/agenda/suite" in page.url} == {1}
    assert result.stats.unfollowed == {}


def test_max_depth_reports_unfollowed_links_with_examples(site, run_crawl, cfg) -> None:
    site.html("/", links=["/a"])
    site.html("/a", links=["/b1", "/b2", "/b3"])
    site.html("/x")

    result = run_crawl(site.url("/"), cfg(max_depth=1))

    entry = result.stats.unfollowed["max_depth"]
    assert entry["count"] == 3
    assert entry["examples"] == [site.url(p) for p in ("/b1", "/b2", "/b3")]


def test_max_pages_reports_unfollowed_links_with_examples(site, run_crawl, cfg) -> None:
    links = [f"/p{i}" for i in range(20)]
    site.html("/", links=links)
    for link in links:
        site.html(link)

    result = run_crawl(site.url("/"), cfg(max_pages=5), max_concurrency=1)

    entry = result.stats.unfollowed["max_pages"]
    assert entry["count"] == 16
    assert entry["examples"] == [site.url(f"/p{i}") for i in range(4, 9)]


def test_a_consumer_stop_reports_what_was_still_queued(site, cfg, ua) -> None:
    """max_extractions stops the crawl from the consumer side: what was queued is reported under that name."""
    from harvest.crawl import CrawlOptions, crawl

    links = [f"/p{i}" for i in range(12)]
    site.html("/", links=links)
    for link in links:
        site.html(link)
    options = CrawlOptions(browser_path=None, user_agent=ua, allow_private_networks=True, per_host_concurrency=1,
                           timeout_s=5.0, max_concurrency=1, queue_size=1)
    with crawl(site.url("/"), cfg(), options) as running:
        next(iter(running))
        running.close(reason="max_extractions")
        stats = running.stats
    entry = stats.unfollowed["max_extractions"]
    assert 0 < entry["count"] <= 12
    assert 1 <= len(entry["examples"]) <= 5 and all(e.startswith(site.url("/p")) for e in entry["examples"])
