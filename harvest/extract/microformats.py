"""Events marked up as microformats: h-event (microformats2) and hCalendar `vevent` (microformats1).

Some pages carry no schema.org data at all, only a (often hidden) hCalendar block with the name, the start with its
offset and the address (issue 26: a registration page gave 0 items). mf2py parses both generations
deterministically; its items are turned into the same compact node shape as JSON-LD, microdata and RDFa
(`"@type"`, `name`, `startDate`, `location`, ...), so one mapper makes activities of all four.

mf2py does not read the hCalendar `value-title` pattern (`<span class="dtstart"><span class="value-title"
title="2018-10-04T10:00:00-0500"></span>...</span>`), which registration sites still emit; a start or end it
left empty is read from that pattern on the same element.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import lxml.html
import mf2py

log = logging.getLogger(__name__)

MAX_ITEMS = 1_000
_ROOT_XPATH = (
    "//*[contains(concat(' ', normalize-space(@class), ' '), ' h-event ') "
    "or contains(concat(' ', normalize-space(@class), ' '), ' vevent ')]"
)
_HAS_EVENT_CLASS = re.compile(r"""class\s*=\s*["'][^"']*\b(?:h-event|vevent)\b""", re.IGNORECASE)


def has_microformat_events(html: str) -> bool:
    """Cheap test before the (slower) parse: does any class attribute name h-event or vevent?"""
    return bool(_HAS_EVENT_CLASS.search(html))


def microformat_nodes(html: str, tree: lxml.html.HtmlElement | None, url: str) -> list[dict[str, Any]]:
    """The page's h-event / vevent items as compact schema.org-shaped nodes (empty when there are none)."""
    if not has_microformat_events(html):
        return []
    try:
        parsed = mf2py.parse(doc=html, url=url, metaformats=False, filter_roots=False)
    except Exception as exc:  # noqa: BLE001 - the parser's failure on hostile markup is a skipped syntax
        log.info("skipped microformats on %s: %s: %s", url, type(exc).__name__, str(exc)[:200])
        return []
    items = [item for item in _walk(parsed.get("items", [])) if "h-event" in item.get("type", [])][:MAX_ITEMS]
    roots = _top_level_roots(tree) if tree is not None else []
    nodes = []
    for position, item in enumerate(items):
        props = item.get("properties", {})
        node: dict[str, Any] = {"@type": ["Event"]}
        for prop, key in (("name", "name"), ("summary", "description"), ("description", "description"),
                          ("url", "url"), ("start", "startDate"), ("end", "endDate")):
            value = _first_text(props.get(prop))
            if value and key not in node:
                node[key] = value
        root = roots[position] if len(roots) == len(items) else None
        for key, classes in (("startDate", ("dtstart", "dt-start")), ("endDate", ("dtend", "dt-end"))):
            if key not in node and root is not None:
                node[key] = _value_title(root, classes)
        location = _location(props.get("location"))
        if location is not None:
            node["location"] = location
        nodes.append({key: value for key, value in node.items() if value})
    return nodes


def _walk(items: list[Any]) -> list[dict[str, Any]]:
    """Items and the items nested in their `children` (an h-feed of h-events), bounded."""
    out: list[dict[str, Any]] = []
    stack = list(reversed(items))
    while stack and len(out) < MAX_ITEMS * 2:
        item = stack.pop()
        if isinstance(item, dict):
            out.append(item)
            stack.extend(reversed(item.get("children", [])))
    return out


def _top_level_roots(tree: lxml.html.HtmlElement) -> list[Any]:
    roots = tree.xpath(_ROOT_XPATH)
    inside = {id(node) for root in roots for node in root.iterdescendants()}
    return [root for root in roots if id(root) not in inside]


def _first_text(values: Any) -> str | None:
    for value in values or []:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, dict):
            text = value.get("value") or value.get("html")
            if isinstance(text, str) and text.strip():
                return text.strip()
    return None


def _value_title(root: Any, classes: tuple[str, ...]) -> str | None:
    condition = " or ".join(f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')" for name in classes)
    for element in root.xpath(f".//*[{condition}]"):
        for titled in element.xpath(".//*[contains(concat(' ', normalize-space(@class), ' '), ' value-title ')]"):
            title = (titled.get("title") or "").strip()
            if title:
                return str(title)
        for attribute in ("datetime", "title"):
            value = (element.get(attribute) or "").strip()
            if value:
                return str(value)
    return None


def _location(values: Any) -> Any:
    """p-location: a plain text (an address as written), or an h-card / h-adr / h-geo with parts."""
    for value in values or []:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if not isinstance(value, dict):
            continue
        props = value.get("properties", {})
        address = {key: _first_text(props.get(prop)) for prop, key in (
            ("street-address", "streetAddress"), ("locality", "addressLocality"), ("region", "addressRegion"),
            ("postal-code", "postalCode"), ("country-name", "addressCountry"))}
        place: dict[str, Any] = {"@type": ["Place"]}
        if "h-card" in value.get("type", []) and _first_text(props.get("name")):
            place["name"] = _first_text(props.get("name"))
        if any(address.values()):
            place["address"] = {"@type": ["PostalAddress"], **{k: v for k, v in address.items() if v}}
        latitude, longitude = _first_text(props.get("latitude")), _first_text(props.get("longitude"))
        if latitude and longitude:
            place["geo"] = {"latitude": latitude, "longitude": longitude}
        if len(place) > 1:
            return place
        text = _first_text([value])
        if text:
            return text
    return None
