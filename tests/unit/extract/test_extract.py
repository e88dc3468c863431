"""Structured-data extraction (JSON-LD, microdata, RDFa), page text and the SPA heuristic, on real markup."""

from __future__ import annotations

import json
import time

import pytest

from harvest.extract.page import MAX_HTML_CHARS, looks_script_rendered, page_text
from harvest.extract.structured import (
    MAX_LIST_ITEMS,
    extract_structured,
    has_structured_activity,
)
from harvest.extract.text import clean_text, normalize_key, strip_markup

URL = "https://kids.example.org/whats-on/week.html"


def jsonld(*blocks: object, body: str = "") -> str:
    """A page with one <script type=application/ld+json> per block (strings are inserted verbatim)."""
    scripts = []
    for block in blocks:
        # Like real sites, write "</" as "<\\/" so a "</script>" inside a value cannot end the block.
        text = block if isinstance(block, str) else json.dumps(block).replace("</", "<\\/")
        scripts.append(f'<script type="application/ld+json">{text}</script>')
    return f"<!doctype html><html><head><title>What's on</title>{''.join(scripts)}</head><body>{body}</body></html>"


def by_name(activities: list) -> dict:
    return {a.name: a for a in activities}


# --- JSON-LD -----------------------------------------------------------------------------------------


def test_event_with_place_address_image_dates_keywords() -> None:
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@type": "ChildrensEvent",
            "name": "Teddy Bears' Picnic",
            "description": "Bring a teddy and a <b>blanket</b>.",
            "startDate": "2024-05-01T10:00:00+10:00",
            "endDate": "2024-05-01T12:00:00+10:00",
            "keywords": "picnic, Toddlers , outdoors,",
            "image": "/img/teddy.jpg",
            "location": {
                "@type": "Park",
                "name": "Fitzroy Gardens",
                "address": {
                    "@type": "PostalAddress",
                    "streetAddress": "Wellington Parade",
                    "addressLocality": "East Melbourne",
                    "addressRegion": "VIC",
                    "postalCode": "3002",
                    "addressCountry": "AU",
                },
            },
        }
    )
    [activity] = extract_structured(html, URL)
    assert activity.name == "Teddy Bears' Picnic"
    assert activity.description == "Bring a teddy and a blanket."
    assert activity.startDate == "2024-05-01T10:00:00+10:00"
    assert activity.endDate == "2024-05-01T12:00:00+10:00"
    assert activity.tags == ["picnic", "Toddlers", "outdoors"]
    assert activity.imageURL == "https://kids.example.org/img/teddy.jpg"
    assert activity.sourceUrl == URL
    assert activity.extractedBy == "jsonld"
    location = activity.location
    assert location is not None
    assert location.name == "Fitzroy Gardens"
    assert location.street_address == "Wellington Parade"
    assert location.city == "East Melbourne"
    assert location.state_province == "VIC"
    assert location.postal_code == "3002"
    assert location.country_code == "AU"
    assert location.formattedAddress == "Wellington Parade, East Melbourne, VIC 3002, AU"


def test_graph_with_referenced_place_yields_the_event_only() -> None:
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@graph": [
                {"@type": "WebPage", "@id": URL, "mainEntity": {"@id": "#storytime"}},
                {"@type": "Organization", "name": "City Library Service"},
                {
                    "@type": "EducationEvent",
                    "@id": "#storytime",
                    "name": "Storytime",
                    "startDate": "2024-06-03",
                    "location": {"@id": "#library"},
                    "image": {"@id": "#cover"},
                },
                {
                    "@type": "Library",
                    "@id": "#library",
                    "name": "Eltham Library",
                    "address": "4-10 Panther Place, Eltham VIC 3095",
                },
                {"@type": "ImageObject", "@id": "#cover", "contentUrl": "../media/story.png"},
            ],
        }
    )
    [activity] = extract_structured(html, URL)
    assert activity.name == "Storytime"
    assert activity.location is not None
    assert activity.location.name == "Eltham Library"
    assert activity.location.formattedAddress == "4-10 Panther Place, Eltham VIC 3095"
    assert activity.imageURL == "https://kids.example.org/media/story.png"


def test_item_list_of_events_and_places_of_many_types() -> None:
    members = [
        {"@type": "Festival", "name": "Kite Festival", "location": "Altona Beach, Altona VIC"},
        {"@type": "SportsEvent", "name": "Junior Parkrun"},
        {"@type": ["Playground", "TouristAttraction"], "name": "Royal Park Nature Play"},
        {"@type": "Museum", "name": "Scienceworks"},
        {"@type": "Zoo", "name": "Werribee Open Range Zoo"},
        {"@type": "AmusementPark", "name": "Luna Park"},
        {"@type": "LocalBusiness", "name": "Bounce Inc"},
        {"@type": "PublicSwimmingPool", "name": "Brunswick Baths"},
        {"@type": "ExhibitionEvent", "name": "Dinosaur Walk"},
        {"@type": "Person", "name": "Not An Activity"},
        {"@type": "Offer", "name": "Not One Either"},
    ]
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@type": "ItemList",
            "itemListElement": [{"@type": "ListItem", "position": i, "item": m} for i, m in enumerate(members)],
        }
    )
    names = [a.name for a in extract_structured(html, URL)]
    assert names == [m["name"] for m in members[:9]]
    kite = by_name(extract_structured(html, URL))["Kite Festival"]
    assert kite.location is not None and kite.location.formattedAddress == "Altona Beach, Altona VIC"


def test_place_is_its_own_location_and_geo_gives_coordinates_not_an_address() -> None:
    html = jsonld(
        {
            "@context": "http://schema.org/",
            "@type": "Park",
            "name": "Edgar's Creek Trail",
            "geo": {"@type": "GeoCoordinates", "latitude": -37.7105, "longitude": 145.0036},
        },
        {
            "@context": "http://schema.org/",
            "@type": "Playground",
            "name": "Bad Geo",
            "geo": {"latitude": "north-ish", "longitude": 999},
        },
    )
    found = by_name(extract_structured(html, URL))
    trail = found["Edgar's Creek Trail"].location
    assert trail is not None
    assert trail.name == "Edgar's Creek Trail"
    # Issue 11: coordinates are kept as data; no address is made up from them.
    assert trail.formattedAddress is None
    assert (trail.latitude, trail.longitude) == (-37.7105, 145.0036)
    bad = found["Bad Geo"].location
    assert bad is not None and bad.formattedAddress is None and bad.name == "Bad Geo"
    assert bad.latitude is None and bad.longitude is None


def test_event_coordinates_from_its_place_or_from_the_item_itself() -> None:
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@type": "Event",
            "name": "Carols by Candlelight",
            "startDate": "2024-12-24T19:00:00+11:00",
            "location": {
                "@type": "Place",
                "name": "Sidney Myer Music Bowl",
                "address": {"@type": "PostalAddress", "streetAddress": "21 Linlithgow Ave", "addressLocality": "Melbourne"},
                "geo": {"@type": "GeoCoordinates", "latitude": "-37.82339", "longitude": "144.97275"},
            },
        },
        {
            "@context": "https://schema.org",
            "@type": "Event",
            "name": "Twilight Sounds",
            "startDate": "2024-02-01",
            "location": {"@type": "Place", "name": "Royal Botanic Gardens"},
            "geo": {"@type": "GeoCoordinates", "latitude": -37.8304, "longitude": 144.9796},
        },
    )
    found = by_name(extract_structured(html, URL))
    carols = found["Carols by Candlelight"].location
    assert carols is not None and carols.formattedAddress == "21 Linlithgow Ave, Melbourne"
    assert (carols.latitude, carols.longitude) == (-37.82339, 144.97275)
    twilight = found["Twilight Sounds"].location
    assert twilight is not None and twilight.name == "Royal Botanic Gardens" and twilight.formattedAddress is None
    assert (twilight.latitude, twilight.longitude) == (-37.8304, 144.9796)


def test_course_takes_dates_and_location_from_its_instance() -> None:
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@type": "Course",
            "name": "Toddler Swim Lessons",
            "description": "Water confidence for 1-3 year olds.",
            "hasCourseInstance": {
                "@type": "CourseInstance",
                "courseMode": "onsite",
                "startDate": "2024-07-08",
                "endDate": "2024-09-16",
                "location": {"@type": "SportsActivityLocation", "name": "Coburg Leisure Centre"},
            },
        }
    )
    [course] = extract_structured(html, URL)
    assert (course.name, course.startDate, course.endDate) == ("Toddler Swim Lessons", "2024-07-08", "2024-09-16")
    assert course.location is not None and course.location.name == "Coburg Leisure Centre"


def test_prefixed_and_full_iri_properties_are_understood() -> None:
    html = jsonld(
        {
            "@context": {"schema": "http://schema.org/"},
            "@type": "schema:Event",
            "schema:name": "Prefixed Event",
            "schema:startDate": "2024-08-01",
        },
        [
            {
                "@type": ["http://schema.org/Event"],
                "http://schema.org/name": [{"@value": "Expanded Event"}],
                "http://schema.org/keywords": [{"@value": "a"}, {"@value": "b"}],
            }
        ],
    )
    found = by_name(extract_structured(html, URL))
    assert found["Prefixed Event"].startDate == "2024-08-01"
    assert found["Expanded Event"].tags == ["a", "b"]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("https://cdn.example.net/a.jpg", "https://cdn.example.net/a.jpg"),
        ("images/b c.jpg", "https://kids.example.org/whats-on/images/b%20c.jpg"),
        ({"@type": "ImageObject", "url": "/c.png", "width": 800}, "https://kids.example.org/c.png"),
        (
            [{"@type": "ImageObject", "contentUrl": "//cdn.example.net/d.webp"}, "e.jpg"],
            "https://cdn.example.net/d.webp",
        ),
        (["data:image/png;base64,AAAA", "javascript:alert(1)", "/f.jpg"], "https://kids.example.org/f.jpg"),
        (12345, "https://kids.example.org/whats-on/12345"),
        ({"@type": "ImageObject"}, None),
    ],
)
def test_image_shapes(image: object, expected: str | None) -> None:
    html = jsonld({"@context": "https://schema.org", "@type": "Event", "name": "Imaged", "image": image})
    [activity] = extract_structured(html, URL)
    assert activity.imageURL == expected


def test_keywords_as_list_mixed_with_comma_strings() -> None:
    html = jsonld(
        {"@context": "https://schema.org", "@type": "Event", "name": "K", "keywords": ["art, craft", "Kids", 7, None]}
    )
    assert extract_structured(html, URL)[0].tags == ["art", "craft", "Kids", "7"]


def test_location_shapes() -> None:
    events = [
        {"@type": "Event", "name": "Online", "location": {"@type": "VirtualLocation", "url": "https://zoom.us/j/1"}},
        {
            "@type": "Event",
            "name": "Hybrid",
            "location": [
                {"@type": "VirtualLocation", "url": "https://zoom.us/j/2"},
                {"@type": "Place", "name": "Town Hall", "address": "90-130 Swanston St, Melbourne"},
            ],
        },
        {
            "@type": "Event",
            "name": "Address Only",
            "location": {
                "@type": "PostalAddress",
                "streetAddress": "1 Main St",
                "addressCountry": {"name": "Australia"},
            },
        },
        {"@type": "Event", "name": "Numeric Location", "location": 42},
    ]
    found = by_name(extract_structured(jsonld({"@context": "https://schema.org", "@graph": events}), URL))
    assert found["Online"].location is None
    hybrid = found["Hybrid"].location
    assert hybrid is not None
    assert (hybrid.name, hybrid.formattedAddress) == ("Town Hall", "90-130 Swanston St, Melbourne")
    address_only = found["Address Only"].location
    assert address_only is not None
    assert address_only.formattedAddress == "1 Main St, Australia"
    assert address_only.country_code == "AU"  # issue 11: a country name becomes its ISO 3166-1 alpha-2 code
    assert found["Numeric Location"].location is None


# --- hostile input -------------------------------------------------------------------------------------


def test_invalid_jsonld_block_is_skipped_and_the_others_still_count() -> None:
    html = jsonld(
        {"@context": "https://schema.org", "@type": "Event", "name": "Before"},
        '{"@context": "https://schema.org", "@type": "Event", "name": "Broken",',
        "<!-- not json at all -->",
        "",
        {"@context": "https://schema.org", "@type": "Event", "name": "After"},
    )
    assert [a.name for a in extract_structured(html, URL)] == ["Before", "After"]


def test_wrong_types_never_crash_and_are_coerced_sensibly() -> None:
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@graph": [
                {
                    "@type": "Event",
                    "name": ["First Name", "Second Name"],
                    "description": 12.5,
                    "startDate": ["2024-01-02"],
                },
                {"@type": "Event", "name": {"@value": "Value Object"}, "keywords": 3, "image": True},
                {"@type": "Event", "name": 2024, "location": ["", None, {"@type": "Place", "name": ["Hall"]}]},
                {"@type": "Event", "name": {"text": "Dict Name"}, "endDate": {"when": "never"}},
                {"@type": "Event", "name": None, "description": "Nameless but described"},
                {"@type": "Event", "name": [], "description": None},
                {"@type": 42, "name": "Bad type"},
                {"@type": "Event", "name": "9" * 5000},
                "just a string",
                17,
                None,
            ],
        }
    )
    found = extract_structured(html, URL)
    names = [a.name for a in found]
    assert names[:5] == ["First Name", "Value Object", "2024", "Dict Name", None]
    first = found[0]
    assert (first.description, first.startDate) == ("12.5", "2024-01-02")
    assert found[1].tags == ["3"] and found[1].imageURL is None
    assert found[2].location is not None and found[2].location.name == "Hall"
    assert found[3].endDate is None
    assert found[4].description == "Nameless but described"
    assert len(names[5]) == 500  # a 5000-character name is cut, not rejected


def test_markup_is_stripped_but_text_is_verbatim() -> None:
    sql = "Robert'); DROP TABLE activities;-- & friends"
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@type": "Event",
            "name": "<h1>Lego&nbsp;<i>Club</i></h1><script>alert('x')</script>",
            "description": f"<p>{sql.replace('&', '&amp;')}</p><p>5 < 6 and 1 OR 1=1</p>",
        }
    )
    [activity] = extract_structured(html, URL)
    assert activity.name == "Lego Club"
    assert activity.description == f"{sql} 5 < 6 and 1 OR 1=1"


def test_deeply_nested_json_does_not_crash() -> None:
    deep_array = "[" * 100_000 + "]" * 100_000
    nested: dict = {"@type": "Event", "name": "Deep Inside"}
    for _ in range(300):
        nested = {"@type": "WebPage", "mainEntity": nested}
    html = jsonld(
        deep_array,
        nested,
        {"@context": "https://schema.org", "@type": "Event", "name": "Shallow"},
    )
    started = time.monotonic()
    found = extract_structured(html, URL)
    assert [a.name for a in found] == ["Shallow"]  # nesting beyond the depth cap is not followed
    assert time.monotonic() - started < 60  # a generous cap: following the nesting would not end


@pytest.mark.parametrize("levels", [200, 5_000])
def test_deeply_nested_markup_does_not_crash(levels: int) -> None:
    html = (
        "<html><body>"
        + '<div itemscope itemtype="https://schema.org/Event">' * levels
        + '<span itemprop="name">Deep</span>'
        + "</div>" * levels
        + '<div itemscope itemtype="https://schema.org/Park"><span itemprop="name">Top Park</span></div>'
        + "</body></html>"
    )
    started = time.monotonic()
    names = [a.name for a in extract_structured(html, URL)]
    assert time.monotonic() - started < 60
    # libxml2 stops building the tree past ~255 levels: deeper (hostile) markup yields nothing, not a crash.
    assert names == (["Deep", "Top Park"] if levels == 200 else [])


def test_huge_lists_and_pages_are_bounded() -> None:
    events = [{"@type": "Event", "name": f"Event {i}"} for i in range(5_000)]
    html = jsonld({"@context": "https://schema.org", "@graph": events})
    started = time.monotonic()
    found = extract_structured(html, URL)
    assert len(found) == MAX_LIST_ITEMS
    assert found[0].name == "Event 0"

    item = (
        '<div itemscope itemtype="https://schema.org/Event"><span itemprop="name">Item {i}</span>'
        '<div itemprop="location" itemscope itemtype="https://schema.org/Place"><b itemprop="name">P{i}</b></div></div>'
    )
    many = "<html><body>" + "".join(item.format(i=i) for i in range(3_000)) + "</body></html>"
    partial = extract_structured(many, URL)  # more values than the walk budget: a bounded prefix, not nothing
    assert 0 < len(partial) < 3_000
    assert [a.name for a in partial[:2]] == ["Item 0", "Item 1"]
    assert partial[0].location is not None and partial[0].location.name == "P0"

    padding = "<p>" + "x" * (MAX_HTML_CHARS + 1_000) + "</p>"
    big = jsonld({"@context": "https://schema.org", "@type": "Event", "name": "Early"}, body=padding)
    assert [a.name for a in extract_structured(big, URL)] == ["Early"]
    assert time.monotonic() - started < 120


@pytest.mark.parametrize(
    "html",
    ["", "   ", "<html></html>", "not html at all", b"\xff\xfe<html>", "<?xml version='1.0' encoding='utf-8'?><html/>"],
)
def test_pages_without_data(html: str | bytes) -> None:
    assert extract_structured(html, URL) == []
    assert has_structured_activity(html, URL) is False


# --- microdata, RDFa, dedupe ------------------------------------------------------------------------------

MICRODATA = """
<div itemscope itemtype="https://schema.org/Event">
  <h2 itemprop="name">Lantern   Parade</h2>
  <p itemprop="description">Walk with <em>lanterns</em> along the river.</p>
  <time itemprop="startDate" datetime="2024-06-21T18:00">21 June, 6pm</time>
  <img itemprop="image" src="lanterns.jpg">
  <div itemprop="location" itemscope itemtype="https://schema.org/Place">
    <span itemprop="name">Birrarung Marr</span>
    <div itemprop="address" itemscope itemtype="https://schema.org/PostalAddress">
      <span itemprop="addressLocality">Melbourne</span> <span itemprop="addressRegion">VIC</span>
    </div>
  </div>
</div>
"""

RDFA = """
<div vocab="https://schema.org/" typeof="Event">
  <span property="name">Puppet Show</span>
  <span property="startDate" content="2024-07-01T11:00:00+10:00">1 July</span>
  <span property="keywords">puppets, theatre</span>
  <img property="image" src="/puppets.png" alt="">
  <div property="location" typeof="Place">
    <span property="name">Arts Centre</span>
    <div property="address" typeof="PostalAddress">
      <span property="streetAddress">100 St Kilda Rd</span>, <span property="addressLocality">Southbank</span>
    </div>
  </div>
</div>
"""


def test_microdata_event() -> None:
    [activity] = extract_structured(f"<html><body>{MICRODATA}</body></html>", URL)
    assert activity.extractedBy == "microdata"
    assert activity.name == "Lantern Parade"
    assert activity.description == "Walk with lanterns along the river."
    assert activity.startDate == "2024-06-21T18:00"
    assert activity.imageURL == "https://kids.example.org/whats-on/lanterns.jpg"
    assert activity.location is not None
    assert (activity.location.name, activity.location.city, activity.location.formattedAddress) == (
        "Birrarung Marr",
        "Melbourne",
        "Melbourne, VIC",
    )


def test_rdfa_event_and_its_place_is_not_a_second_activity() -> None:
    [activity] = extract_structured(f"<html><body>{RDFA}</body></html>", URL)
    assert activity.extractedBy == "rdfa"
    assert activity.name == "Puppet Show"
    assert activity.startDate == "2024-07-01T11:00:00+10:00"
    assert activity.tags == ["puppets", "theatre"]
    assert activity.imageURL == "https://kids.example.org/puppets.png"
    assert activity.location is not None
    assert activity.location.name == "Arts Centre"
    assert activity.location.formattedAddress == "100 St Kilda Rd, Southbank"


def test_same_item_in_two_syntaxes_is_returned_once_with_gaps_filled() -> None:
    html = jsonld(
        {
            "@context": "https://schema.org",
            "@type": "Event",
            "name": "Lantern Parade",
            "startDate": "2024-06-21T18:00:00+10:00",
        },
        body=MICRODATA + RDFA,
    )
    found = extract_structured(html, URL)
    assert [(a.name, a.extractedBy) for a in found] == [("Lantern Parade", "jsonld"), ("Puppet Show", "rdfa")]
    lantern = found[0]
    assert lantern.startDate == "2024-06-21T18:00:00+10:00"  # JSON-LD wins where it speaks
    assert lantern.description == "Walk with lanterns along the river."  # microdata fills the gaps
    assert lantern.imageURL == "https://kids.example.org/whats-on/lanterns.jpg"
    assert has_structured_activity(html, URL) is True


def test_same_name_on_different_dates_is_two_activities() -> None:
    html = jsonld(
        {"@context": "https://schema.org", "@type": "Event", "name": "Storytime", "startDate": "2024-06-03T10:00"},
        {"@context": "https://schema.org", "@type": "Event", "name": "Storytime", "startDate": "2024-06-10T10:00"},
        {"@context": "https://schema.org", "@type": "Event", "name": "storytime!", "startDate": "2024-06-10"},
    )
    assert [a.startDate for a in extract_structured(html, URL)] == ["2024-06-03T10:00", "2024-06-10T10:00"]


def test_same_name_and_day_at_different_places_is_two_activities() -> None:
    def event(place: str, address: str) -> dict:
        return {
            "@context": "https://schema.org",
            "@type": "Event",
            "name": "Playgroup",
            "startDate": "2024-06-03",
            "location": {"@type": "Place", "name": place, "address": address},
        }

    html = jsonld(
        event("Eltham Library", "4-10 Panther Pl, Eltham"),
        event("Ivanhoe Library", "275 Upper Heidelberg Rd, Ivanhoe"),
        event("Eltham Library", "Eltham"),  # the first one again, its address written shorter
    )
    found = extract_structured(html, URL)
    assert [a.location.name for a in found if a.location] == ["Eltham Library", "Ivanhoe Library"]


# --- text helpers ----------------------------------------------------------------------------------------


def test_text_helpers() -> None:
    assert strip_markup("a<br>b<p>c</p>d") == "a b c d"
    assert strip_markup("x <script>var a = '<b>';</script> y") == "x   y"
    assert strip_markup("if a < b and c > d") == "if a < b and c > d"
    assert clean_text("  \u00a0 ") is None
    assert clean_text("word " * 10, max_chars=9) == "word word"
    assert normalize_key("Aston's  Debonair-Parade, Park") == normalize_key("astons debonair parade park")
    started = time.monotonic()
    strip_markup("<script>" * 200_000)  # unclosed openers: one linear pass, not quadratic
    strip_markup("<a " * 300_000)
    assert time.monotonic() - started < 60  # quadratic work on 200,000 openers would take far longer


# --- page text and the render heuristic ------------------------------------------------------------------


def test_page_text_is_visible_text_only_and_bounded() -> None:
    html = """<html><head><title>Parks  near you</title><style>p{color:red}</style>
    <script>var secret = "do not send";</script></head><body>
    <nav><a href="/">Home</a></nav><h1>Best <b>playgrounds</b></h1>
    <p>Swings, slides<br>and a flying fox.</p><!-- hidden comment -->
    <noscript>Enable JavaScript</noscript><template><p>template text</p></template>
    <ul><li>One</li><li>Two</li></ul><script type="application/ld+json">{"name":"json"}</script>tail text
    </body></html>"""
    text = page_text(html)
    assert text.splitlines() == [
        "Parks near you",
        "Home",
        "Best playgrounds",
        "Swings, slides",
        "and a flying fox.",
        "One",
        "Two",
        "tail text",
    ]
    for hidden in ("secret", "color", "hidden comment", "Enable JavaScript", "template text", "json"):
        assert hidden not in text
    with_images = '<p>Swings <img src="/a b.jpg"> slides</p><img src="data:x"><img>'
    assert page_text(with_images) == "Swings slides"
    assert page_text(with_images, image_refs=True) == "Swings [image: /a%20b.jpg] slides"
    long_page = "<html><body>" + "<p>lorem ipsum dolor</p>" * 50_000 + "</body></html>"
    assert len(page_text(long_page, max_chars=1_000)) == 1_000
    assert page_text("") == ""


ARTICLE = "<p>" + "Werribee Gorge has rock pools, a river walk and picnic grounds for the whole family. " * 10 + "</p>"


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<html><body><div id="root"></div><script src="/static/js/main.js"></script></body></html>', True),
        ('<html><body><div id="__next"><div class="spinner"></div></div><script src="/_next/app.js"></script>'
         f"<footer>{ARTICLE}</footer></body></html>", True),
        ('<html><body><app-root></app-root><script type="module" src="main.js"></script></body></html>', True),
        ("<html><body><h1>Loading…</h1><script>render()</script></body></html>", True),
        (f'<html><body><div id="root">{ARTICLE}</div><script src="/hydrate.js"></script></body></html>', False),
        (f"<html><body>{ARTICLE}<script src=/analytics.js></script></body></html>", False),
        ("<html><body><p>Short page, no scripts.</p></body></html>", False),
        (
            '<html><head><script type="application/ld+json">{"@type":"Event"}</script></head><body>Hi</body></html>',
            False,
        ),
        ("", False),
    ],
)
def test_looks_script_rendered(html: str, expected: bool) -> None:
    assert looks_script_rendered(html) is expected


# --- the demo site: real pages over real HTTP ------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_pages(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[object, dict, str, str]]:
    """(published activity, its source record, page URL, page HTML) for 80 activities of the demo site."""
    import httpx

    from testkit.demo_site import DATA_PATH, build_demo_site, serve_site

    source = json.loads(DATA_PATH.read_text(encoding="utf-8"))
    info = build_demo_site(tmp_path_factory.mktemp("demo-site"), limit=80)
    pages = []
    with serve_site(info.root) as server, httpx.Client(timeout=10) as client:
        for published in info.activities:
            url = server.url(published.path)
            response = client.get(url)
            assert response.status_code == 200, url
            pages.append((published, source[published.source_index], url, response.text))
    assert {p[0].syntax for p in pages} == {"jsonld", "microdata", "rdfa", "text", "js"}
    return pages


def test_demo_site_structured_pages_yield_exactly_their_activity(demo_pages: list) -> None:
    checked = 0
    for published, record, url, html in demo_pages:
        found = extract_structured(html, url)
        if published.syntax not in ("jsonld", "microdata", "rdfa"):
            assert found == [], (published.syntax, url)
            continue
        checked += 1
        [activity] = found
        assert activity.name == record["name"]
        assert activity.extractedBy == published.syntax
        assert activity.startDate == record.get("startDate")
        assert " ".join((activity.description or "").split()) == " ".join((record.get("description") or "").split())
        assert activity.tags == [t.strip() for t in ", ".join(record["tags"]).split(",") if t.strip()]
        base = url.split("/activities/")[0]
        assert activity.imageURL == (base + published.image_path if published.image_path else None)
        location = record.get("location") or {}
        assert activity.location is not None
        assert activity.location.name == (location.get("name") or record["name"])
        assert activity.location.city == location.get("city")
        assert activity.location.street_address == location.get("street_address")
        assert activity.location.country_code == location.get("country_code")
    assert checked >= 60


def test_demo_site_render_heuristic_and_page_text(demo_pages: list) -> None:
    for published, record, url, html in demo_pages:
        assert looks_script_rendered(html) is (published.syntax == "js"), (published.syntax, url)
        text = page_text(html)
        if published.syntax == "js":
            assert record["name"] not in text  # only a browser can see it
        elif published.syntax == "text":
            assert f"Activity: {' '.join(record['name'].split())}" in text.splitlines()
