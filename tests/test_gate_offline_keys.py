"""Gate passes across a rotation of the service's signing keys (review 121, medium).

An offline gate-in may be reported long after the truck passed; the key that signed its pass leaves the
published set minutes after a rotation (identity/keys.py). The reconcile must still know the pass for
ours, or it flags an honest gate-in ``pass_invalid``, records nothing, and leaves the right usable by a
second truck. A pass dated after its key's retirement is not ours: that key signed nothing then.
"""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from identity.tokens import sign_jwt
from quaygate.schema import signing_keys
from release_service.domain.gate_pass import PASS_ALG, PASS_TYP

from .factories import TERMINAL
from .test_gate_offline import _post, _report, offline_rows, passes, payload
from .test_gate_verify import Gate, gate  # noqa: F401


def _keys(gate: Gate) -> object:
    return gate.http.app.state.identity.keys  # type: ignore[attr-defined]


def _rotated(gate: Gate, at: datetime | None = None) -> None:
    """Every signing key rotated out (now, or ``at``), and days pass: the old keys' publication ends (as
    if their tokens had all expired); the gate takes a new token."""
    keys = _keys(gate)
    keys.rotate(at or datetime.now(UTC))  # type: ignore[attr-defined]
    with gate.engine.begin() as conn:
        conn.execute(signing_keys.update().where(signing_keys.c.status == "retiring")
                     .values(publish_until=datetime.now(UTC) - timedelta(seconds=1)))
    keys.invalidate()  # type: ignore[attr-defined]
    gate.gate_token = gate.token_for("terminal_gate", gate.p.terminal.organisation_id, TERMINAL)


def test_a_gate_in_reported_after_a_key_rotation_is_recorded_and_the_right_is_used(gate: Gate) -> None:
    rid = gate.pickable(1)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    report = _report(gate, 1, token=token)
    # The key is rotated out and its publication has ended by the time the adapter reconnects.
    _rotated(gate)
    published = gate.http.get("/oauth2/jwks").json()["keys"]
    assert all(k["kid"] != _header_kid(token) for k in published)  # no longer published
    got = _post(gate, report)
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("recorded", None)
    assert gate.state(rid) == "gated_in"
    second = gate.verify(gate.body(1, mode="commit", request_id="second-truck"))
    assert second.status_code == 200, second.text
    assert (second.json()["decision"], second.json()["reasons"]) == ("deny", ["already_used"])


def test_a_pass_signed_by_a_replica_yet_to_reload_its_keys_is_recorded(gate: Gate) -> None:
    """Review 132, finding 5: another replica rotated the keys; this one goes on signing with the old key
    until its next reload (``reload_every``). Its pass, reported after the key left the JWKS, is ours: the
    gate-in is recorded, not flagged, and a second truck is refused online."""
    rid = gate.pickable(5)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    reload = _keys(gate).reload_every  # type: ignore[attr-defined]
    # The rotation came reload_every - 5 s before this pass was signed with the old key.
    _rotated(gate, at=datetime.fromtimestamp(payload(token)["iat"], UTC) - timedelta(seconds=reload - 5))
    assert all(k["kid"] != _header_kid(token) for k in gate.http.get("/oauth2/jwks").json()["keys"])
    got = _post(gate, _report(gate, 5, token=token))
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("recorded", None)
    assert gate.state(rid) == "gated_in"
    second = gate.verify(gate.body(5, mode="commit", request_id="second-truck-5"))
    assert second.status_code == 200, second.text
    assert (second.json()["decision"], second.json()["reasons"]) == ("deny", ["already_used"])


def test_a_rotated_out_keys_passes_are_ours_up_to_the_reload_period_after_it() -> None:
    from release_service.domain.gate_pass import MAX_PASS_LIFETIME, signed_while_active

    retired, reload = datetime(2026, 11, 25, 12, tzinfo=UTC), timedelta(seconds=60)
    last = int((retired + reload).timestamp())
    life = int(MAX_PASS_LIFETIME.total_seconds())
    assert signed_while_active({"iat": last + 1, "exp": last + life}, retired, reload=reload)
    assert not signed_while_active({"iat": last + 2, "exp": last + 2}, retired, reload=reload)
    assert not signed_while_active({"iat": last, "exp": last + life + 1}, retired, reload=reload)
    assert not signed_while_active({"iat": last, "exp": last + 60}, retired, reload=timedelta(0))


def test_a_pass_dated_after_its_keys_rotation_is_not_ours(gate: Gate) -> None:
    rid = gate.pickable(2)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    old = _keys(gate).signing_key(PASS_ALG)  # type: ignore[attr-defined]  # a leaked retired key, say
    _rotated(gate, at=datetime.now(UTC) - timedelta(minutes=10))
    # Dated five minutes after the key was rotated out, and covering the truck's time: in every other way
    # a pass the reconcile would take.
    iat = int(datetime.now(UTC).timestamp()) - 300
    forged = sign_jwt({**payload(token), "iat": iat, "exp": iat + 600}, old, typ=PASS_TYP, alg=PASS_ALG)
    got = _post(gate, _report(gate, 2, token=forged))
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "pass_invalid")
    assert gate.state(rid) == "nominated"
    assert [r.flag for r in offline_rows(gate)] == ["pass_invalid"]


def _header_kid(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


@pytest.mark.parametrize("life", [timedelta(days=30), timedelta(minutes=10)])
def test_a_leaked_retired_key_forges_no_pass_for_a_right_made_after_its_rotation(gate: Gate, life: timedelta) -> None:
    """Review 124: a key rotated out because it leaked signs a pass dated before its rotation (so ``iat``
    passes) for a right made after it. A month-long pass is refused for its length (a pass lives an hour at
    most, and a retired key's passes end within an hour of its rotation); a short one because its right
    did not exist when it says it was issued."""
    old = _keys(gate).signing_key(PASS_ALG)  # type: ignore[attr-defined]
    retired = datetime.now(UTC) - timedelta(minutes=10)
    _rotated(gate, at=retired)
    rid = gate.pickable(3)  # made now, after the rotation
    genuine = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    iat = int(retired.timestamp()) - 60
    forged = sign_jwt({**payload(genuine), "iat": iat, "exp": iat + int(life.total_seconds())}, old,
                      typ=PASS_TYP, alg=PASS_ALG)
    report = _report(gate, 3, token=forged, decided_at=datetime.fromtimestamp(iat + 30, UTC).isoformat())
    got = _post(gate, report)
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "pass_invalid")
    assert gate.state(rid) == "nominated"


def test_a_pass_living_longer_than_an_hour_is_not_ours_whoever_signed_it(gate: Gate) -> None:
    rid = gate.pickable(4)
    genuine = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    claims = payload(genuine)
    key = _keys(gate).signing_key(PASS_ALG)  # type: ignore[attr-defined]  # the active key itself
    long = sign_jwt({**claims, "exp": claims["iat"] + 2 * 3600}, key, typ=PASS_TYP, alg=PASS_ALG)
    got = _post(gate, _report(gate, 4, token=long))
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "pass_invalid")
    assert gate.state(rid) == "nominated"


def test_the_longest_pass_is_the_settings_longest_pass_ttl() -> None:
    from quaygate.settings import Settings
    from release_service.domain.gate_pass import MAX_PASS_LIFETIME

    bound = next(m.le for m in Settings.model_fields["gate_pass_ttl"].metadata if hasattr(m, "le"))
    assert bound == MAX_PASS_LIFETIME.total_seconds()


def test_a_revoked_keys_passes_are_not_honoured_at_the_reconcile(gate: Gate) -> None:
    """Review 132, finding 6: a key revoked because it leaked vouches for nothing, not even a pass dated
    while it was active: the gate-in is flagged, and port security looks at it."""
    rid = gate.pickable(6)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    keys = _keys(gate)
    new = keys.revoke(_header_kid(token), datetime.now(UTC), reason="leaked",  # type: ignore[attr-defined]
                      actor={"client_id": "cli:test"})
    assert new is not None and keys.signing_key(PASS_ALG).kid == new  # type: ignore[attr-defined]
    report = _report(gate, 6, token=token)
    assert _post(gate, report).status_code == 401  # the gate's own token, signed by that key, is refused too
    gate.gate_token = gate.token_for("terminal_gate", gate.p.terminal.organisation_id, TERMINAL)
    got = _post(gate, report)
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "pass_invalid")
    assert gate.state(rid) == "nominated"
