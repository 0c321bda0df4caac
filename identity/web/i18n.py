"""The four languages of the driver's pages: catalogs, choice from the browser, and the switch.

Catalogs are flat JSON files in ``locales/`` (``{"login.title": "..."}``), one per language, with
exactly the same keys (a test holds them to it). The language is, in order: the ``qg_lang`` cookie
the language menu sets, the best match of ``Accept-Language`` (RFC 9110 §12.5.4, quality values
honoured, ``nl-BE`` matching ``nl``), else English.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGUAGES: tuple[str, ...] = ("nl", "fr", "de", "en")
DEFAULT = "en"
COOKIE = "qg_lang"
# Each language named in itself, for the menu.
NATIVE_NAMES = {"nl": "Nederlands", "fr": "Français", "de": "Deutsch", "en": "English"}

LOCALES = Path(__file__).parent / "locales"


@cache
def catalog(lang: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
    return data


def translate(lang: str, key: str, **params: str) -> str:
    """The text of ``key`` in ``lang``; the English one if missing; the key itself as a last resort."""
    text = catalog(lang).get(key) or catalog(DEFAULT).get(key) or key
    return text.format(**params) if params else text


def _accepted(header: str) -> list[tuple[float, int, str]]:
    """RFC 9110 §12.5.4 language ranges with their q values, best first (ties keep header order)."""
    ranges: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        if tag and 0 < quality <= 1:
            ranges.append((-quality, position, tag.strip().lower()))
    ranges.sort()
    return ranges


def negotiate(*, cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return cookie
    for _, _, tag in _accepted(accept_language or ""):
        primary = tag.split("-", 1)[0]
        if primary in LANGUAGES:
            return primary
        if tag == "*":
            return DEFAULT
    return DEFAULT
