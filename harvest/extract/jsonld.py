"""JSON-LD blocks as pages publish them: parsed strictly when they can be, repaired when they cannot.

Real sites write blocks a strict `json.loads` refuses (issue 26): trailing and doubled commas, a `;` for a `,`,
`<!-- -->` and `/* */` comments, CDATA wrappers, raw newlines and control characters inside strings, invalid
escapes such as `\\'`, postal codes written as numbers with a leading zero. Dropping such a block loses every item
in it, so a block is repaired before it is given up:

1. strict JSON;
2. the same text with control characters allowed inside strings (`strict=False`), which changes no value;
3. the HTML-specific fixes below, done by one pass that knows where strings are (so a `//` in a URL or a `#`
   in a colour stays): comments and CDATA markers outside strings dropped, invalid escapes reduced to the
   character, doubled and trailing commas dropped, numbers with a leading zero kept as the strings they are (`02923`);
4. `json_repair` (a well-kept repairer) for the rest: missing or stray commas, a `;` for a `,`, unclosed brackets.

A result is accepted only if it is an object or a list holding an object: a repairer can turn any text into
*something*, and a bare string or number is not data. What was done is returned with the value, so the run's
quality report can count repairs and name the pages whose blocks could not be read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import json_repair

Status = Literal["ok", "repaired", "unrepairable"]
MAX_REPAIR_CHARS = 200_000  # json_repair is pure Python: a broken block larger than this is given up, not repaired

_VALID_ESCAPES = frozenset('"\\/bfnrtu')
_LEADING_ZERO_RE = re.compile(r"0\d+(?![.\deE])")
_NUMBER_START = frozenset("0123456789")


@dataclass
class BlockResult:
    """What one `<script type="application/ld+json">` gave and how."""

    status: Status
    data: Any = None
    repairs: list[str] = field(default_factory=list)
    error: str | None = None


def parse_jsonld(text: str) -> BlockResult:
    """The block's data, strict if possible, else repaired (with what was repaired), else `unrepairable`."""
    source = text.strip()
    if not source:
        return BlockResult("unrepairable", error="empty block")
    try:
        return BlockResult("ok", json.loads(source))
    except RecursionError:  # nesting no page needs: not worth repairing
        return BlockResult("unrepairable", error="nested too deeply")
    except ValueError as exc:
        first_error = f"{exc}"
    try:
        return BlockResult("repaired", json.loads(source, strict=False), ["control characters in strings"])
    except ValueError:
        pass
    if len(source) > MAX_REPAIR_CHARS:
        return BlockResult("unrepairable", error=f"{first_error}; {len(source)} characters is too large to repair")
    cleaned, repairs = _clean(source)
    if repairs:
        try:
            data = json.loads(cleaned, strict=False)
        except (ValueError, RecursionError):
            pass
        else:
            if _is_data(data):
                return BlockResult("repaired", data, repairs)
    try:
        data = json_repair.loads(cleaned)
    except Exception as exc:  # noqa: BLE001 - the repairer's own failure is just "not repairable"
        return BlockResult("unrepairable", error=f"{first_error}; repair failed: {type(exc).__name__}")
    if not _is_data(data):
        return BlockResult("unrepairable", error=first_error)
    return BlockResult("repaired", data, [*repairs, "structure (json-repair)"])


def _is_data(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value)
    return isinstance(value, list) and any(isinstance(item, dict) and item for item in value)


def _clean(text: str) -> tuple[str, list[str]]:
    """One left-to-right pass that knows whether it is inside a string; returns the text and what it changed."""
    out: list[str] = []
    repairs: set[str] = set()
    i, n = 0, len(text)
    in_string = False
    last_significant = ""  # the last character written outside a string, to spot ",," and number positions
    while i < n:
        char = text[i]
        if in_string:
            if char == "\\" and i + 1 < n:
                following = text[i + 1]
                if following in _VALID_ESCAPES:
                    out.append(text[i : i + 2])
                else:  # \' \x \<control>: keep the character, drop the backslash
                    out.append(following if following.isprintable() else " ")
                    repairs.add("invalid escapes")
                i += 2
                continue
            if char == '"':
                in_string = False
            out.append(char)
            i += 1
            continue
        if char == '"':
            in_string = True
            out.append(char)
            last_significant = char
            i += 1
            continue
        for opener, closer, label in (("<!--", None, "HTML comment markers"), ("-->", None, "HTML comment markers"),
                                      ("<![CDATA[", None, "CDATA markers"), ("]]>", None, "CDATA markers"),
                                      ("/*", "*/", "comments"), ("//", "\n", "comments")):
            if text.startswith(opener, i):
                repairs.add(label)
                if closer is None:
                    i += len(opener)
                else:
                    end = text.find(closer, i + len(opener))
                    i = n if end == -1 else end + (len(closer) if closer != "\n" else 0)
                break
        else:
            if char == "," and last_significant == ",":
                repairs.add("doubled commas")
                i += 1
                continue
            if char in "}]" and last_significant == ",":  # {"a": 1,} : drop the comma written last
                cut = len(out) - 1
                while out[cut].isspace():
                    cut -= 1
                del out[cut]
                repairs.add("trailing commas")
            if char in _NUMBER_START and last_significant in (":", ",", "["):
                match = _LEADING_ZERO_RE.match(text, i)
                if match:  # 02923 is not a JSON number: a postcode, kept as written
                    out.append(f'"{match.group(0)}"')
                    repairs.add("numbers with a leading zero")
                    last_significant = "0"
                    i = match.end()
                    continue
            out.append(char)
            if not char.isspace():
                last_significant = char
            i += 1
            continue
    return "".join(out), sorted(repairs)
