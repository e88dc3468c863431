"""Does a page fetched over plain HTTP need a browser to show its content?

Rendering costs ~10-50x a plain fetch, so "auto" mode renders only pages whose HTML is an empty
shell filled in by scripts. Structured data (JSON-LD) already in the HTML means no browser is needed.
"""

from __future__ import annotations

import re

from harvest.crawl.page import Page
from harvest.extract.page import looks_script_rendered, parse_html


def needs_browser(page: Page) -> bool:
    """Default heuristic: no JSON-LD in the HTML and the page looks built by scripts.

    The "built by scripts" test lives with extraction (`harvest.extract.page.looks_script_rendered`),
    which knows what content it needs; the crawler only adds that JSON-LD already served is enough.
    """
    if not _SCRIPT_TAG.search(page.html):
        return False  # no script, nothing a browser would run: no parse needed to say so
    tree = parse_html(page.html)
    if tree is None:
        return False
    if tree.xpath("//script[translate(@type,'LDJSON','ldjson')='application/ld+json']"):
        return False  # the structured data extraction needs is already there
    return looks_script_rendered(tree)  # the same tree: each page checked costs one parse, not two


_SCRIPT_TAG = re.compile(r"<script", re.IGNORECASE)
