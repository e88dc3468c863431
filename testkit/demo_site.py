"""A realistic static family-activities website built from real scraped data, and a small server for it.

Why: the crawler, the extractors and the image pipeline need a site that behaves like the real thing
(pagination, tag pages, robots.txt, a sitemap, canonical links, `?ref=` duplicates, three structured-data
syntaxes, pages with none, pages only a browser can see, broken and missing images) without any network.
Every activity comes from `testkit/data/melbourne-activities.json`; nothing is invented.

Absolute URLs (canonical links, sitemap entries, JSON-LD images) are written as `{{BASE}}/path` and the
server replaces `{{BASE}}` with `http://<Host header>` when it serves a text file, so one built folder works
on any port. Page links and `<img src>` are root-relative, as on most real sites.

Syntax mix (shuffled with `seed`): ~5% labelled text only ("Activity: …" lines, for the LLM extractor),
~5% rendered by JavaScript only, ~15% microdata, ~15% RDFa, the rest JSON-LD (a quarter of those inside
an `@graph` with a BreadcrumbList). Schema types: Event for about half of the activities with a start
date, otherwise Park / Playground / TouristAttraction / LocalBusiness chosen from the tags and the name
(Playground is not a core schema.org type: real sites use it anyway).

    python -m testkit.demo_site build OUT [--limit N] [--per-page 20] [--seed 0]
    python -m testkit.demo_site serve OUT [--port 8000]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import mimetypes
import random
import re
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageDraw, ImageFont

DATA_PATH = Path(__file__).parent / "data" / "melbourne-activities.json"
BASE_TOKEN = "{{BASE}}"
MANIFEST_NAME = "_site.json"
SITE_NAME = "Little Explorers Melbourne"
SYNTAXES = ("jsonld", "microdata", "rdfa", "text", "js")
RESERVED_SLUGS = {"page"}
TEXT_SUFFIXES = {".html", ".xml", ".txt", ".css", ".js", ".json"}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".xml": "application/xml; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")
_ATTRACTION_TAGS = {"road trip", "adventure", "the great outdoors", "family adventures", "splash park", "water play"}
_BUSINESS_TAGS = {"cafe", "café", "kiosk"}


@dataclass(frozen=True)
class DemoActivity:
    """One activity as published on the demo site: where it is and how it is marked up."""

    name: str
    slug: str
    path: str
    syntax: str
    schema_type: str | None
    image_path: str | None
    image_status: str | None
    source_index: int


@dataclass
class SiteInfo:
    """What a build wrote, so tests and benchmarks can assert crawl and extraction results exactly."""

    root: Path
    pages: list[str]
    activity_pages: list[str]
    activities: list[DemoActivity]
    expected_names: dict[str, list[str]]
    images: dict[str, str]
    private_pages: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def names(self, *syntaxes: str) -> list[str]:
        """Names published with any of `syntaxes` (all syntaxes when none given); duplicates kept."""
        wanted = syntaxes or SYNTAXES
        return [a.name for a in self.activities if a.syntax in wanted]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], root: Path | None = None) -> SiteInfo:
        fields = dict(data)
        fields["root"] = Path(root or data["root"])
        fields["activities"] = [DemoActivity(**a) for a in data["activities"]]
        return cls(**fields)


def load_site_info(root: Path) -> SiteInfo:
    """Read the manifest a previous build left in `root` (for `serve`, benchmarks and `make demo`)."""
    return SiteInfo.from_json(json.loads((root / MANIFEST_NAME).read_text("utf-8")), root=root)


# ---------------------------------------------------------------------------------------------- helpers


def slugify(text: str) -> str:
    """URL-safe lowercase slug; never empty."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "item"


def _unique(slug: str, taken: set[str]) -> str:
    candidate, n = slug, 1
    while candidate in taken or candidate in RESERVED_SLUGS:
        n += 1
        candidate = f"{slug}-{n}"
    taken.add(candidate)
    return candidate


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _parse_date(value: str | None) -> datetime | date | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _human_date(value: str | None) -> str | None:
    parsed = _parse_date(value)
    return f"{parsed.day} {parsed.strftime('%B %Y')}" if parsed else None


def _iso_date(value: str | None) -> str | None:
    parsed = _parse_date(value)
    return parsed.isoformat() if parsed else None


def _address(location: dict[str, Any]) -> str | None:
    if location.get("formattedAddress"):
        return str(location["formattedAddress"])
    region = " ".join(p for p in (location.get("state_province"), location.get("postal_code")) if p)
    parts = [location.get("street_address"), location.get("city"), region, location.get("country_code")]
    joined = ", ".join(p for p in parts if p)
    return joined or None


def _json_for_script(document: Any) -> str:
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    return json.dumps(document, ensure_ascii=False, indent=1).replace("</", "<\\/")


def _postal_address(location: dict[str, Any]) -> dict[str, Any] | None:
    mapping = {
        "streetAddress": "street_address",
        "addressLocality": "city",
        "addressRegion": "state_province",
        "postalCode": "postal_code",
        "addressCountry": "country_code",
    }
    address = {k: location[v] for k, v in mapping.items() if location.get(v)}
    return {"@type": "PostalAddress", **address} if address else None


def _schema_type(activity: dict[str, Any], rng: random.Random) -> str:
    if activity.get("startDate") and rng.random() < 0.5:
        return "Event"
    tags = {t.lower() for t in activity.get("tags") or []}
    name = activity["name"].lower()
    if tags & _BUSINESS_TAGS:
        return "LocalBusiness"
    if tags & _ATTRACTION_TAGS:
        return "TouristAttraction"
    if "playground" in name or "playspace" in name or "play space" in name:
        return "Playground"
    return "Park"


def _assign_syntaxes(count: int, rng: random.Random) -> list[str]:
    """Shuffle a fixed mix so every syntax appears once there are at least five activities."""
    def share(fraction: float) -> int:
        return max(1, round(count * fraction)) if count >= 5 else 0

    mix = ["text"] * share(0.05) + ["js"] * share(0.05) + ["microdata"] * share(0.15) + ["rdfa"] * share(0.15)
    mix += ["jsonld"] * (count - len(mix))
    rng.shuffle(mix)
    return mix


# ----------------------------------------------------------------------------------------------- images


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font still draws
        return ImageFont.load_default()


def _image_bytes(name: str, fmt: str, seed: int) -> tuple[bytes, tuple[int, int]]:
    """Simple generated art with the name drawn on it; sized from the name so duplicates get identical bytes."""
    rng = random.Random(f"{seed}:{name}")
    roll = rng.random()
    if roll < 0.2:
        size = (rng.choice([1600, 1920, 2400]), 0)
        size = (size[0], size[0] * rng.choice([9, 10, 12]) // 16)
    elif roll < 0.3:
        size = (rng.choice([700, 900]), rng.choice([1100, 1400]))  # portrait, taller than 630
    elif roll < 0.45:
        size = (rng.choice([320, 400, 480, 600]), rng.choice([240, 300, 360]))
    else:
        size = (rng.choice([800, 960, 1024, 1200]), rng.choice([500, 600, 640, 768]))
    rotate = fmt == "jpeg" and rng.random() < 0.05  # stored sideways with an EXIF orientation tag
    width, height = size
    sky = (rng.randrange(90, 170), rng.randrange(150, 210), rng.randrange(200, 250))
    grass = (rng.randrange(40, 110), rng.randrange(120, 190), rng.randrange(40, 100))
    img = Image.new("RGB", size, sky)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, height * 2 // 3, width, height), fill=grass)
    for _ in range(6):
        x, r = rng.randrange(width), rng.randrange(max(8, width // 30), max(9, width // 8))
        horizon = height * 2 // 3
        draw.ellipse((x - r, horizon - r, x + r, horizon + r // 2), fill=(30, rng.randrange(90, 150), 40))
    sx = rng.randrange(width // 2)
    draw.polygon([(sx, height * 2 // 3), (sx + width // 6, height // 3), (sx + width // 6 + 10, height // 3 + 10)],
                 fill=(230, 80, 60))
    font = _font(max(12, width // 28))
    draw.rectangle((0, 0, width, max(24, width // 28) + 16), fill=(20, 20, 20))
    draw.text((8, 8), name, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    if fmt == "png":
        img.save(out, "PNG", compress_level=1)
    elif rotate:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90° clockwise to display"
        img.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=80, exif=exif)
    else:
        img.save(out, "JPEG", quality=80)
    return out.getvalue(), size


_NOT_AN_IMAGE = b"<!doctype html><html><head><title>Error</title></head><body><h1>Image moved</h1></body></html>\n"


# ------------------------------------------------------------------------------------------------ pages

_CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#222}
header,footer{background:#2d6a4f;color:#fff;padding:.8em}
header a,footer a{color:#fff;margin-right:1em}main{max-width:60em;margin:auto;padding:1em}
.activity img{max-width:100%;height:auto}.tags li{display:inline;margin-right:.6em}
.pagination a{margin:0 .3em}
"""


def _layout(title: str, path: str, body: str, *, head: str = "", description: str | None = None) -> str:
    meta = f'<meta name="description" content="{_esc(description)}">\n' if description else ""
    return f"""<!doctype html>
<html lang="en-AU">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)} | {SITE_NAME}</title>
{meta}<link rel="canonical" href="{BASE_TOKEN}{path}">
<link rel="stylesheet" href="/static/site.css">
{head}</head>
<body>
<header id="top"><nav>
<a href="/">Home</a><a href="/activities/page/1/">All activities</a><a href="/tags/">Tags</a>
</nav></header>
<main>
{body}
</main>
<footer><p>{SITE_NAME} &middot; <a href="#top">Back to top</a> &middot; <a href="mailto:hello@example.com">Contact</a>
&middot; <a href="https://www.example.com/about-us">About the publisher</a></p></footer>
</body>
</html>
"""


def _tag_list(tags: list[str], tag_slugs: dict[str, str]) -> str:
    # A tag without a slug (a build without tag pages) is plain text: no link to a page that does not exist.
    items = "".join(f'<li><a href="/tags/{tag_slugs[t]}/">{_esc(t)}</a></li>' if t in tag_slugs
                    else f"<li>{_esc(t)}</li>" for t in tags)
    return f'<ul class="tags">{items}</ul>' if items else ""


def _description_html(text: str | None) -> str:
    if not text:
        return ""
    return "".join(f"<p>{_esc(p)}</p>" for p in text.split("\n") if p.strip())


def _jsonld_entity(act: dict[str, Any], schema_type: str, path: str, image_url: str | None) -> dict[str, Any]:
    entity: dict[str, Any] = {"@type": schema_type, "name": act["name"], "url": f"{BASE_TOKEN}{path}"}
    if act.get("description"):
        entity["description"] = act["description"]
    if act.get("startDate"):
        entity["startDate"] = act["startDate"]
    location = act.get("location") or {}
    if location:
        place: dict[str, Any] = {"@type": "Place", "name": location.get("name") or act["name"]}
        postal = _postal_address(location)
        if postal:
            place["address"] = postal
        entity["location"] = place
        if schema_type != "Event" and postal:
            entity["address"] = postal
    if image_url:
        entity["image"] = image_url
    if act.get("tags"):
        entity["keywords"] = ", ".join(act["tags"])
    return entity


def _jsonld_page_body(act: dict[str, Any], schema_type: str, path: str, image_path: str | None,
                      tag_slugs: dict[str, str], graph: bool) -> tuple[str, str]:
    entity = _jsonld_entity(act, schema_type, path, f"{BASE_TOKEN}{image_path}" if image_path else None)
    if graph:
        crumbs = {
            "@type": "BreadcrumbList",
            "itemListElement": [
                {"@type": "ListItem", "position": 1, "name": "Home", "item": f"{BASE_TOKEN}/"},
                {"@type": "ListItem", "position": 2, "name": "Activities", "item": f"{BASE_TOKEN}/activities/page/1/"},
            ],
        }
        document: dict[str, Any] = {"@context": "https://schema.org", "@graph": [crumbs, entity]}
    else:
        document = {"@context": "https://schema.org", **entity}
    head = f'<script type="application/ld+json">\n{_json_for_script(document)}\n</script>\n'
    return head, _plain_article(act, image_path, tag_slugs)


def _where_text(location: dict[str, Any]) -> str | None:
    address = _address(location)
    parts = [p for p in (location.get("name"), address) if p]
    return ", ".join(parts) or None


def _plain_article(act: dict[str, Any], image_path: str | None, tag_slugs: dict[str, str]) -> str:
    location = act.get("location") or {}
    where, when = _where_text(location), _human_date(act.get("startDate"))
    return "\n".join(filter(None, [
        '<article class="activity">',
        f"<h1>{_esc(act['name'])}</h1>",
        f'<img src="{image_path}" alt="{_esc(act["name"])}">' if image_path else "",
        f'<p class="where">{_esc(where)}</p>' if where else "",
        f'<p class="when">Listed {_esc(when)}</p>' if when else "",
        f'<div class="description">{_description_html(act.get("description"))}</div>',
        _tag_list(act.get("tags") or [], tag_slugs),
        "</article>",
    ]))


def _microdata_article(act: dict[str, Any], schema_type: str, path: str, image_path: str | None,
                       tag_slugs: dict[str, str]) -> str:
    location = act.get("location") or {}
    lines = [
        f'<article class="activity" itemscope itemtype="https://schema.org/{schema_type}">',
        f'<h1 itemprop="name">{_esc(act["name"])}</h1>',
        f'<link itemprop="url" href="{BASE_TOKEN}{path}">',
    ]
    if image_path:
        lines.append(f'<img itemprop="image" src="{image_path}" alt="{_esc(act["name"])}">')
    if location:
        lines.append('<div class="where" itemprop="location" itemscope itemtype="https://schema.org/Place">')
        lines.append(f'<span itemprop="name">{_esc(location.get("name") or act["name"])}</span>')
        postal = _postal_address(location)
        if postal:
            lines.append('<span itemprop="address" itemscope itemtype="https://schema.org/PostalAddress">')
            lines += [f'<span itemprop="{k}">{_esc(v)}</span>' for k, v in postal.items() if k != "@type"]
            lines.append("</span>")
        lines.append("</div>")
    if act.get("startDate"):
        lines.append(f'<p class="when">Listed <time itemprop="startDate" datetime="{_esc(act["startDate"])}">'
                     f'{_esc(_human_date(act["startDate"]) or act["startDate"])}</time></p>')
    if act.get("description"):
        lines.append(f'<div class="description" itemprop="description">{_description_html(act["description"])}</div>')
    if act.get("tags"):
        lines.append(f'<meta itemprop="keywords" content="{_esc(", ".join(act["tags"]))}">')
    lines += [_tag_list(act.get("tags") or [], tag_slugs), "</article>"]
    return "\n".join(lines)


def _rdfa_article(act: dict[str, Any], schema_type: str, path: str, image_path: str | None,
                  tag_slugs: dict[str, str]) -> str:
    location = act.get("location") or {}
    lines = [
        f'<article class="activity" vocab="https://schema.org/" typeof="{schema_type}" resource="{BASE_TOKEN}{path}">',
        f'<h1 property="name">{_esc(act["name"])}</h1>',
    ]
    if image_path:
        lines.append(f'<img property="image" src="{image_path}" alt="{_esc(act["name"])}">')
    if location:
        lines.append('<div class="where" property="location" typeof="Place">')
        lines.append(f'<span property="name">{_esc(location.get("name") or act["name"])}</span>')
        postal = _postal_address(location)
        if postal:
            lines.append('<span property="address" typeof="PostalAddress">')
            lines += [f'<span property="{k}">{_esc(v)}</span>' for k, v in postal.items() if k != "@type"]
            lines.append("</span>")
        lines.append("</div>")
    if act.get("startDate"):
        lines.append(f'<p class="when">Listed <time property="startDate" content="{_esc(act["startDate"])}" '
                     f'datetime="{_esc(act["startDate"])}">'
                     f'{_esc(_human_date(act["startDate"]) or act["startDate"])}</time></p>')
    if act.get("description"):
        lines.append(f'<div class="description" property="description">{_esc(act["description"])}</div>')
    if act.get("tags"):
        lines.append(f'<meta property="keywords" content="{_esc(", ".join(act["tags"]))}">')
    lines += [_tag_list(act.get("tags") or [], tag_slugs), "</article>"]
    return "\n".join(lines)


def labelled_text(act: dict[str, Any], image_url: str | None) -> list[str]:
    """The `Label: value` lines the local OpenAI stand-in reads from pages without structured data."""
    location = act.get("location") or {}
    where = _where_text(location)
    when = _iso_date(act.get("startDate"))
    lines = [f"Activity: {act['name']}"]
    if where:
        lines.append(f"Where: {where}")
    if when:
        lines.append(f"When: {when}")
    if act.get("description"):
        lines.append(f"About: {' '.join(act['description'].split())}")
    if act.get("tags"):
        lines.append(f"Tags: {', '.join(act['tags'])}")
    if image_url:
        lines.append(f"Image: {image_url}")
    return lines


def _text_article(act: dict[str, Any], image_path: str | None, tag_slugs: dict[str, str]) -> str:
    lines = labelled_text(act, f"{BASE_TOKEN}{image_path}" if image_path else None)
    details = "\n".join(f"<p>{_esc(line)}</p>" for line in lines)
    return "\n".join(filter(None, [
        '<article class="activity">',
        f"<h1>{_esc(act['name'])}</h1>",
        f'<img src="{image_path}" alt="">' if image_path else "",
        f'<div class="details">\n{details}\n</div>',
        _tag_list(act.get("tags") or [], tag_slugs),
        "</article>",
    ]))


_JS_RENDER = """<script>
(function () {
  // The activity ships base64-encoded so that only a browser running this script ever sees it.
  var bytes = Uint8Array.from(atob("%s"), function (c) { return c.charCodeAt(0); });
  var data = JSON.parse(new TextDecoder("utf-8").decode(bytes));
  var ld = data.jsonld;
  ld.url = new URL(ld.url, location.href).href;
  if (ld.image) { ld.image = new URL(ld.image, location.href).href; }
  var root = document.getElementById("root");
  var article = document.createElement("article");
  article.className = "activity";
  function add(tag, text, cls) {
    var el = document.createElement(tag);
    el.textContent = text;
    if (cls) { el.className = cls; }
    article.appendChild(el);
    return el;
  }
  add("h1", ld.name);
  if (ld.image) {
    var img = document.createElement("img");
    img.src = ld.image;
    img.alt = ld.name;
    article.appendChild(img);
  }
  if (data.where) { add("p", data.where, "where"); }
  if (data.when) { add("p", "Listed " + data.when, "when"); }
  if (ld.description) { add("div", ld.description, "description"); }
  if (ld.keywords) { add("p", "Tags: " + ld.keywords, "tags"); }
  root.appendChild(article);
  var script = document.createElement("script");
  script.type = "application/ld+json";
  script.textContent = JSON.stringify(ld);
  document.head.appendChild(script);
  document.title = ld.name + " | %s";
})();
</script>
"""


def _js_body(act: dict[str, Any], schema_type: str, path: str, image_path: str | None) -> str:
    entity = _jsonld_entity(act, schema_type, path, image_path)
    entity["url"] = path  # made absolute by the script, from location.href
    payload = {
        "jsonld": {"@context": "https://schema.org", **entity},
        "where": _where_text(act.get("location") or {}),
        "when": _human_date(act.get("startDate")),
    }
    encoded = base64.b64encode(json.dumps(payload, ensure_ascii=False).encode("utf-8")).decode("ascii")
    return ('<div id="root"></div>\n<noscript>This activity needs JavaScript to display.</noscript>\n'
            + _JS_RENDER % (encoded, SITE_NAME))


def _listing_item(activity: DemoActivity, act: dict[str, Any], ref: str | None) -> str:
    href = activity.path + (f"?ref={ref}" if ref else "")
    city = ((act.get("location") or {}).get("city")) or ""
    suffix = f" &ndash; {_esc(city)}" if city else ""
    return f'<li><a href="{href}">{_esc(act["name"])}</a>{suffix}</li>'


def _pagination(page: int, pages: int, style: str = "numbered") -> str:
    """numbered: every page linked (plus rel=prev/next); next: only "Older »"/"« Newer" without rel, as on
    blogs and "what's on" listings, so only the text tells a crawler these are further pages of the list."""
    links = []
    if style == "next":
        if page > 1:
            links.append(f'<a href="/activities/page/{page - 1}/">&laquo; Newer</a>')
        links.append(f"<span>Page {page} of {pages}</span>")
        if page < pages:
            links.append(f'<a href="/activities/page/{page + 1}/">Older &raquo;</a>')
        return f'<nav class="pagination">{" ".join(links)}</nav>'
    if page > 1:
        links.append(f'<a rel="prev" href="/activities/page/{page - 1}/">&laquo; Previous</a>')
    for n in range(1, pages + 1):
        links.append(f"<strong>{n}</strong>" if n == page else f'<a href="/activities/page/{n}/">{n}</a>')
    if page < pages:
        links.append(f'<a rel="next" href="/activities/page/{page + 1}/">Next &raquo;</a>')
    return f'<nav class="pagination">{" ".join(links)}</nav>'


# ------------------------------------------------------------------------------------------------ build


def write_page(root: Path, url_path: str, text: str) -> None:
    """Write `text` as the page served at `url_path` (a path ending in / is its index.html)."""
    target = root / url_path.lstrip("/")
    if url_path.endswith("/"):
        target = target / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, "utf-8")


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST_NAME).exists():
            raise FileExistsError(f"{out_dir} is not empty and holds no demo site: refusing to overwrite it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def build_demo_site(out_dir: Path, *, activities_path: Path | None = None, limit: int | None = None,
                    per_page: int = 20, seed: int = 0, pagination: str = "numbered", tag_pages: bool = True,
                    sitemap: str | None = "robots") -> SiteInfo:
    """Write the demo site for the first `limit` activities into `out_dir` and return what it holds.

    Variants for crawl-reach tests: `pagination="next"` links listing pages only one to the next (so a
    crawler that spends depth on pagination stops early); `pagination="none"` writes no listing at all (the
    activities are then reachable only through the sitemap and the home page's featured six);
    `tag_pages=False` leaves out the tag pages (another way in); `sitemap` is "robots" (named in robots.txt),
    "root" (only at /sitemap.xml) or None (no sitemap).
    """
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    if pagination not in ("numbered", "next", "none") or sitemap not in ("robots", "root", None):
        raise ValueError(f"unknown variant pagination={pagination!r} sitemap={sitemap!r}")
    source = json.loads(Path(activities_path or DATA_PATH).read_text("utf-8"))
    acts: list[dict[str, Any]] = [a for a in source if isinstance(a, dict) and a.get("name")]
    if limit is not None:
        acts = acts[:limit]
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    rng = random.Random(seed)

    syntaxes = _assign_syntaxes(len(acts), rng)
    slugs: set[str] = set()
    tag_slugs: dict[str, str] = {}
    taken_tags: set[str] = set()
    for act in acts:
        for tag in act.get("tags") or []:
            if tag not in tag_slugs:
                tag_slugs[tag] = _unique(slugify(tag), taken_tags)
    if not tag_pages:
        tag_slugs = {}  # tags are then plain text on activity pages

    image_candidates = [i for i, a in enumerate(acts) if a.get("imageURL") and syntaxes[i] == "jsonld"]
    broken = set(rng.sample(image_candidates, min(2, len(image_candidates))))
    broken_order = sorted(broken)
    statuses = {i: ("broken" if n == 0 else "missing") for n, i in enumerate(broken_order)}

    published: list[DemoActivity] = []
    images: dict[str, str] = {}
    pages: list[str] = []
    for index, act in enumerate(acts):
        slug = _unique(slugify(act["name"]), slugs)
        path = f"/activities/{slug}/"
        syntax = syntaxes[index]
        schema_type = None if syntax == "text" else _schema_type(act, rng)
        image_path = image_status = None
        if act.get("imageURL"):
            fmt = "png" if urlsplit(act["imageURL"]).path.lower().endswith(".png") else "jpeg"
            image_path = f"/images/{index + 1}.{'png' if fmt == 'png' else 'jpg'}"
            image_status = statuses.get(index, "ok")
            if image_status == "ok":
                data, _ = _image_bytes(act["name"], fmt, seed)
                images[image_path] = fmt
            elif image_status == "broken":
                data = _NOT_AN_IMAGE
                images[image_path] = "broken"
            else:
                data = b""
                images[image_path] = "missing"
            if image_status != "missing":
                target = out_dir / image_path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

        description = (act.get("description") or "")[:155] or None
        if syntax == "jsonld":
            head, body = _jsonld_page_body(act, schema_type or "Park", path, image_path, tag_slugs,
                                           graph=rng.random() < 0.25)
            page = _layout(act["name"], path, body, head=head, description=description)
        elif syntax == "microdata":
            page = _layout(act["name"], path, _microdata_article(act, schema_type or "Park", path, image_path,
                                                                 tag_slugs), description=description)
        elif syntax == "rdfa":
            page = _layout(act["name"], path, _rdfa_article(act, schema_type or "Park", path, image_path,
                                                            tag_slugs), description=description)
        elif syntax == "text":
            page = _layout(act["name"], path, _text_article(act, image_path, tag_slugs), description=description)
        else:
            page = _layout("Loading activity…", path, _js_body(act, schema_type or "Park", path, image_path))
        write_page(out_dir, path, page)
        published.append(DemoActivity(act["name"], slug, path, syntax, schema_type, image_path, image_status, index))

    # Listing pages: every fifth link carries a ?ref= variant of the same canonical page.
    total_pages = max(1, -(-len(published) // per_page)) if pagination != "none" else 0
    for page_no in range(1, total_pages + 1):
        chunk = range((page_no - 1) * per_page, min(page_no * per_page, len(published)))
        items = "\n".join(_listing_item(published[i], acts[i], "listing" if i % 5 == 2 else None) for i in chunk)
        body = (f"<h1>All activities &ndash; page {page_no} of {total_pages}</h1>\n"
                f'<ul class="listing">\n{items}\n</ul>\n{_pagination(page_no, total_pages, pagination)}')
        path = f"/activities/page/{page_no}/"
        write_page(out_dir, path, _layout(f"All activities, page {page_no}", path, body))
        pages.append(path)

    if pagination == "none":  # the nav still links page 1: a page without a listing, not a 404
        body = "<h1>All activities</h1>\n<p>Use the search or the sitemap.</p>"
        write_page(out_dir, "/activities/page/1/", _layout("All activities", "/activities/page/1/", body))
        pages.append("/activities/page/1/")

    by_tag: dict[str, list[int]] = {}
    for i, act in enumerate(acts):
        for tag in dict.fromkeys(act.get("tags") or []):
            by_tag.setdefault(tag, []).append(i)
    if not tag_pages:
        by_tag = {}
    for tag, members in by_tag.items():
        path = f"/tags/{tag_slugs[tag]}/"
        items = "\n".join(_listing_item(published[i], acts[i], None) for i in members)
        body = (f'<h1>Tagged &ldquo;{_esc(tag)}&rdquo;</h1>\n<p>{len(members)} activities</p>\n'
                f'<ul class="listing">\n{items}\n</ul>')
        write_page(out_dir, path, _layout(f"Tag: {tag}", path, body))
        pages.append(path)
    tag_items = "\n".join(f'<li><a href="/tags/{tag_slugs[t]}/">{_esc(t)}</a> ({len(m)})</li>'
                          for t, m in sorted(by_tag.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    tags_body = f'<h1>All tags</h1>\n<ul class="tag-cloud">\n{tag_items}\n</ul>'
    write_page(out_dir, "/tags/", _layout("All tags", "/tags/", tags_body))
    pages.insert(0, "/tags/")

    featured = "\n".join(_listing_item(published[i], acts[i], "home") for i in range(min(6, len(published))))
    popular = sorted(by_tag.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:20]
    popular_html = "".join(f'<li><a href="/tags/{tag_slugs[t]}/">{_esc(t)}</a></li>' for t, _ in popular)
    home = (f"<h1>{SITE_NAME}</h1>\n"
            f"<p>{len(published)} parks, playgrounds and outings for families around Melbourne.</p>\n"
            f'<h2>Featured</h2>\n<ul class="featured">\n{featured}\n</ul>\n'
            f'<p><a href="/activities/page/1/">Browse all activities</a></p>\n'
            f'<h2>Popular tags</h2>\n<ul class="tags">{popular_html}</ul>\n'
            f'<p class="staff"><a href="/private/">Staff area</a></p>')
    write_page(out_dir, "/", _layout(SITE_NAME, "/", home, description="Family activities around Melbourne."))
    pages.insert(0, "/")

    private_body = ("<h1>Staff area</h1>\n<p>Draft listings and notes. robots.txt disallows this folder: "
                    "a polite crawler never fetches this page.</p>")
    write_page(out_dir, "/private/", _layout("Staff area", "/private/", private_body))

    write_page(out_dir, "/static/site.css", _CSS)
    sitemap_line = f"\nSitemap: {BASE_TOKEN}/sitemap.xml\n" if sitemap == "robots" else ""
    write_page(out_dir, "/robots.txt", f"User-agent: *\nDisallow: /private/\n{sitemap_line}")
    activity_paths = [a.path for a in published]
    if sitemap:
        write_page(out_dir, "/sitemap.xml", _sitemap(out_dir, pages + activity_paths))

    expected = {s: [a.name for a in published if a.syntax == s] for s in SYNTAXES}
    info = SiteInfo(
        root=out_dir, pages=pages + activity_paths, activity_pages=activity_paths, activities=published,
        expected_names=expected, images=images, private_pages=["/private/"],
        tags={slug: tag for tag, slug in tag_slugs.items()},
    )
    (out_dir / MANIFEST_NAME).write_text(json.dumps(info.to_json(), ensure_ascii=False, indent=1), "utf-8")
    return info


def _sitemap(root: Path, paths: list[str]) -> str:
    """The sitemap, each entry's `<lastmod>` the time its page's file was last written (as a site generator
    would say it): a crawler may skip a page not modified since it last fetched it."""
    entries = []
    for path in paths:
        lastmod = ""
        target = _file_of(root, path)
        if target.is_file():
            modified = datetime.fromtimestamp(int(target.stat().st_mtime), tz=UTC)
            lastmod = f"<lastmod>{modified.isoformat()}</lastmod>"
        entries.append(f"<url><loc>{BASE_TOKEN}{_esc(path)}</loc>{lastmod}</url>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
            + "\n".join(entries) + "\n</urlset>\n")


def _file_of(root: Path, url_path: str) -> Path:
    target = root / url_path.lstrip("/")
    return target / "index.html" if url_path.endswith("/") else target


def refresh_sitemap(root: Path) -> None:
    """Write the sitemap again after pages changed, so its `<lastmod>`s say when (a site's regeneration)."""
    root = Path(root)
    if (root / "sitemap.xml").is_file():
        write_page(root, "/sitemap.xml", _sitemap(root, load_site_info(root).pages))


# ----------------------------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    server: _SiteHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "DemoSite/1.0"
    # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms per response.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        return  # requests are recorded in SiteServer.log instead of printed

    def _base(self) -> str:
        host = self.headers.get("Host", "")
        return f"http://{host}" if host and _HOST_RE.match(host) else self.server.owner.base_url

    def setup(self) -> None:
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.server.owner)  # bytes sent: what a client received

    def _serve(self, *, with_body: bool) -> None:
        parts = urlsplit(self.path)
        url_path = unquote(parts.path) or "/"
        status, headers, body = self._resolve(url_path, parts.query)
        if status == HTTPStatus.OK:
            # Validators like any static host's, so clients can revalidate with a conditional GET.
            headers["ETag"] = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            if self._not_modified(headers):
                status, body = HTTPStatus.NOT_MODIFIED, b""
        self.server.owner._record(self.command, self.path, url_path, status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != HTTPStatus.NOT_MODIFIED:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _not_modified(self, headers: dict[str, str]) -> bool:
        """RFC 9110 13.1-13.2: If-None-Match (weak comparison, a list or *) decides when sent; otherwise
        If-Modified-Since against Last-Modified (whole seconds). A malformed date is ignored, as the RFC asks."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            if if_none_match.strip() == "*":
                return True
            tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
            return headers["ETag"] in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        last_modified = headers.get("Last-Modified")
        if not if_modified_since or not last_modified:
            return False
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False  # not an HTTP-date (those are always GMT)
        return parsedate_to_datetime(last_modified) <= since

    def _resolve(self, url_path: str, query: str) -> tuple[int, dict[str, str], bytes]:
        root = self.server.owner.root
        target = (root / url_path.lstrip("/")).resolve()
        if target != root and root not in target.parents:
            return self._not_found()
        if target.is_dir():
            if not url_path.endswith("/"):
                location = url_path + "/" + (f"?{query}" if query else "")
                return HTTPStatus.MOVED_PERMANENTLY, {"Location": location}, b""
            target = target / "index.html"
        if not target.is_file():
            return self._not_found()
        suffix = target.suffix.lower()
        content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        body = target.read_bytes()
        if suffix in TEXT_SUFFIXES:
            body = body.replace(BASE_TOKEN.encode(), self._base().encode())
        last_modified = formatdate(int(target.stat().st_mtime), usegmt=True)
        return HTTPStatus.OK, {"Content-Type": content_type, "Last-Modified": last_modified}, body

    def _not_found(self) -> tuple[int, dict[str, str], bytes]:
        body = b"<!doctype html><html><head><title>Not found</title></head><body><h1>404 Not found</h1></body></html>\n"
        return HTTPStatus.NOT_FOUND, {"Content-Type": "text/html; charset=utf-8"}, body


class _CountingWriter(io.BufferedIOBase):
    """The handler's socket writer, counting every byte written (status line, headers, body) for its server."""

    def __init__(self, raw: Any, owner: SiteServer) -> None:
        self._raw = raw
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._owner._count_sent(len(data))  # before the write: a client that has the bytes sees them counted
        return int(self._raw.write(data))

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        super().close()
        self._raw.close()


class _SiteHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: SiteServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response (a crawler hitting its byte cap, a timeout) is not a server bug.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


class SiteServer:
    """The demo site on 127.0.0.1: counts requests per path so tests can check what a crawler fetched."""

    def __init__(self, root: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.root = Path(root).resolve()
        self.host = host
        self._port = port
        self._httpd: _SiteHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str, int]] = []
        self.bytes_sent = 0  # every byte written to clients: status lines, headers and bodies
        self.info: SiteInfo | None = None  # what serve_site found in the folder's manifest, if any

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the demo site server is not running: call start() first")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def start(self) -> SiteServer:
        if self._httpd is None:
            self._httpd = _SiteHTTPServer((self.host, self._port), _Handler)
            self._httpd.owner = self
            # A short poll interval makes stop() return in ~50 ms instead of the default 0.5 s.
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="demo-site",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def total_requests(self) -> int:
        """Every request served so far (any path, any status): a resumed run should not add any."""
        with self._lock:
            return sum(self.requests.values())

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()
            self.bytes_sent = 0

    def statuses(self) -> Counter[int]:
        """How many responses had each status (e.g. 304s on a re-crawl)."""
        with self._lock:
            return Counter(status for _, _, status in self.log)

    def _count_sent(self, size: int) -> None:
        with self._lock:
            self.bytes_sent += size

    def _record(self, method: str, target: str, path: str, status: int) -> None:
        with self._lock:
            self.requests[path] += 1
            self.log.append((method, target, int(status)))

    def __enter__(self) -> SiteServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve_site(root: Path, port: int = 0, host: str = "127.0.0.1") -> SiteServer:
    """Serve a built site folder in a background thread; port 0 picks a free port. Stop it with .stop()."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root} is not a folder: build the demo site first")
    server = SiteServer(root, port, host)
    if (Path(root) / MANIFEST_NAME).is_file():
        server.info = load_site_info(Path(root))
    return server.start()


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.demo_site", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write the demo site into OUT")
    build.add_argument("out", type=Path)
    build.add_argument("--limit", type=int, default=None)
    build.add_argument("--per-page", type=int, default=20)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--activities", type=Path, default=None, help="another activities JSON file")
    serve = commands.add_parser("serve", help="serve a built site until interrupted")
    serve.add_argument("out", type=Path)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    if args.command == "build":
        started = time.perf_counter()
        info = build_demo_site(args.out, activities_path=args.activities, limit=args.limit,
                               per_page=args.per_page, seed=args.seed)
        counts = ", ".join(f"{s} {len(n)}" for s, n in info.expected_names.items())
        print(f"built {len(info.activities)} activities ({counts}), {len(info.pages)} pages, "
              f"{len(info.images)} images in {info.root} in {time.perf_counter() - started:.1f}s")
        return 0
    server = serve_site(args.out, args.port, args.host)
    print(f"serving {server.root} at {server.base_url}/ (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
