"""Which languages a page's dates may be written in: the default list (HARVEST_DATE_LANGUAGES) and the month
names dateparser knows for each. A module of its own so that settings can check the setting without importing the
standardizer (which reads the setting's default from here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_DATE_LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es", "it", "nl", "pt")
WORD_RE = re.compile(r"[^\W\d_]+")  # month names in the languages of Europe's Latin script are single words
MONTH_KEYS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)


@dataclass(frozen=True)
class MonthNames:
    """Month names (and their abbreviations) of some languages, from dateparser's own locale data."""

    every: frozenset[str]
    by_language: dict[str, frozenset[str]]
    english: frozenset[str]


@lru_cache(maxsize=16)
def month_names(languages: tuple[str, ...]) -> MonthNames:
    from dateparser.languages.loader import default_loader as dateparser_locales  # here: settings import this module

    by_language: dict[str, frozenset[str]] = {}
    for language in ("en", *languages):
        try:
            info = dateparser_locales.get_locale(language).info
        except (KeyError, ValueError):
            raise ValueError(f"date language {language!r} is not a language dateparser knows") from None
        names = frozenset(name.casefold() for key in MONTH_KEYS for name in info[key] if WORD_RE.fullmatch(name))
        if not names:  # "tháng 5": not found word by word, so never read; say so now rather than refuse every date
            raise ValueError(f"date language {language!r}: its month names are not single words, so cannot be read")
        by_language[language] = names
    english = by_language["en"] | {"sept"}  # dateutil's own table also has "Sept"
    return MonthNames(frozenset().union(*by_language.values()), by_language, english)


def check_date_languages(languages: Sequence[str]) -> None:
    """ValueError naming the first of `languages` dateparser has no month names for."""
    if set(languages) <= set(DEFAULT_DATE_LANGUAGES):
        return  # known (tests/unit check the defaults): loading dateparser's locales cost every command ~0.06 CPU-s
    month_names(tuple(languages))
