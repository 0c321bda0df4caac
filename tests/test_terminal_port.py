"""Which port a terminal lies in, read from its code, and what a port-limited ban does where the code
names none (review 123, finding 1): the release engine's rule (release_service.domain.screening) and
identity's (identity.domain.bans) are one rule written twice, since neither part may import the other;
these tests hold them in step and would fail if either went back to "whatever precedes the first
hyphen", under which a ban from BEANR screened ``clear`` at a terminal registered as "K1700"."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from identity.domain import bans as ident
from release_service.domain import screening as rel

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

READABLE = [("BEANR-K1700", "BEANR"), ("beanr-k1700", "BEANR"), (" BEANR-K1700 ", "BEANR"), ("BEZEE-X", "BEZEE"),
            ("NLRTM-ECT-DELTA", "NLRTM"), ("BEANR--K", "BEANR"), ("DEHAM-1", "DEHAM"), ("BEA2N-Q", "BEA2N")]
# Before the mend each of these gave a "port" (the text before the first hyphen) that no ban lists.
UNREADABLE = ["K1700", "PSA-K1700", "MPET", "BEANRK1700", "BE-ANR-K1700", "BEANR-", "BEANR", "BEAN1-K1700",
              "BEAN0-K1700", "B3ANR-K1700", "ANT-K913", "", "-", "XX-NONE", "BEANR_K1700", "ＢEANR-K1700"]


@pytest.mark.parametrize(("code", "port"), READABLE + [(c, None) for c in UNREADABLE])
def test_both_parts_read_the_same_port_from_a_terminal_code(code: str, port: str | None) -> None:
    assert rel.port_of(code) == port
    assert ident.port_of_terminal(code) == port


def test_the_two_rules_agree_on_any_code() -> None:
    # The mirrored constant itself, and its behaviour on codes made of the characters that matter.
    assert rel._TERMINAL_PORT.pattern == ident._TERMINAL_PORT.pattern
    assert rel._TERMINAL_PORT.flags == ident._TERMINAL_PORT.flags
    pick = random.Random(123)
    alphabet = "BEANRZK0123456789--- _abeß."
    for _ in range(5000):
        code = "".join(pick.choice(alphabet) for _ in range(pick.randint(0, 12)))
        assert rel.port_of(code) == ident.port_of_terminal(code), code


def _windows(scope: str) -> list[rel.BanWindow]:
    return [rel.BanWindow(scope, NOW - DAY, NOW + DAY)]


def _release(scope: str, terminal: str) -> str:
    return rel.screen(_windows(scope), NOW - timedelta(hours=1), terminal=terminal, now=NOW, max_list_age=DAY,
                      required=True).result


def _identity(scope: tuple[str, ...] | None, terminal: str) -> ident.ScreeningStatus:
    ban = ident.StoredBan(scope, NOW - DAY, NOW + DAY, "R-1")
    return ident.screen([ban], port=ident.port_of_terminal(terminal), now=NOW, list_issued_at=NOW - timedelta(hours=1),
                        max_list_age=DAY).status


@pytest.mark.parametrize("terminal", UNREADABLE)
def test_a_port_limited_ban_applies_where_the_terminal_code_names_no_port(terminal: str) -> None:
    # The reviewer's demonstration: a BEANR ban said "clear" at "K1700", "PSA-K1700", "BEANRK1700", ...
    assert _release("BEANR", terminal) == "banned"
    assert _release("BEZEE,NLRTM", terminal) == "banned"  # fails closed: whatever ports the ban lists
    assert _identity(("BEANR",), terminal) is ident.ScreeningStatus.BANNED
    assert _identity(("BEZEE", "NLRTM"), terminal) is ident.ScreeningStatus.BANNED


@pytest.mark.parametrize(("code", "port"), READABLE)
def test_a_readable_code_is_screened_for_its_own_port_only(code: str, port: str) -> None:
    other = "NLRTM" if port != "NLRTM" else "BEANR"
    assert _release(port, code) == "banned" and _release("all", code) == "banned"
    assert _release(other, code) == "clear"
    assert _identity((port,), code) is ident.ScreeningStatus.BANNED
    assert _identity(None, code) is ident.ScreeningStatus.BANNED
    assert _identity((other,), code) is ident.ScreeningStatus.CLEAR


@pytest.mark.parametrize("code", ["BEANR-K1700", "BEZEE-1", "NLRTM-ECT-DELTA", "BEA2N-Q", "BEANR-" + "K" * 26])
def test_a_new_terminal_code_of_the_shape_is_taken_and_names_its_port(code: str) -> None:
    assert ident.is_terminal_code(code)
    assert ident.port_of_terminal(code) == rel.port_of(code) == code[:5]


@pytest.mark.parametrize("code", [*UNREADABLE, "beanr-k1700", "BEANR-K1700 ", "BEANR--K", "BEANR-K1700\n",
                                  "BEANR-" + "K" * 27, "BEANR-K.1"])
def test_a_new_terminal_code_of_another_shape_is_refused(code: str) -> None:
    assert not ident.is_terminal_code(code)
    assert "BEANR-K1700" in ident.TERMINAL_CODE_FORM
