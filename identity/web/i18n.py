"""The four languages of the driver's pages: catalogs, choice from the browser, and the switch.

Catalogs are flat JSON files in ``locales/`` (``{"login.title": "..."}``), one per language, with
exactly the same keys (a test holds them to it). The language is, in order: the ``qg_lang`` cookie
the language menu sets, the best match of ``Accept-Language`` (RFC 9110 §12.5.4, quality values
honoured, ``nl-BE`` matching ``nl``), else English.

A text that names whom to turn to has a variant for a person who turns to port security (a person who
holds a privileged role, whose enrolment codes only port security issues: identity.authn.enrolment
``issuing_office``), under the key prefixed with the office: ``port_security.account.none_left`` for
``account.none_left`` (``own_key``). A page of a known person is rendered with his office's texts
(identity.web.routes ``render``); on a page of nobody yet, the script picks the variant the refusal's
``office`` names (common.js ``explain``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGUAGES: tuple[str, ...] = ("nl", "fr", "de", "en")
DEFAULT = "en"
COOKIE = "qg_lang"  # its name on the wire: Settings.cookie_name (``__Host-qg_lang`` on an https issuer)
# Each language named in itself, for the menu.
NATIVE_NAMES = {"nl": "Nederlands", "fr": "Français", "de": "Deutsch", "en": "English"}

LOCALES = Path(__file__).parent / "locales"


@cache
def catalog(lang: str) -> dict[str, str]:
    return parse_catalog((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))


def parse_catalog(text: str) -> dict[str, str]:
    """A locale file's texts; ValueError on a key written twice (json keeps the last one silently: a text
    edited in one place would be shadowed by its copy further down)."""

    def unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"locale keys written twice: {', '.join(twice)}")
        return dict(pairs)

    data: dict[str, str] = json.loads(text, object_pairs_hook=unique)
    return data


def own_key(lang: str, key: str, office: str | None) -> str:
    """``key``'s variant for a person who turns to ``office`` (``<office>.<key>``) when ``lang`` has one,
    else ``key``."""
    own = f"{office}.{key}"
    return own if office and own in catalog(lang) else key


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
