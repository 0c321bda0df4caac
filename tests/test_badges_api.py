"""The badge admin API (/admin/v1/badges): admin tokens only, masked numbers, problems with codes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain.badges import Scheme, add_years, with_check
from identity.domain.screening import ScreeningResult
from quaygate.schema import audit_log, persons
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import add_org

TERMINAL = "BEANR-K1700"
SOME_ID = "00000000-0000-4000-8000-000000000001"
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/v1/badges?number=AP-100230", None),
    ("POST", "/admin/v1/badges", {"person_id": SOME_ID, "scheme": "alfapass", "number": "AP-100230",
                                  "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z"}),
    ("GET", f"/admin/v1/badges/{SOME_ID}", None),
    ("POST", f"/admin/v1/badges/{SOME_ID}/status", {"status": "blocked", "reason": "stolen"}),
    ("POST", f"/admin/v1/badges/{SOME_ID}/renew", {"valid_until": "2027-01-01T00:00:00Z", "reason": "renewal"}),
    ("POST", f"/admin/v1/badges/{SOME_ID}/activations", {"terminal": TERMINAL}),
    ("POST", f"/admin/v1/badges/{SOME_ID}/activations/{TERMINAL}:withdraw", {"reason": "gone"}),
    ("GET", f"/admin/v1/persons/{SOME_ID}/badges", None),
]


class FixedScreening:
    def __init__(self, status: str) -> None:
        self.status = status

    def screen(self, person_id: uuid.UUID, now: datetime, *, conn: object = None) -> ScreeningResult:
        return ScreeningResult(self.status, 5.0, ())


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


def _tokens(env: Lifecycle) -> tuple[dict[str, str], dict[str, str], str]:
    """(badge office, port security without the badge office's view, the admin client id)."""
    client_id, secret, _ = env.machine("admin")
    office = {"Authorization": f"Bearer {env.machine_token(client_id, secret)}"}
    plain = {"Authorization": f"Bearer {env.machine_token(client_id, secret, scope='admin')}"}
    return office, plain, client_id


def _person(env: Lifecycle) -> str:
    pid = uuid.uuid4()
    with env.engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="An", family_name="Claes",
                                             created_at=datetime.now(UTC)))
    return str(pid)


def _issue_body(person: str, number: str = "AP-100230", **kw: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"person_id": person, "scheme": "alfapass", "number": number, "card_uid": "04A1B2C3D4E5F6",
            "valid_from": (now - timedelta(days=1)).isoformat(), "valid_until": (now + timedelta(days=700)).isoformat(),
            **kw}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_refuses_missing_invalid_and_non_admin_tokens(
    env: Lifecycle, method: str, path: str, body: dict[str, Any] | None
) -> None:
    _problem(env.http.request(method, path, json=body), 401, "invalid_request")
    _problem(env.http.request(method, path, json=body, headers={"Authorization": "Bearer a.b.c"}), 401,
             "invalid_token")
    line, secret, _ = env.machine("shipping_line")
    r = env.http.request(method, path, json=body,
                         headers={"Authorization": f"Bearer {env.machine_token(line, secret)}"})
    _problem(r, 403, "insufficient_scope")
    admin, admin_secret, _ = env.machine("admin")
    narrow = {"Authorization": f"Bearer {env.machine_token(admin, admin_secret, scope='releases:read')}"}
    _problem(env.http.request(method, path, json=body, headers=narrow), 403, "insufficient_scope")
    # badges:office alone is not the admin scope either.
    office_only = {"Authorization": f"Bearer {env.machine_token(admin, admin_secret, scope='badges:office')}"}
    _problem(env.http.request(method, path, json=body, headers=office_only), 403, "insufficient_scope")


def test_find_by_number_masks_the_number_except_for_the_badge_office(env: Lifecycle) -> None:
    office, plain, _ = _tokens(env)
    person = _person(env)
    r = env.http.post("/admin/v1/badges", json=_issue_body(person), headers=office)
    assert r.status_code == 201, r.text
    assert r.json()["number"] == "AP-100230" and r.json()["screening"] == "clear"
    full = env.http.get("/admin/v1/badges", params={"number": "ap 100230"}, headers=office).json()["items"]
    assert [(b["number"], b["card_uid"], b["masked"]) for b in full] == [("AP-100230", "04A1B2C3D4E5F6", False)]
    masked = env.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=plain).json()["items"]
    assert [(b["number"], b["card_uid"], b["masked"]) for b in masked] == [("AP-****30", "**********E5F6", True)]
    for path in (f"/admin/v1/badges/{full[0]['id']}", f"/admin/v1/persons/{person}/badges"):
        assert "AP-100230" not in env.http.get(path, headers=plain).text
        assert "AP-100230" in env.http.get(path, headers=office).text
    assert env.http.get("/admin/v1/badges", params={"number": "AP-100248"}, headers=office).json() == {"items": []}
    _problem(env.http.get("/admin/v1/badges", headers=office), 422, "filter_required")


def test_status_route_with_status_and_reason(env: Lifecycle) -> None:
    office, plain, admin = _tokens(env)
    badge = env.http.post("/admin/v1/badges", json=_issue_body(_person(env)), headers=office).json()
    path = f"/admin/v1/badges/{badge['id']}/status"
    r = env.http.post(path, json={"status": "inactive", "reason": "left at home"}, headers=plain)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["status_reason"], r.json()["number"]) == ("inactive", "left at home",
                                                                                 "AP-****30")
    assert env.http.post(path, json={"status": "blocked", "reason": "stolen"}, headers=office).json()["status"] == (
        "blocked")
    _problem(env.http.post(path, json={"status": "active", "reason": "found it"}, headers=office), 409, "badge_final")
    _problem(env.http.post(path, json={"status": "lost", "reason": "x"}, headers=office), 422, "invalid_status")
    _problem(env.http.post(path, json={"status": "active", "reason": " "}, headers=office), 422, "reason_required")
    _problem(env.http.post(f"/admin/v1/badges/{uuid.uuid4()}/status", json={"status": "active", "reason": "x"},
                           headers=office), 404, "not_found")
    shown = env.http.get(f"/admin/v1/badges/{badge['id']}", headers=office).json()
    assert [(h["from"], h["to"], h["by"], h["reason"]) for h in shown["history"]] == [
        (None, "active", admin, "issued"), ("active", "inactive", admin, "left at home"),
        ("inactive", "blocked", admin, "stolen")]
    with env.engine.connect() as conn:
        entries = conn.execute(sa.select(audit_log.c.kind, audit_log.c.actor)
                               .where(audit_log.c.subject == badge["id"]).order_by(audit_log.c.id)).all()
    assert [e.kind for e in entries] == ["identity.badge.issued", "identity.badge.status_changed",
                                         "identity.badge.status_changed"]
    assert all(e.actor == {"client_id": admin} for e in entries)


def test_issue_problems(env: Lifecycle) -> None:
    office, _, _ = _tokens(env)
    person = _person(env)
    _problem(env.http.post("/admin/v1/badges", json=_issue_body(person, "AP-100231"), headers=office), 422,
             "invalid_badge_number")
    _problem(env.http.post("/admin/v1/badges", json=_issue_body(person, scheme="oyster"), headers=office), 422,
             "invalid_scheme")
    now = datetime.now(UTC)
    _problem(env.http.post("/admin/v1/badges", json=_issue_body(
        person, valid_from=now.isoformat(), valid_until=(add_years(now, 5) + timedelta(days=1)).isoformat()),
        headers=office), 422, "validity_too_long")
    _problem(env.http.post("/admin/v1/badges", json=_issue_body(str(uuid.uuid4())), headers=office), 422,
             "unknown_person")
    assert env.http.post("/admin/v1/badges", json=_issue_body(person), headers=office).status_code == 201
    _problem(env.http.post("/admin/v1/badges", json=_issue_body(person, card_uid=None), headers=office), 409,
             "badge_number_taken")
    portpass = _issue_body(person, with_check(Scheme.PORTPASS, 7), scheme="portpass", card_uid=None)
    env.app.state.ban_screening = FixedScreening("banned")
    _problem(env.http.post("/admin/v1/badges", json=portpass, headers=office), 409, "person_banned")
    env.app.state.ban_screening = FixedScreening("unavailable")
    _problem(env.http.post("/admin/v1/badges", json=portpass, headers=office), 503, "screening_unavailable")
    env.app.state.ban_screening = FixedScreening("clear")
    assert env.http.post("/admin/v1/badges", json=portpass, headers=office).status_code == 201


def test_renew_activate_withdraw_and_list_by_person(env: Lifecycle) -> None:
    office, plain, _ = _tokens(env)
    add_org(env.engine, "terminal", TERMINAL)
    person = _person(env)
    badge = env.http.post("/admin/v1/badges", json=_issue_body(person), headers=office).json()
    base = f"/admin/v1/badges/{badge['id']}"
    r = env.http.post(f"{base}/activations", json={"terminal": TERMINAL}, headers=plain)
    assert r.status_code == 201, r.text
    _problem(env.http.post(f"{base}/activations", json={"terminal": TERMINAL}, headers=plain), 409,
             "already_activated")
    _problem(env.http.post(f"{base}/activations", json={"terminal": "XX-NONE"}, headers=plain), 422,
             "unknown_terminal")
    assert [a["terminal"] for a in env.http.get(base, headers=plain).json()["activations"]] == [TERMINAL]
    w = env.http.post(f"{base}/activations/{TERMINAL}:withdraw", json={"reason": "left the company"}, headers=plain)
    assert w.status_code == 200 and w.json()["active"] is False
    _problem(env.http.post(f"{base}/activations/{TERMINAL}:withdraw", json={"reason": "again"}, headers=plain), 409,
             "not_activated")
    assert env.http.get(base, headers=plain).json()["activations"] == []
    until = add_years(datetime.now(UTC), 4)
    renewed = env.http.post(f"{base}/renew", json={"valid_until": until.isoformat(), "reason": "renewal"},
                            headers=office)
    assert renewed.status_code == 200, renewed.text
    assert datetime.fromisoformat(renewed.json()["valid_until"]) == until
    _problem(env.http.post(f"{base}/renew", json={"valid_until": add_years(until, 2).isoformat(), "reason": "r"},
                           headers=office), 422, "validity_too_long")
    env.http.post("/admin/v1/badges", json=_issue_body(person, "AP-100248", card_uid=None), headers=office)
    listed = env.http.get(f"/admin/v1/persons/{person}/badges", headers=plain).json()["items"]
    assert sorted(b["number"] for b in listed) == ["AP-****30", "AP-****48"]
    assert env.http.get(f"/admin/v1/persons/{uuid.uuid4()}/badges", headers=plain).json() == {"items": []}
