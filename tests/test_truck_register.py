"""Review 170, finding 1: the truck register (``trucks``: one row per plate, the transport operator it is
registered to) is honoured at nomination. A haulier naming a truck the register gives to another operator
is refused (``422 truck_of_another_operator``, the other operator unnamed); a plate the register does not
hold is nominated as before. Port security keeps the register with ``quaygate truck register|unregister``
(identity.trucks), each change on the audit trail.

Before the mend the table was read and written by nothing: a plate registered to haul2 was nominated by
haul (200, plate {'text': '1ABC999', 'country': 'BE'}), and no command could register a truck.
The nomination over HTTP on SQLite and PostgreSQL; the commands on SQLite."""

# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity import trucks as trucks_register
from quaygate.cli import main
from quaygate.db import make_engine
from quaygate.schema import audit_log, organisations, release_events, trucks
from release_service.domain.reads import plate_skeleton

from .factories import add_driver
from .test_release_api import Api, api, assert_problem  # noqa: F401 - ``api`` is a fixture requested by name

REFUSED = "truck_of_another_operator"


def _register(engine: sa.Engine, text: str, operator: uuid.UUID | None) -> None:
    """A row of the register as the port would load it (the table's own shape, no command)."""
    with engine.begin() as conn:
        conn.execute(trucks.insert().values(id=uuid.uuid4(), plate_text=text, plate_country="BE",
                                            plate_skeleton=plate_skeleton(text),
                                            operator_organisation_id=operator, created_at=datetime.now(UTC)))


def _nominate(api: Api, rid: str, who: str, driver: uuid.UUID, plate: str, country: str = "BE") -> Any:
    return api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_(who), json={
        "driver_person_id": str(driver), "plate": {"text": plate, "country": country}})


def _events(engine: sa.Engine, rid: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(release_events.c.type)
                                 .where(release_events.c.release_id == uuid.UUID(rid))
                                 .order_by(release_events.c.seq)).scalars())


def test_a_truck_registered_to_another_operator_is_refused(api: Api) -> None:
    p = api.p
    _register(api.engine, "1ABC999", p.haul2.organisation_id)
    rid = str(api.issue(1, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
    before = _events(api.engine, rid)
    r = _nominate(api, rid, "haul", p.driver, "1-ABC-999")  # its separators dropped: the registered plate
    assert_problem(r, 422, REFUSED)
    assert str(p.haul2.organisation_id) not in r.text  # the owner is not named
    assert _events(api.engine, rid) == before
    # a plate the register does not hold is nominated as before, so is one registered to the haulier itself
    assert _nominate(api, rid, "haul", p.driver, "1-ABC-998").status_code == 200
    _register(api.engine, "1ABC997", p.haul.organisation_id)
    r = _nominate(api, rid, "haul", p.driver, "1-ABC-997")
    assert r.status_code == 200, r.text
    assert r.json()["release"]["nomination"]["plate"] == {"text": "1ABC997", "country": "BE"}
    # and a re-nomination onto the other operator's truck is refused too, the nomination left as it was
    assert_problem(_nominate(api, rid, "haul", p.driver, "1ABC999"), 422, REFUSED)
    assert api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("haul")).json()["nomination"]["plate"] == {
        "text": "1ABC997", "country": "BE"}


def test_the_operator_the_truck_is_registered_to_nominates_it(api: Api) -> None:
    p = api.p
    _register(api.engine, "1ABC999", p.haul2.organisation_id)
    driver2 = add_driver(api.engine, p.haul2.organisation_id, number="AP-222222")  # type: ignore[arg-type]
    rid = str(api.issue(2, release_to_organisation_id=str(p.haul2.organisation_id))["release"]["id"])
    r = _nominate(api, rid, "haul2", driver2, "1-ABC-999")
    assert r.status_code == 200, r.text


def test_a_plate_registered_to_no_operator_refuses_no_one(api: Api) -> None:
    p = api.p
    _register(api.engine, "1ABC999", None)
    rid = str(api.issue(3, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
    assert _nominate(api, rid, "haul", p.driver, "1ABC999").status_code == 200


def test_the_register_port_security_keeps_is_the_one_a_nomination_reads(api: Api) -> None:
    """identity.trucks on both backends: registered, the plate is refused to another operator; taken
    out, it is nominated as any plate the register does not hold."""
    p = api.p
    plate = trucks_register.plate_of("1 abc 999", "be")
    now = datetime.now(UTC)
    trucks_register.register(api.engine, plate, p.haul2.organisation_id, actor="cli:test", now=now)
    with pytest.raises(trucks_register.TruckRefused) as refused:
        trucks_register.register(api.engine, plate, p.haul.organisation_id, actor="cli:test", now=now)
    assert refused.value.code == "truck_registered_elsewhere"
    rid = str(api.issue(4, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
    assert_problem(_nominate(api, rid, "haul", p.driver, "1ABC999"), 422, REFUSED)
    trucks_register.unregister(api.engine, plate, actor="cli:test", now=now, reason="sold to haul")
    assert _nominate(api, rid, "haul", p.driver, "1ABC999").status_code == 200


def test_a_plate_the_gate_could_take_for_another_operators_truck_is_refused(api: Api) -> None:
    """Review 175, finding 1: the gate compares a read without a country on the text alone, and takes a
    confident read differing only in look-alike characters (reads.LOOKALIKE_SETS) for the nominated
    plate. So the register refuses a plate that is another operator's under any country, or differs from
    one of its plates only in look-alike characters. Before the mend: the same text as Dutch 200
    {'text': '1ABC123', 'country': 'NL'}, the look-alike 1A8C123 200."""
    p = api.p
    now = datetime.now(UTC)
    trucks_register.register(api.engine, trucks_register.plate_of("1ABC123", "BE"), p.haul2.organisation_id,
                             actor="cli:test", now=now)
    rid = str(api.issue(5, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
    assert_problem(_nominate(api, rid, "haul", p.driver, "1ABC123"), 422, REFUSED)  # as before the mend
    r = _nominate(api, rid, "haul", p.driver, "1ABC123", "NL")  # the reviewer's case: another country
    assert_problem(r, 422, REFUSED)
    assert str(p.haul2.organisation_id) not in r.text and "look-alike" in r.json()["detail"]
    assert_problem(_nominate(api, rid, "haul", p.driver, "1A8C123"), 422, REFUSED)  # 8 for B
    assert_problem(_nominate(api, rid, "haul", p.driver, "IAB-C12-3", "DE"), 422, REFUSED)  # I for 1, German
    # a plate the register does not hold, nor any look-alike of: nominated as given
    r = _nominate(api, rid, "haul", p.driver, "1ABC124")
    assert r.status_code == 200, r.text
    assert r.json()["release"]["nomination"]["plate"] == {"text": "1ABC124", "country": "BE"}
    # the haulier's own registered plate passes, under its own country and text
    trucks_register.register(api.engine, trucks_register.plate_of("1XYZ777", "BE"), p.haul.organisation_id,
                             actor="cli:test", now=now)
    assert _nominate(api, rid, "haul", p.driver, "1XYZ777").status_code == 200
    assert _nominate(api, rid, "haul", p.driver, "1XY2777").status_code == 200  # its own look-alike too


def test_an_own_truck_another_operators_truck_could_be_taken_for_is_refused(api: Api) -> None:
    """The haulier's own registration of the exact plate does not clear it while the register gives
    another operator a plate the gate could take for it: that truck could pass on this nomination.
    Port security settles which is whose (unregister, saying why); then it passes."""
    p = api.p
    now = datetime.now(UTC)
    own, other = trucks_register.plate_of("1ABC123", "BE"), trucks_register.plate_of("1ABC123", "NL")
    trucks_register.register(api.engine, own, p.haul.organisation_id, actor="cli:test", now=now)
    trucks_register.register(api.engine, other, p.haul2.organisation_id, actor="cli:test", now=now)
    rid = str(api.issue(6, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
    r = _nominate(api, rid, "haul", p.driver, "1ABC123")
    assert_problem(r, 422, REFUSED)
    assert str(p.haul2.organisation_id) not in r.text
    trucks_register.unregister(api.engine, other, actor="cli:test", now=now, reason="a misread entry")
    assert _nominate(api, rid, "haul", p.driver, "1ABC123").status_code == 200


# ---- the commands --------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, uuid.UUID]]:
    """A migrated SQLite database with two hauliers and a shipping line: (database url, their ids)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    assert main(["migrate"]) == 0
    ids = {"haul": uuid.uuid4(), "haul2": uuid.uuid4(), "line": uuid.uuid4()}
    kinds = {"haul": "transport_operator", "haul2": "transport_operator", "line": "shipping_line"}
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for name, oid in ids.items():
                conn.execute(organisations.insert().values(id=oid, name=name, kind=kinds[name],
                                                           created_at=datetime.now(UTC)))
    finally:
        engine.dispose()
    return url, ids


def _rows(url: str) -> tuple[list[tuple[str, str, uuid.UUID | None]], list[tuple[str, str | None, Any]]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = [(r.plate_text, r.plate_country, r.operator_organisation_id)
                    for r in conn.execute(sa.select(trucks).order_by(trucks.c.plate_text))]
            trail = [(r.kind, r.subject, r.data) for r in conn.execute(
                sa.select(audit_log).where(audit_log.c.kind.like("identity.admin.truck.%")).order_by(audit_log.c.id))]
    finally:
        engine.dispose()
    return rows, trail


def test_register_show_and_unregister(env: tuple[str, dict[str, uuid.UUID]],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, ids = env
    haul, haul2 = str(ids["haul"]), str(ids["haul2"])
    assert main(["truck", "register", "1-abc-999", "--country", "be", "--operator", haul2]) == 0
    assert "truck BE 1ABC999 registered to " + haul2 in capsys.readouterr().out
    assert main(["truck", "register", "1ABC999", "--country", "BE", "--operator", haul2]) == 0  # as it was
    assert "already registered" in capsys.readouterr().out
    assert main(["truck", "show", "1ABC999", "--country", "BE"]) == 0
    assert haul2 in capsys.readouterr().out
    # another operator's truck is not taken over: unregistered first, saying why
    assert main(["truck", "register", "1ABC999", "--country", "BE", "--operator", haul]) == 1
    assert "refused (truck_registered_elsewhere)" in capsys.readouterr().err
    assert main(["truck", "unregister", "1ABC999", "--country", "BE", "--reason", "sold to haul"]) == 0
    assert main(["truck", "register", "1ABC999", "--country", "BE", "--operator", haul, "--reason", "bought"]) == 0
    capsys.readouterr()
    rows, trail = _rows(url)
    assert rows == [("1ABC999", "BE", ids["haul"])]
    assert [(k, d["operator_organisation_id"], d.get("reason")) for k, _, d in trail] == [
        ("identity.admin.truck.registered", haul2, None),
        ("identity.admin.truck.unregistered", haul2, "sold to haul"),
        ("identity.admin.truck.registered", haul, "bought")]
    assert {d["plate"]["text"] for _, _, d in trail} == {"1ABC999"}
    assert main(["truck", "unregister", "1ABC999", "--country", "BE", "--reason", "scrapped"]) == 0
    assert main(["truck", "show", "1ABC999", "--country", "BE"]) == 1
    assert "not registered" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["truck", "register", "1ABC!", "--country", "BE", "--operator", "{haul}"], 2, "invalid_plate"),
    (["truck", "register", "1ABC999", "--country", "BEL", "--operator", "{haul}"], 2, "invalid_plate"),
    (["truck", "register", "1ABC999", "--country", "BE", "--operator", "nope"], 2, "--operator is an id"),
    (["truck", "register", "1ABC999", "--country", "BE", "--operator", str(uuid.uuid4())], 2,
     "unknown_organisation"),
    (["truck", "register", "1ABC999", "--country", "BE", "--operator", "{line}"], 2, "wrong_organisation_kind"),
    (["truck", "unregister", "1ABC999", "--country", "BE", "--reason", "x"], 1, "truck_not_registered"),
    (["truck", "unregister", "1ABC999", "--country", "BE", "--reason", " "], 2, "reason_required"),
])
def test_bad_input_and_refusals_are_plain_messages(env: tuple[str, dict[str, uuid.UUID]],
                                                   capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                                                   message: str) -> None:
    url, ids = env
    argv = [a.format(**{k: str(v) for k, v in ids.items()}) for a in argv]
    assert main(argv) == code
    assert message in capsys.readouterr().err
    assert _rows(url) == ([], [])
