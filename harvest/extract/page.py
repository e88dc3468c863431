"""Page-level views of an HTML document: its visible text (LLM input) and whether it needs a browser.

Both work on a parsed lxml tree so that hostile markup (unclosed tags, deep nesting, megabytes of
script) costs bounded time and never raises.
"""

from __future__ import annotations

import logging
import re

import lxml.etree
import lxml.html

from harvest.extract.text import collapse_whitespace

log = logging.getLogger(__name__)

# Pages larger than this are cut before parsing: nothing a family-activity page says needs more.
MAX_HTML_CHARS = 5_000_000
DEFAULT_TEXT_CHARS = 100_000
# Less visible text than this on a page that ships scripts means the content is drawn client-side.
MIN_SERVER_TEXT_CHARS = 200
MAX_IMAGE_REFS = 50

_INVISIBLE_XPATH = (
    "//script | //style | //noscript | //template | //svg | //iframe | //object | //canvas | //head | //comment()"
)
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
# Ids/attributes single-page-app frameworks mount into; empty at load time when nothing is pre-rendered.
_SPA_ROOT_XPATH = (
    "//*[@id='root' or @id='app' or @id='__next' or @id='__nuxt' or @id='___gatsby' or @id='svelte' "
    "or @id='main-app' or @ng-app or @data-reactroot or @data-server-rendered or self::app-root]"
)
_WS_RE = re.compile(r"\s+")
# Executable scripts only: JSON-LD and other data blocks do not draw anything.
_EXECUTABLE_SCRIPT_XPATH = (
    "//script[not(@type) or normalize-space(@type)='' or contains(@type, 'javascript') or @type='module']"
    "[@src or normalize-space()]"
)
_XML_DECL_RE = re.compile(r"^\s*<\?xml[^>]*\?>")
_JS_REQUIRED_RE = re.compile(r"(enable|requires?|turn on|need)\s+javascript", re.IGNORECASE)


def prepare_html(html: str | bytes) -> str:
    """Decoded, size-capped markup without an XML declaration (which makes lxml refuse a str)."""
    if isinstance(html, bytes):
        html = html.decode("utf-8", errors="replace")
    if len(html) > MAX_HTML_CHARS:
        log.warning("page is %d characters, using only the first %d", len(html), MAX_HTML_CHARS)
        html = html[:MAX_HTML_CHARS]
    return _XML_DECL_RE.sub("", html, count=1)


def parse_html(html: str | bytes) -> lxml.html.HtmlElement | None:
    """Parse a (possibly broken) document into an lxml tree; None when there is nothing to parse."""
    html = prepare_html(html)
    if not html.strip():
        return None
    try:
        return lxml.html.document_fromstring(html)
    except (lxml.etree.ParserError, ValueError) as exc:
        log.info("unparseable HTML (%s)", exc)
        return None


def _visible_text(tree: lxml.html.HtmlElement, max_chars: int, image_refs: bool = False) -> str:
    """Text of the tree in document order; block elements start new lines, inline ones do not.

    With `image_refs`, content images appear as "[image: src]" so a reader (the LLM) can tell
    which picture belongs to which activity.
    """
    chunks: list[str] = []
    size = 0
    images = 0
    for event, element in lxml.etree.iterwalk(tree, events=("start", "end")):
        if not isinstance(element.tag, str):
            continue
        if element.tag in _BLOCK_TAGS:
            chunks.append("\n")
        if image_refs and event == "start" and element.tag == "img" and images < MAX_IMAGE_REFS:
            src = (element.get("src") or "").strip()
            if src and len(src) <= 500 and not src.lower().startswith(("data:", "javascript:")):
                chunks.append(f" [image: {_WS_RE.sub('%20', src)}] ")
                images += 1
        piece = element.text if event == "start" else element.tail
        if piece:
            chunks.append(_WS_RE.sub(" ", piece))
            size += len(piece)
        if size > max_chars * 2:  # enough raw text collected; the rest would be cut anyway
            break
    lines = (collapse_whitespace(line) for line in "".join(chunks).split("\n"))
    return "\n".join(line for line in lines if line)[:max_chars]


def _strip_invisible(tree: lxml.html.HtmlElement) -> None:
    for element in tree.xpath(_INVISIBLE_XPATH):
        parent = element.getparent()
        if parent is None:
            continue
        # Keep the tail text (it belongs to the parent), drop the element itself.
        if element.tail:
            previous = element.getprevious()
            if previous is not None:
                previous.tail = (previous.tail or "") + element.tail
            else:
                parent.text = (parent.text or "") + element.tail
        parent.remove(element)


def page_text(html: str | bytes, max_chars: int = DEFAULT_TEXT_CHARS, *, image_refs: bool = False) -> str:
    """The page's visible text (title first), scripts/styles removed, at most `max_chars` characters.

    This is what the LLM extractor reads (the crawl stage hands it to LLMExtractor.extract), so it is bounded
    here and again by the extractor. With `image_refs`, images are named in the text too (no caller asks for
    that yet: it would change every prompt, and so the answers cached by prompt).
    """
    tree = parse_html(html)
    if tree is None:
        return ""
    title = tree.findtext(".//title") or ""
    _strip_invisible(tree)
    body = _visible_text(tree, max_chars, image_refs)
    title = collapse_whitespace(title)
    text = f"{title}\n{body}" if title and not body.startswith(title) else body
    return text[:max_chars]


def looks_script_rendered(html: str | bytes | lxml.html.HtmlElement) -> bool:
    """True when the page ships scripts but its content is not in the HTML (an SPA shell).

    The crawler then renders it in a browser. Signals: scripts present AND (almost no visible text,
    or an empty SPA mount point, or a "please enable JavaScript" notice as the main text).
    A parsed tree may be passed instead of the HTML (it is modified: invisible parts are dropped).
    """
    tree = html if isinstance(html, lxml.html.HtmlElement) else parse_html(html)
    if tree is None:
        return False
    if not tree.xpath(_EXECUTABLE_SCRIPT_XPATH):
        return False
    noscript = " ".join(collapse_whitespace(n.text_content()) for n in tree.xpath("//noscript"))
    empty_root = any(
        len(root) == 0 or not collapse_whitespace(root.text_content())
        for root in tree.xpath(_SPA_ROOT_XPATH)
        if isinstance(root.tag, str)
    )
    _strip_invisible(tree)
    visible = _visible_text(tree, MIN_SERVER_TEXT_CHARS * 10)
    if empty_root:
        return True
    if len(visible) < MIN_SERVER_TEXT_CHARS:
        return True
    return bool(_JS_REQUIRED_RE.search(noscript)) and len(visible) < MIN_SERVER_TEXT_CHARS * 3
