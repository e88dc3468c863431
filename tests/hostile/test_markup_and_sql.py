"""Names and descriptions with markup and SQL-looking text: crawled, extracted, standardized and imported into
Postgres, they are stored as the text a reader saw (tags stripped, everything else verbatim, nothing
executed), and escaped where the run summary renders them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import sqlalchemy as sa

from flows.artifacts import summary_markdown
from harvest.db.engine import get_engine
from harvest.db.schema import activities, scrape_runs
from harvest.extract.structured import extract_structured
from harvest.import_.activities import import_activities
from harvest.merge.final import final_record
from harvest.models import RunConfig
from harvest.standardize.stage import standardize_raw_activities
from harvest.storage import LocalStore, iter_jsonl, write_jsonl
from tests.hostile.support import make_config

# (what the page says, what must be stored)
HOSTILE = [
    ("Robert'); DROP TABLE activities;--", "Robert'); DROP TABLE activities;--"),
    ("1' OR '1'='1", "1' OR '1'='1"),
    ('"; DELETE FROM scrape_runs WHERE ""="', '"; DELETE FROM scrape_runs WHERE ""="'),
    ("Story time <b>for kids</b><script>alert('x')</script>", "Story time for kids"),
    # Extraction decodes the entities; standardize then treats the result as markup, so no tag is ever stored.
    ("&lt;img src=x onerror=alert(1)&gt; Puppet show", "Puppet show"),
    ("Pipes | and `ticks` and [link](javascript:alert(1)) ** stars", "Pipes | and `ticks` and [link](javascript:alert(1)) ** stars"),
    ("Null\\u0000 byte and emoji \U0001F3A0 %s %(x)s {0} $1", "Null byte and emoji \U0001F3A0 %s %(x)s {0} $1"),
]
DESCRIPTION = "<p>Bring a hat.</p> 100% fun; SELECT * FROM activities; -- <!-- hidden --> &amp; more"
STORED_DESCRIPTION = "Bring a hat. 100% fun; SELECT * FROM activities; -- & more"


def hostile_page() -> str:
    items = []
    for number, (name, _) in enumerate(HOSTILE):
        items.append({"@type": "Event", "name": name, "description": DESCRIPTION,
                      "startDate": "not a date <b>" + name[:10], "location": f"{number} Main St, Eltham VIC"})
    data = json.dumps({"@context": "https://schema.org", "@graph": items}).replace("\\\\u0000", "\\u0000")
    data = data.replace("</", "<\\/")  # as sites must: "</script>" inside JSON would end the script element
    return f'<html><head><script type="application/ld+json">{data}</script></head><body>x</body></html>'


def test_markup_and_sql_text_is_stored_verbatim_through_standardize_and_import(site, run_crawl, pg_url: str,
                                                                               tmp_path: Path) -> None:
    site.page("/", hostile_page())
    page = run_crawl(site.url("/"), make_config(max_depth=0)).pages[0]
    raw = extract_structured(page.html, page.url)
    assert len(raw) == len(HOSTILE)

    store = LocalStore(tmp_path / "store")
    raw_ref = write_jsonl(store, "runs/h1/raw_activities.jsonl", "raw_activities", raw)
    stage = standardize_raw_activities(store, "h1", raw_ref, RunConfig())
    standardized = list(iter_jsonl(store, stage.file("standardized").uri))
    assert sorted(a["name"] for a in standardized) == sorted(stored for _, stored in HOSTILE)
    assert {a["description"] for a in standardized} == {STORED_DESCRIPTION}
    # Every activity's bad date was dropped with a warning that quotes its name.
    assert sum("not a recognisable date" in w for w in stage.warnings) == len(HOSTILE)

    engine = get_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE activities, run_files, scrape_runs CASCADE"))
    records = [final_record({"activity": a}, None) for a in standardized]
    summary = import_activities(engine, records, run_id="h1")
    assert (summary.imported, summary.failed) == (len(HOSTILE), 0), summary

    with engine.begin() as connection:
        rows = connection.execute(sa.select(activities.c.name, activities.c.description)).all()
        assert connection.execute(sa.select(sa.func.count()).select_from(scrape_runs)).scalar_one() == 0
    assert sorted(name for name, _ in rows) == sorted(stored for _, stored in HOSTILE)
    assert {description for _, description in rows} == {STORED_DESCRIPTION}

    # Re-import is idempotent: the hostile text is a key like any other.
    again = import_activities(engine, records, run_id="h2")
    assert (again.imported, again.skipped) == (0, len(HOSTILE))


def test_the_run_summary_renders_page_text_without_links_emphasis_or_code() -> None:
    """What the docs promise for the run-summary artifact (docs/reliability.md): markdown links, emphasis and
    code spans written in page text stay text. Rendered by a CommonMark renderer (markdown-it-py, the one rich
    uses), so the check is what a reader sees, not which characters were escaped."""
    from markdown_it import MarkdownIt

    tricks = {
        "link": "[win a prize](http://evil.example/steal)", "image": "![x](http://evil.example/pixel.gif)",
        "autolink": "<http://evil.example/auto>", "strong": "**BIG SALE**", "emphasis": "*urgent*",
        "underscore": "_click_", "strike": "~~old~~", "code": "`rm -rf /`", "heading": "# Not a heading",
    }
    warnings = [f"'{name} {trick}': dropped startDate 'x': not a recognisable date" for name, trick in tricks.items()]
    row = {"id": "r1", "url": "https://example.org/", "status": "completed", "activities_processed": 1,
           "import_summary": None, "warnings": warnings}

    text = summary_markdown(row, [])
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(text)

    lines = [line for line in rendered.splitlines() if "dropped startDate" in line]
    assert len(lines) == len(tricks), rendered  # each warning one line of its own
    for (name, _), line in zip(tricks.items(), lines):
        assert line.startswith(f"<li>'{name} "), line  # a list item, not a heading or a new block
        for tag in ("<a ", "<img", "<strong>", "<em>", "<s>", "<del>", "<code>"):
            assert tag not in line, (tag, line)
    for trick in ("win a prize", "BIG SALE", "urgent", "click", "old", "rm -rf /", "Not a heading"):
        assert trick in rendered, trick  # neutralised, not dropped


def test_the_run_summary_escapes_what_pages_control() -> None:
    warnings = [
        "'<img src=x onerror=alert(1)> Puppet show': dropped startDate 'x': not a recognisable date",
        "image for a1 skipped: image http://e.example/a|b.jpg refused: content type 'text/html' is not an image",
        "'<script>alert(1)</script>` | x': dropped endDate",
    ]
    row = {"id": "r1", "url": "https://example.org/?q=<script>", "status": "completed", "activities_processed": 1,
           "import_summary": None, "warnings": warnings}
    files = [{"kind": "final_jsonl", "records": 1, "bytes": 10, "uri": "s3://b/runs/r1/`final|x`.jsonl"}]

    text = summary_markdown(row, files)

    assert "<img" not in text and "<script" not in text
    assert "&lt;img src=x onerror=alert(1)&gt; Puppet show" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    def cells(line: str) -> int:  # cells as a table renderer sees them: an escaped "\|" is not a separator
        return len(re.split(r"(?<!\\)\|", line))

    header = next(line for line in text.splitlines() if line.startswith("| kind"))
    table_rows = [line for line in text.splitlines() if line.startswith("| final_jsonl")]
    assert len(table_rows) == 1 and cells(table_rows[0]) == cells(header)  # a "|" in a URI adds no column
    warning_lines = [line for line in text.splitlines() if line.startswith("- ") and "skipped" in line]
    assert "a\\|b.jpg" in warning_lines[0] or "a&#124;b.jpg" in warning_lines[0]
