"""String hygiene shared by extraction and standardization: markup out, text otherwise verbatim.

Values pulled from pages are untrusted. They may carry HTML tags or entities, odd whitespace or be
absurdly long; they must NOT be "sanitised" beyond that (SQL-looking text is just text: it is stored
through parameterised writes, never interpreted).
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import urljoin, urlsplit

from w3lib.url import safe_url_string

# A tag starts with a letter, "/" or "!" right after "<" so that "a < b" or "<3" stay text.
_TAG_RE = re.compile(r"<(?:/?[A-Za-z][^<>]*|![^<>]*)>")
_HIDDEN_OPEN_RE = re.compile(r"<(script|style|template|noscript)\b[^<>]*>", re.IGNORECASE)
_BLOCK_TAG_RE = re.compile(
    r"</?(?:p|br|div|li|ul|ol|h[1-6]|tr|td|th|table|section|article|header|footer|blockquote|hr)\b[^<>]*>",
    re.IGNORECASE,
)
_WS_RE = re.compile(r"\s+")
# C0/C1 control characters other than white space: invisible, and PostgreSQL text cannot hold NUL at all
# (one "\u0000" in a page's JSON-LD would otherwise fail the whole import batch).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_QUOTES = "'\u2018\u2019\u201b`\u00b4\""
# Inputs beyond this are cut before any regex runs, so hostile values cost bounded time.
MAX_INPUT_CHARS = 1_000_000


def _drop_hidden_blocks(text: str) -> str:
    """Remove <script>/<style>/... elements with their content, in one left-to-right pass (linear time)."""
    lowered = text.lower()
    parts: list[str] = []
    pos = 0
    while (match := _HIDDEN_OPEN_RE.search(text, pos)) is not None:
        parts.append(text[pos : match.start()])
        close = lowered.find(f"</{match.group(1).lower()}", match.end())
        if close == -1:  # unclosed: everything after the opening tag is script, not text
            pos = len(text)
            break
        end = text.find(">", close)
        pos = len(text) if end == -1 else end + 1
        parts.append(" ")
    parts.append(text[pos:])
    return "".join(parts)


def strip_markup(text: str) -> str:
    """Remove HTML tags and decode entities; block tags become spaces so words do not run together."""
    if len(text) > MAX_INPUT_CHARS:
        text = text[:MAX_INPUT_CHARS]
    if "<" in text:
        text = _drop_hidden_blocks(text)
        text = _BLOCK_TAG_RE.sub(" ", text)
        text = _TAG_RE.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def collapse_whitespace(text: str) -> str:
    """Collapse runs of any white space (incl. non-breaking) to one space, drop control characters, trim."""
    if text.isprintable() and "  " not in text:
        # The common case, checked in C: every white space but " " and every control character is
        # non-printable, so there is nothing to collapse or drop (standardizing calls this ~16x per activity).
        return text.strip()
    return _WS_RE.sub(" ", _CONTROL_RE.sub("", text.replace("\u00a0", " "))).strip()


def clean_text(value: str | None, *, max_chars: int | None = None) -> str | None:
    """Markup stripped, whitespace collapsed, bounded; None when nothing is left."""
    if value is None:
        return None
    text = str(value)
    if max_chars is not None and len(text) > max_chars * 8:
        text = text[: max_chars * 8]  # markup rarely exceeds 8x the text it wraps
    text = collapse_whitespace(strip_markup(text))
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text or None


def normalize_key(text: str | None) -> str:
    """Casefolded, punctuation-insensitive form of a name or address, used for ids and dedupe keys.

    Apostrophes vanish ("Aston's" == "Astons"); other punctuation separates words
    ("Reserve, Coburg" == "Reserve Coburg", "Splash-Park" == "Splash Park").
    """
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", strip_markup(text)).casefold()
    return collapse_whitespace(text.translate(_KEY_CHARS))


class _KeyChars(dict[int, str | None]):
    """normalize_key's `str.translate` table, filled per code point the first time it is seen: quotes
    vanish, punctuation and white space become a space, everything else stays (a per-character Python loop
    calling unicodedata.category was most of the time spent standardizing)."""

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        if char in _QUOTES:
            value = None
        elif unicodedata.category(char)[0] in "PZ" or char.isspace():
            value = " "
        else:
            value = char
        self[code] = value
        return value


_KEY_CHARS = _KeyChars()


def format_address(
    street: str | None = None,
    city: str | None = None,
    state: str | None = None,
    postal_code: str | None = None,
    country: str | None = None,
) -> str | None:
    """Compose "street, city, state postal, country" from whichever parts exist; None when none do."""
    region = " ".join(part for part in (state, postal_code) if part)
    parts = [part for part in (street, city, region, country) if part]
    return ", ".join(parts) or None


def absolute_http_url(value: str | None, base_url: str | None) -> str | None:
    """`value` resolved against `base_url` and made safe (spaces escaped) if it is http(s); else None.

    Pages use relative image paths, and data:/javascript: URLs are never downloadable images.
    """
    text = clean_text(value, max_chars=4_000)
    if not text:
        return None
    try:
        resolved = safe_url_string(urljoin(base_url, text) if base_url else text)
        parts = urlsplit(resolved)
        parts.port  # noqa: B018 - raises ValueError for an out-of-range port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return resolved
