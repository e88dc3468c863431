"""Country names and codes as pages write them -> ISO 3166-1 alpha-2 ("UK" -> "GB", "Australia" -> "AU").

pycountry holds the ISO tables (names, official names, alpha-2/alpha-3 codes); the few everyday spellings
that are not ISO names are listed here. No fuzzy matching on purpose: "Korea" is two countries, and a wrong
country is worse than none (the address text, which keeps the page's spelling, is never changed).
"""

from __future__ import annotations

from functools import lru_cache

import pycountry

# Everyday names and codes that are not in ISO 3166-1 (the UK's own code is GB; "UK" is reserved, not assigned).
ALIASES = {
    "uk": "GB", "u.k.": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "usa": "US", "u.s.a.": "US", "u.s.": "US", "america": "US",
    "united states of america": "US",
}


@lru_cache(maxsize=1024)
def country_code(value: str | None) -> str | None:
    """The ISO 3166-1 alpha-2 code for a country name or code, or None when it names no single country."""
    text = " ".join((value or "").split()).strip()
    if not text:
        return None
    alias = ALIASES.get(text.lower())
    if alias:
        return alias
    try:
        return str(pycountry.countries.lookup(text).alpha_2)
    except LookupError:
        return None
