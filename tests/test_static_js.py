"""The web pages' scripts declare each function once. A second ``function day(...)`` in one scope silently
replaces the first everywhere (declarations are hoisted): the membership date field's formatter once
broke the badge office's badge issue this way (the console sent a date's text where an ISO time was
due, and the API answered 422). Scripts are plain files with no build step, so this is read from them."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "identity" / "web" / "static"
_DECLARED = re.compile(r"^\s*function\s+([A-Za-z_$][\w$]*)\s*\(", re.MULTILINE)


@pytest.mark.parametrize("script", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_each_function_is_declared_once(script: Path) -> None:
    names = Counter(_DECLARED.findall(script.read_text(encoding="utf-8")))
    assert [n for n, k in names.items() if k > 1] == []


def test_the_pattern_reads_the_consoles_declarations() -> None:
    """The check above reads something: the console (the largest script) declares dozens of functions."""
    assert len(_DECLARED.findall((STATIC / "console.js").read_text(encoding="utf-8"))) > 20
