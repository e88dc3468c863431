"""Does a page fetched over plain HTTP need a browser to show its content?

Rendering costs ~10-50x a plain fetch, so "auto" mode renders only pages whose HTML is an empty
shell filled in by scripts. Structured data (JSON-LD) already in the HTML means no browser is needed.
"""

from __future__ import annotations

from lxml.html import HtmlElement

from harvest.crawl.links import parse_html
from harvest.crawl.page import Page

# Below this much visible body text a page with scripts is treated as a script-built shell.
MIN_TEXT_CHARS = 200
SPA_ROOT_IDS = ("root", "app", "__next", "__nuxt", "svelte", "ember-app", "q-app")
NON_EXECUTABLE_SCRIPT_TYPES = ("application/ld+json", "application/json", "text/template", "text/x-template")


def visible_text_length(html: str) -> int:
    """Characters of human-visible body text (scripts, styles, templates and noscript removed)."""
    tree = parse_html(html)
    return 0 if tree is None else _visible_text_length(tree)


def _visible_text_length(tree: HtmlElement) -> int:
    body = tree.find("body")
    if body is None:
        return 0
    for element in body.xpath(".//script | .//style | .//noscript | .//template"):
        element.drop_tree()
    return len(" ".join(body.text_content().split()))


def needs_browser(page: Page) -> bool:
    """Default heuristic: scripts present and (very little visible text or an empty SPA root element)."""
    tree = parse_html(page.html)
    if tree is None:
        return False
    scripts = tree.xpath("//script")
    if tree.xpath("//script[translate(@type,'LDJSON','ldjson')='application/ld+json']"):
        return False  # the structured data extraction needs is already there
    executable = [
        script for script in scripts if (script.get("type") or "").strip().lower() not in NON_EXECUTABLE_SCRIPT_TYPES
    ]
    if not executable:
        return False
    for root_id in SPA_ROOT_IDS:
        for element in tree.xpath("//*[@id=$id]", id=root_id):
            if len(element) == 0 and not (element.text or "").strip():
                return True
    return _visible_text_length(tree) < MIN_TEXT_CHARS
