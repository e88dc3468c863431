"""A small "what's on" site of event pages shaped like real ticketing and venue pages, for what pages give:
schema.org GeoCoordinates (on the event's place, or the place with coordinates only), one show on two dates
on two pages, dates written for people ("Saturday 1 June 2024", "1st May 2024"), an ambiguous numeric date,
and a country written as "UK". Venues and their coordinates are the real, public ones.

    python -m testkit.events_site build OUT    (then serve it with `python -m testkit.demo_site serve OUT`)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from testkit.demo_site import BASE_TOKEN, write_page

BOWL = {"name": "Sidney Myer Music Bowl", "street": "21 Linlithgow Ave", "city": "Melbourne", "postal": "3004",
        "country": "AU", "geo": (-37.82339, 144.97275)}
GARDENS = {"name": "Royal Botanic Gardens Victoria", "geo": (-37.83037, 144.97961)}  # coordinates only
ARTS_CENTRE = {"name": "Arts Centre Melbourne", "street": "100 St Kilda Rd", "city": "Southbank", "postal": "3006",
               "country": "Australia"}
LIBRARY = {"name": "State Library Victoria", "street": "328 Swanston St", "city": "Melbourne", "postal": "3000",
           "country": "AU"}
ALBERT_HALL = {"name": "Royal Albert Hall", "street": "Kensington Gore", "city": "London", "postal": "SW7 2AP",
               "country": "UK"}

# (path, name, start as the page writes it, venue)
EVENTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("/events/carols/", "Carols by Candlelight", "2024-12-24T19:30:00+11:00", BOWL),
    ("/events/twilight-sounds/", "Twilight Sounds", "2024-02-01T18:00:00+11:00", GARDENS),
    ("/events/gruffalo-june/", "The Gruffalo Live", "Saturday 1 June 2024", ARTS_CENTRE),
    ("/events/gruffalo-july/", "The Gruffalo Live", "2024-07-06T11:00:00+10:00", ARTS_CENTRE),
    ("/events/story-time/", "Story Time for Under 5s", "1st May 2024", LIBRARY),
    ("/events/craft-morning/", "Kids Craft Morning", "01/05/2024", LIBRARY),
    ("/events/family-proms/", "Family Proms", "1 May 2024, 10am", ALBERT_HALL),
]


def _place(venue: dict[str, Any]) -> dict[str, Any]:
    place: dict[str, Any] = {"@type": "Place", "name": venue["name"]}
    if venue.get("street"):
        place["address"] = {"@type": "PostalAddress", "streetAddress": venue["street"],
                            "addressLocality": venue["city"], "postalCode": venue["postal"],
                            "addressCountry": venue["country"]}
    if venue.get("geo"):
        place["geo"] = {"@type": "GeoCoordinates", "latitude": venue["geo"][0], "longitude": venue["geo"][1]}
    return place


def _page(title: str, body: str, head: str = "") -> str:
    return (f'<!doctype html>\n<html lang="en-AU"><head><meta charset="utf-8"><title>{title}</title>{head}</head>'
            f"<body><main>{body}</main></body></html>\n")


def build_events_site(out_dir: Path) -> list[str]:
    """Write the site into `out_dir`; returns the event page paths."""
    out_dir = Path(out_dir)
    paths = []
    for path, name, start, venue in EVENTS:
        event = {"@context": "https://schema.org", "@type": "Event", "name": name, "startDate": start,
                 "url": f"{BASE_TOKEN}{path}", "location": _place(venue),
                 "description": f"{name} at {venue['name']}."}
        head = f'<script type="application/ld+json">{json.dumps(event)}</script>'
        write_page(out_dir, path, _page(name, f"<h1>{name}</h1><p>{start}, {venue['name']}</p>", head))
        paths.append(path)
    listing = "".join(f'<li><a href="{path}">{name}</a></li>' for path, name, _, _ in EVENTS)
    write_page(out_dir, "/", _page("What's on", f"<h1>What's on</h1><ul>{listing}</ul>"))
    write_page(out_dir, "/robots.txt", "User-agent: *\nAllow: /\n")
    return paths



if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) != 3 or sys.argv[1] != "build":
        raise SystemExit(__doc__)
    print("\n".join(build_events_site(Path(sys.argv[2]))))
