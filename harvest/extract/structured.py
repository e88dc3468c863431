"""Activities from the structured data embedded in a page: schema.org (JSON-LD, microdata, RDFa) and
microformats (h-event, hCalendar).

Structured data is the cheap, exact path: when a page has it, no LLM call is needed. Pages are
untrusted, so every syntax and every JSON-LD block is parsed in isolation (one broken block does
not hide the others; a block strict JSON refuses is repaired first, see harvest/extract/jsonld.py),
all walks are bounded in depth and size, and nothing here raises for bad input: a page without
usable data yields an empty list. `extract_page` also says what it met (blocks repaired or
unreadable, items per syntax) for the run's quality report.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import extruct
import lxml.html

from harvest.countries import country_code
from harvest.extract.jsonld import parse_jsonld
from harvest.extract.microformats import microformat_nodes
from harvest.extract.page import looks_script_rendered, page_language, page_text, parse_html, prepare_html
from harvest.extract.text import absolute_http_url, clean_text, format_address, normalize_key
from harvest.extract.visible_time import VisibleTimes
from harvest.models import Location, RawActivity

__all__ = [
    "PageExtraction",
    "extract_page",
    "extract_structured",
    "has_structured_activity",
    "looks_script_rendered",
    "page_text",
]

log = logging.getLogger(__name__)

EXTRACTED_BY = {"json-ld": "jsonld", "microdata": "microdata", "rdfa": "rdfa", "microformats": "microformats"}
MAX_SHOWN_TIME_LOOKUPS = 300  # items per page whose visible time is looked up

MAX_DEPTH = 8  # nesting followed inside one item (Event > location > address > ... )
MAX_NODES = 20_000  # dict/list/scalar values visited per syntax on one page
MAX_LIST_ITEMS = 1_000  # elements read from any one list
MAX_JSONLD_BLOCK_CHARS = 2_000_000
MAX_RDFA_HTML_CHARS = 2_000_000  # the RDF parser takes seconds per MB; beyond this a page is not worth it
MAX_TOP_LEVEL_ITEMS = 5_000  # items one syntax yields at top level (RDFa lists every node there)
MAX_ACTIVITIES_PER_PAGE = 1_000
MAX_NAME_CHARS = 500
MAX_DESCRIPTION_CHARS = 20_000
MAX_FIELD_CHARS = 500
MAX_TAGS = 50
MAX_TAG_CHARS = 100

# schema.org types that are activities in themselves. Every type whose name ends in "Event" is an
# event (ChildrensEvent, SportsEvent, EducationEvent, ExhibitionEvent, ...); these are the others.
_EVENT_TYPES = frozenset({"Festival", "Hackathon", "EventSeries", "CourseInstance"})
_COURSE_TYPES = frozenset({"Course"})
_PLACE_TYPES = frozenset(
    """
    Place TouristAttraction TouristDestination LandmarksOrHistoricalBuildings CivicStructure LocalBusiness
    Park Playground Zoo Aquarium Beach Campground Museum MusicVenue EventVenue PerformingArtsTheater MovieTheater
    StadiumOrArena PublicSwimmingPool Library AmusementPark ArtGallery EntertainmentBusiness Casino ComedyClub
    NightClub SportsActivityLocation BowlingAlley ExerciseGym GolfCourse HealthClub SkiResort SportsClub
    TennisComplex ChildCare TouristInformationCenter ShoppingCenter Store ToyStore BookStore FoodEstablishment
    Restaurant CafeOrCoffeeShop IceCreamShop Bakery FastFoodRestaurant Winery Brewery BarOrPub Distillery
    Landform BodyOfWater Mountain Continent Volcano LakeBodyOfWater RiverBodyOfWater SeaBodyOfWater Waterfall
    Reservoir Canal Pond Accommodation Campsite LodgingBusiness Resort Hotel Hostel BedAndBreakfast
    RVPark PlaceOfWorship EducationalOrganization School Preschool ElementarySchool
    """.split()
)
_PLACE_SUFFIXES = ("Park", "Attraction", "Venue", "Museum", "Gallery", "Theater", "Theatre", "Club", "Store")
# Containers whose members may be activities: walked into, never activities themselves.
_CONTAINER_KEYS = (
    "@graph", "itemListElement", "item", "mainEntity", "mainEntityOfPage", "hasPart", "about", "subjectOf",
    "containsPlace", "event", "events", "itemOffered",
)  # fmt: skip
_RANK = {"place": 1, "event": 2, "course": 3}
_GEO_RE = re.compile(r"^-?\d{1,3}(?:\.\d+)?$")


class _Budget:
    """Counts values visited so one hostile page cannot make a walk unbounded."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.exhausted = False

    def take(self) -> bool:
        if self.left <= 0:
            self.exhausted = True
            return False
        self.left -= 1
        return True


def _short_name(key: str) -> str:
    """'http://schema.org/name', 'schema:name', 'https://schema.org/Event' -> 'name', 'Event'."""
    for separator in ("#", "/", ":"):
        if separator in key:
            key = key.rstrip(separator).rsplit(separator, 1)[-1]
    return key


def _compact(value: Any, budget: _Budget, depth: int = 0) -> Any:
    """Normalise JSON-LD (compacted or expanded), microdata and RDFa output to one shape.

    Result: dicts with short property names, "@type" as a list of short type names, "@id" kept,
    {"@value": x} unwrapped, and only data (str/int/float/bool/dict/list) in it. Bounded by depth and budget.
    """
    if depth > MAX_DEPTH * 2 or not budget.take():
        return None
    if isinstance(value, dict):
        if "@value" in value:
            return _compact(value["@value"], budget, depth + 1)
        if "@list" in value:
            return _compact(value["@list"], budget, depth + 1)
        out: dict[str, Any] = {}
        for key, item in list(value.items())[:MAX_LIST_ITEMS]:
            if not isinstance(key, str):
                continue
            if key == "@type":
                types = item if isinstance(item, list) else [item]
                out["@type"] = [_short_name(t) for t in types[:20] if isinstance(t, str)]
            elif key == "@id":
                if isinstance(item, str):
                    out["@id"] = item
            elif key == "@graph":
                out["@graph"] = _compact(item, budget, depth + 1)
            elif key.startswith("@") or key == "htmlNode":
                continue
            else:
                out[_short_name(key)] = _compact(item, budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        limit = MAX_TOP_LEVEL_ITEMS if depth == 0 else MAX_LIST_ITEMS
        return [_compact(item, budget, depth + 1) for item in list(value)[:limit]]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _types(node: dict[str, Any]) -> list[str]:
    types = node.get("@type")
    if isinstance(types, list):
        return [t for t in types if isinstance(t, str)]
    if isinstance(types, str):  # microdata with a single, already short type
        return [_short_name(types)]
    return []


def _kind(node: dict[str, Any]) -> str | None:
    """'course', 'event', 'place' or None for a node's schema.org type (highest rank wins)."""
    best: str | None = None
    for name in _types(node):
        if name in _COURSE_TYPES:
            kind = "course"
        elif name in _EVENT_TYPES or name.endswith("Event"):
            kind = "event"
        elif name in _PLACE_TYPES or name.endswith(_PLACE_SUFFIXES):
            kind = "place"
        else:
            continue
        if best is None or _RANK[kind] > _RANK[best]:
            best = kind
    return best


def _first(value: Any) -> Any:
    """The first non-empty element of a list (RDFa and microdata wrap repeated values in lists)."""
    if isinstance(value, list):
        for item in value[:MAX_LIST_ITEMS]:
            if item not in (None, "", [], {}):
                return item
        return None
    return value


def _text(value: Any, max_chars: int = MAX_FIELD_CHARS, depth: int = 0) -> str | None:
    """A clean string from whatever a page put there: str, number, list, {"name": ...} or nothing."""
    if depth > 3 or value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return clean_text(value, max_chars=max_chars)
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than Python will print
            return None
    if isinstance(value, float):
        return None if not math.isfinite(value) else repr(value).removesuffix(".0")
    if isinstance(value, list):
        for item in value[:20]:
            text = _text(item, max_chars, depth + 1)
            if text:
                return text
        return None
    if isinstance(value, dict):
        for key in ("name", "text"):
            text = _text(value.get(key), max_chars, depth + 1)
            if text:
                return text
    return None


class _Mapper:
    """Turns compacted nodes of one syntax on one page into RawActivity records."""

    def __init__(self, nodes: list[Any], url: str, extracted_by: str) -> None:
        self.url = url
        self.extracted_by = extracted_by
        self.budget = _Budget(MAX_NODES)  # for the walks here; compaction had its own
        self.index: dict[str, dict[str, Any]] = {}
        self.candidates: list[tuple[str, dict[str, Any]]] = []
        self._walk(nodes)

    # --- discovery ---------------------------------------------------------------------------
    def _walk(self, nodes: list[Any]) -> None:
        """Find activity-typed nodes among top-level items and inside containers (ItemList, @graph...)."""
        stack: list[tuple[Any, int]] = [(node, 0) for node in reversed(nodes[:MAX_TOP_LEVEL_ITEMS])]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH or not self.budget.take():
                continue
            if isinstance(node, list):
                stack.extend((item, depth + 1) for item in reversed(node[:MAX_LIST_ITEMS]))
                continue
            if not isinstance(node, dict):
                continue
            node_id = node.get("@id")
            if isinstance(node_id, str) and len(node) > 1:
                self.index.setdefault(node_id, node)
            kind = _kind(node)
            if kind is not None:
                self.candidates.append((kind, node))
                continue
            for key in _CONTAINER_KEYS:
                if key in node:
                    stack.append((node[key], depth + 1))

    def _resolve(self, value: Any) -> Any:
        """Follow an {"@id": ...} reference to the node it names on this page (one hop)."""
        value = _first(value)
        if isinstance(value, dict) and set(value) == {"@id"}:
            return self.index.get(value["@id"], None)
        return value

    def _references(self, node: dict[str, Any]) -> set[str]:
        """@ids a node points at through its properties (bounded walk), excluding itself."""
        found: set[str] = set()
        stack: list[tuple[Any, int]] = [(value, 0) for key, value in node.items() if not key.startswith("@")]
        while stack:
            value, depth = stack.pop()
            if depth > 3 or not self.budget.take():
                continue
            if isinstance(value, list):
                stack.extend((item, depth + 1) for item in value[:MAX_LIST_ITEMS])
            elif isinstance(value, dict):
                ref = value.get("@id")
                if isinstance(ref, str):
                    found.add(ref)
                    if len(value) > 1:  # an inline node with an id: others may point at it
                        self.index.setdefault(ref, value)
                stack.extend((item, depth + 1) for key, item in value.items() if not key.startswith("@"))
        found.discard(node.get("@id"))
        return found

    def activities(self) -> list[RawActivity]:
        out: list[RawActivity] = []
        for kind, node in self._independent():
            try:
                raw = self._map(kind, node)
            except (ValueError, TypeError, RecursionError) as exc:  # hostile shapes pydantic refuses
                log.info("skipped a %s item on %s: %s", self.extracted_by, self.url, exc)
                continue
            if raw is not None:
                out.append(raw)
        return out

    def _independent(self) -> list[tuple[str, dict[str, Any]]]:
        """Candidates that are not part of another candidate on the page.

        A place that is the venue of an event or of another place (Park -> location -> Place), or a
        course instance of a course, is part of that item. X is dropped when a candidate Y points at
        it and Y ranks higher, or ranks the same and X does not point back (mutual links keep both).
        """
        refs = [self._references(node) for _, node in self.candidates]
        referrers: dict[str, list[int]] = {}
        for position, found in enumerate(refs):
            for ref in found:
                referrers.setdefault(ref, []).append(position)
        kept: list[tuple[str, dict[str, Any]]] = []
        for position, (kind, node) in enumerate(self.candidates):
            node_id = node.get("@id")
            dropped = False
            for other in referrers.get(node_id, []) if isinstance(node_id, str) else []:
                other_kind, other_node = self.candidates[other]
                if other == position or other_node.get("@id") == node_id:
                    continue
                if _RANK[other_kind] > _RANK[kind] or (
                    _RANK[other_kind] == _RANK[kind] and other_node.get("@id") not in refs[position]
                ):
                    dropped = True
                    break
            if not dropped:
                kept.append((kind, node))
        return kept

    # --- mapping -----------------------------------------------------------------------------
    def _map(self, kind: str, node: dict[str, Any]) -> RawActivity | None:
        name = _text(node.get("name"), MAX_NAME_CHARS)
        description = _text(node.get("description"), MAX_DESCRIPTION_CHARS)
        start = _text(node.get("startDate"))
        end = _text(node.get("endDate"))
        location: Location | None
        if kind == "place":
            # Sites often give a place a nested `location` (Park -> location -> Place "Fitzroy Gardens"):
            # it names the spot more precisely; the place's own address fills what it lacks.
            location = _combine(self._location(node.get("location")), self._place(node, fallback_name=name))
        else:
            source = node
            if kind == "course":
                instance = self._resolve(node.get("hasCourseInstance"))
                if isinstance(instance, dict):
                    source = instance
                    start = start or _text(instance.get("startDate"))
                    end = end or _text(instance.get("endDate"))
            location = self._location(source.get("location"))
        own_geo = self._geo(self._resolve(node.get("geo")))  # an item may carry `geo` itself, not on its place
        if own_geo and (location is None or location.latitude is None):
            location = location or Location()
            location.latitude, location.longitude = own_geo
        if not (name or description):
            log.debug("ignored a %s %s without name or description on %s", self.extracted_by, kind, self.url)
            return None
        return RawActivity(
            name=name,
            description=description,
            location=location,
            startDate=start,
            endDate=end,
            tags=self._tags(node.get("keywords")),
            imageURL=self._image(node.get("image")) or self._image(node.get("thumbnailUrl")),
            sourceUrl=self.url,
            itemUrl=absolute_http_url(_text(_first(node.get("url")), 4_000), self.url),
            extractedBy=self.extracted_by,
        )

    def _location(self, value: Any) -> Location | None:
        """Event.location: a Place (with address/geo), a PostalAddress, a plain string, or a list of them."""
        candidates = value if isinstance(value, list) else [value]
        for candidate in candidates[:10]:
            resolved = self._resolve(candidate)
            if isinstance(resolved, str):
                address = clean_text(resolved, max_chars=MAX_FIELD_CHARS)
                if address:
                    return Location(formattedAddress=address)
            elif isinstance(resolved, dict):
                types = _types(resolved)
                if "VirtualLocation" in types:
                    continue
                if "PostalAddress" in types:
                    location = self._address(resolved)
                else:
                    location = self._place(resolved, fallback_name=None)
                if location is not None:
                    return location
        return None

    def _place(self, node: dict[str, Any], fallback_name: str | None) -> Location | None:
        name = _text(node.get("name"), MAX_NAME_CHARS) or fallback_name
        location = self._address(self._resolve(node.get("address"))) or Location()
        # Coordinates stay coordinates: a page that gives only them gets no address made up from them.
        location.latitude, location.longitude = self._geo(self._resolve(node.get("geo"))) or (None, None)
        location.name = name
        if not any(location.model_dump().values()):
            return None
        return location

    def _address(self, value: Any) -> Location | None:
        if isinstance(value, str):
            text = clean_text(value, max_chars=MAX_FIELD_CHARS)
            return Location(formattedAddress=text) if text else None
        if not isinstance(value, dict):
            return None
        street = _text(value.get("streetAddress"))
        city = _text(value.get("addressLocality"))
        state = _text(value.get("addressRegion"))
        postal = _text(value.get("postalCode"))
        country = _text(self._resolve(value.get("addressCountry")))
        code = country_code(country)  # "UK", "Australia", "AUS" -> ISO alpha-2; the address keeps the page's text
        formatted = format_address(street, city, state, postal, country)
        if not formatted:
            formatted = _text(value.get("name"))
        if not formatted:
            return None
        return Location(
            formattedAddress=formatted,
            street_address=street,
            city=city,
            state_province=state,
            postal_code=postal,
            country_code=code,
        )

    def _geo(self, value: Any) -> tuple[float, float] | None:
        """(latitude, longitude) from GeoCoordinates, exactly as the page wrote them; None when absent or out of
        range (a swapped or garbled pair is dropped, not guessed at)."""
        if isinstance(value, list):
            value = next((item for item in value[:5] if isinstance(item, dict)), None)
        if not isinstance(value, dict):
            return None
        lat, lon = _text(value.get("latitude")), _text(value.get("longitude"))
        if not (lat and lon and _GEO_RE.match(lat) and _GEO_RE.match(lon)):
            return None
        if abs(float(lat)) > 90 or abs(float(lon)) > 180:
            return None
        return float(lat), float(lon)

    def _image(self, value: Any) -> str | None:
        """image: a URL string, an ImageObject (url/contentUrl), or a list of either."""
        items = value if isinstance(value, list) else [value]
        for item in items[:20]:
            item = _first(item)
            if isinstance(item, dict) and set(item) == {"@id"}:
                # A reference to an ImageObject on the page, or (RDFa) the image URL itself.
                item = self.index.get(item["@id"], item)
            if isinstance(item, dict):
                item = item.get("url") or item.get("contentUrl") or item.get("@id")
            url = absolute_http_url(_text(_first(item), 4_000), self.url)
            if url:
                return url
        return None

    def _tags(self, value: Any) -> list[str]:
        """keywords: "a, b" or ["a", "b"] (or a mix) -> ["a", "b"]."""
        items = value if isinstance(value, list) else [value]
        tags: list[str] = []
        for item in items[:MAX_TAGS]:
            text = item if isinstance(item, str) else _text(item, MAX_TAG_CHARS)
            if not text:
                continue
            for part in text[: MAX_TAGS * MAX_TAG_CHARS].split(","):
                tag = clean_text(part, max_chars=MAX_TAG_CHARS)
                if tag and tag not in tags:
                    tags.append(tag)
        return tags[:MAX_TAGS]


# --- per-syntax readers: each returns compacted nodes and never raises ----------------------------


def _jsonld_nodes(tree: lxml.html.HtmlElement, url: str, budget: _Budget, report: PageReport) -> list[Any]:
    nodes: list[Any] = []
    scripts = tree.xpath(
        "//script[contains(translate(@type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), 'ld+json')]"
    )
    for number, script in enumerate(scripts, start=1):
        text = script.text or ""
        if len(text) > MAX_JSONLD_BLOCK_CHARS:
            log.warning("skipped JSON-LD block %d on %s: %d characters is too large", number, url, len(text))
            report.unreadable.append(f"block {number}: {len(text)} characters is too large")
            continue
        outcome = parse_jsonld(text)
        if outcome.status == "unrepairable":
            log.info("skipped unreadable JSON-LD block %d on %s: %s", number, url, (outcome.error or "")[:200])
            report.unreadable.append(f"block {number}: {(outcome.error or '')[:200]}")
            continue
        if outcome.status == "repaired":
            report.blocks_repaired += 1
            report.repairs.update(outcome.repairs)
            log.info("repaired JSON-LD block %d on %s (%s)", number, url, ", ".join(outcome.repairs))
        try:
            nodes.extend(_compact(_as_list(outcome.data), budget) or [])
        except RecursionError:
            report.unreadable.append(f"block {number}: nested too deeply")
    return nodes


def _as_list(data: Any) -> list[Any]:
    return data if isinstance(data, list) else [data]


def _microdata_nodes(tree: lxml.html.HtmlElement, url: str, budget: _Budget) -> list[Any]:
    if not tree.xpath("//*[@itemscope]"):
        return []
    try:
        data = extruct.extract(tree, base_url=url, syntaxes=["microdata"], uniform=True, errors="strict")
    except Exception as exc:  # noqa: BLE001 - extruct/lxml raise arbitrary types on hostile markup
        log.info("skipped microdata on %s: %s: %s", url, type(exc).__name__, str(exc)[:200])
        return []
    return _compact(data.get("microdata", []), budget) or []


_TYPEOF_RE = re.compile(r"\stypeof\s*=", re.IGNORECASE)


def _rdfa_nodes(html: str, url: str, budget: _Budget) -> list[Any]:
    if not _TYPEOF_RE.search(html):  # RDFa items are typed with typeof=; skip the (slow) RDF parse otherwise
        return []
    if len(html) > MAX_RDFA_HTML_CHARS:
        log.warning("skipped RDFa on %s: %d characters is too large for the RDF parser", url, len(html))
        return []
    try:
        data = extruct.extract(html, base_url=url, syntaxes=["rdfa"], uniform=True, errors="strict")
    except Exception as exc:  # noqa: BLE001 - rdflib/pyRdfa raise arbitrary types on hostile markup
        log.info("skipped RDFa on %s: %s: %s", url, type(exc).__name__, str(exc)[:200])
        return []
    return _compact(data.get("rdfa", []), budget) or []


def _combine(primary: Location | None, fallback: Location | None) -> Location | None:
    """`primary` with its gaps filled from `fallback`; address parts move together, never mixed."""
    if primary is None or fallback is None:
        return primary or fallback
    merged = primary.model_copy()
    merged.name = primary.name or fallback.name
    if not primary.formattedAddress and fallback.formattedAddress:
        for field in ("formattedAddress", "street_address", "city", "state_province", "postal_code", "country_code"):
            setattr(merged, field, getattr(fallback, field))
    if primary.latitude is None and fallback.latitude is not None:  # the pair moves together, never mixed
        merged.latitude, merged.longitude = fallback.latitude, fallback.longitude
    return merged


_YMD_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})")


def _dedupe_key(activity: RawActivity) -> tuple[str, str] | None:
    if not activity.name:
        return None
    ymd = _YMD_RE.match(activity.startDate or "")  # "2018-7-19T00-00-00-00" and "2018-7-19" are one day
    day = "-".join(f"{int(part):02d}" for part in ymd.groups()) if ymd else (activity.startDate or "")[:10]
    return normalize_key(activity.name), day


def _merge(kept: RawActivity, duplicate: RawActivity) -> None:
    """Fill what the first copy of an item lacks from a later copy (another syntax may say more)."""
    for name in ("description", "location", "startDate", "endDate", "imageURL", "itemUrl"):
        if getattr(kept, name) is None and getattr(duplicate, name) is not None:
            setattr(kept, name, getattr(duplicate, name))
    if not kept.tags:
        kept.tags = list(duplicate.tags)


@dataclass
class PageReport:
    """What reading one page's structured data met, for the run's quality report."""

    blocks_repaired: int = 0
    repairs: Counter[str] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)  # JSON-LD blocks given up, with why
    items_by_source: Counter[str] = field(default_factory=Counter)
    shown_times: int = 0  # items whose visible start time was found beside them


@dataclass
class PageExtraction:
    activities: list[RawActivity]
    report: PageReport


def extract_page(html: str | bytes, url: str) -> PageExtraction:
    """Every activity (events, places, courses) in the page's JSON-LD, microdata, RDFa and microformats, with
    what was met on the way.

    The same item marked up in two syntaxes (or twice in one) is returned once, preferring JSON-LD,
    then microdata, then RDFa, then microformats, with gaps filled from the other copies. Each item carries the
    page's language and the wall time shown beside it, when there is one, for standardization to weigh.
    Never raises on bad markup.
    """
    report = PageReport()
    text = prepare_html(html)
    tree = parse_html(text)
    if tree is None:
        return PageExtraction([], report)
    readers: list[tuple[str, Callable[[_Budget], list[Any]]]] = [
        ("json-ld", lambda budget: _jsonld_nodes(tree, url, budget, report)),
        ("microdata", lambda budget: _microdata_nodes(tree, url, budget)),
        ("rdfa", lambda budget: _rdfa_nodes(text, url, budget)),
        ("microformats", lambda budget: _compact(microformat_nodes(text, tree, url), budget) or []),
    ]
    found: list[RawActivity] = []
    for syntax, read in readers:
        budget = _Budget(MAX_NODES)
        try:
            nodes = read(budget)
            mapper = _Mapper(nodes, url, EXTRACTED_BY[syntax])
            found.extend(mapper.activities())
        except RecursionError as exc:  # last line of defence: one syntax never sinks the others
            log.warning("gave up on %s data of %s: %s", syntax, url, exc)
            continue
        if budget.exhausted or mapper.budget.exhausted:
            log.warning("%s data of %s is larger than %d values; the rest was ignored", syntax, url, MAX_NODES)
    activities = _unique(found)[:MAX_ACTIVITIES_PER_PAGE]
    language = page_language(tree)
    _add_shown_times(tree, url, activities, report)
    for activity in activities:
        activity.language = activity.language or language
        report.items_by_source[activity.extractedBy or "unknown"] += 1
    return PageExtraction(activities, report)


_DAY_RE = re.compile(r"^\d{4}-\d{1,2}-(\d{1,2})")


def _add_shown_times(tree: lxml.html.HtmlElement, url: str, activities: list[RawActivity], report: PageReport) -> None:
    """The start (and end) time the page shows beside each dated item (see harvest/extract/visible_time.py)."""
    dated = [activity for activity in activities if activity.startDate][:MAX_SHOWN_TIME_LOOKUPS]
    if not dated:
        return
    times = VisibleTimes(
        tree, url, {a.itemUrl for a in activities if a.itemUrl}, {a.name for a in dated if a.name and not a.itemUrl}
    )
    for activity in dated:
        day = _DAY_RE.match(activity.startDate or "")
        start, end = times.around(url=activity.itemUrl, name=activity.name, day=int(day.group(1)) if day else None)
        if start:
            activity.shownStartTime, activity.shownEndTime = start, end
            report.shown_times += 1


def extract_structured(html: str | bytes, url: str) -> list[RawActivity]:
    """The activities of `extract_page`, without its report."""
    return extract_page(html, url).activities


def _same_place(a: RawActivity, b: RawActivity) -> bool:
    """Could two same-named, same-day items be one item? Yes unless both name clearly different places.

    Syntaxes format one address differently ("1 Main St, Eltham" vs "Eltham"), so containment counts.
    """
    if a.location is None or b.location is None:
        return True
    names = normalize_key(a.location.name), normalize_key(b.location.name)
    if all(names) and names[0] == names[1]:
        return True
    first, second = normalize_key(a.location.formattedAddress), normalize_key(b.location.formattedAddress)
    return not (first and second) or first in second or second in first


def _unique(activities: list[RawActivity]) -> list[RawActivity]:
    kept: dict[tuple[str, str], list[RawActivity]] = {}
    out: list[RawActivity] = []
    for activity in activities:
        key = _dedupe_key(activity)
        if key is None:
            out.append(activity)
            continue
        same = next((k for k in kept.get(key, []) if _same_place(k, activity)), None)
        if same is not None:
            _merge(same, activity)
        else:
            kept.setdefault(key, []).append(activity)
            out.append(activity)
    return out


def has_structured_activity(html: str | bytes, url: str) -> bool:
    """True when the page's structured data already names at least one activity (no LLM needed)."""
    return any(activity.name for activity in extract_structured(html, url))
