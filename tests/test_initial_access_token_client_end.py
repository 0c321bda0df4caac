"""An admin client's initial access tokens end with it, and those tied to an organisation with the
organisation (review 163, finding 1; identity.registration.service ``end_iats``), as its enrolment codes
do (review 146, finding 1: tests/test_enrolment_code_client_end.py). An initial access token lives up to
30 days and registers a client of any role its organisation's kind allows: one tied to a terminal
registers a terminal_gate client, which gets gate:verify for that terminal. The deactivation of the
client that minted it, a rotation of its secret that revokes its tokens, and the deactivation of its
organisation killed its tokens and left every initial access token it had minted unused and live: the
thief of its secret registered a gate client with one after port security had rotated the secret and
deactivated the client. Now they end in the same transaction, and the audit entry counts them; a token
tied to an inactive organisation registers nothing; and a token is minted neither by a deactivated client
(or one of a deactivated organisation) nor for a deactivated organisation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.grants import GrantStore, RevocationList
from identity.organisations import set_active
from identity.registration.service import ClientManagement, RegistrationError
from quaygate.cache import MemoryCache
from quaygate.schema import initial_access_tokens, oauth_clients, organisations
from release_service.domain.parties import OrgKind
from tests.ban_register import Register
from tests.factories import add_org
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import console_flow
from tests.test_enrolment_code_client_end import _admin, _post
from tests.test_enrolment_code_issuer import _audit
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import TERMINAL, assertion, assertion_form, public_jwks, rsa_key

MONTH = 30 * 24 * 3600


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


def _terminal(flow: Flow) -> uuid.UUID:
    org = add_org(flow.engine, OrgKind.TERMINAL, terminal_code=TERMINAL).organisation_id
    assert org is not None
    return org


def _mint(flow: Flow, token: str, organisation: uuid.UUID | None) -> str:
    """An initial access token for 30 days, through the admin API."""
    r = _post(flow, token, "/admin/v1/initial-access-tokens",
              {"organisation_id": str(organisation) if organisation else None, "ttl": MONTH})
    assert r.status_code == 201, r.text
    return str(r.json()["initial_access_token"])


def _register(flow: Flow, iat: str, doc: dict[str, Any]) -> Any:
    flow.http.cookies.clear()
    return flow.http.post("/oauth2/register", json=doc, headers={"Authorization": f"Bearer {iat}"})


def _gate(flow: Flow, iat: str) -> Any:
    """What the thief does with a terminal's token: a gate client of his own key, then gate:verify."""
    key = rsa_key()
    r = _register(flow, iat, {"quaygate_role": "terminal_gate", "token_endpoint_auth_method": "private_key_jwt",
                              "jwks": public_jwks(key)})
    if r.status_code != 201:
        return r
    token = flow.http.post("/oauth2/token", data=assertion_form(assertion(key, r.json()["client_id"]),
                                                                scope="gate:verify"))
    assert token.status_code == 200 and token.json()["scope"] == "gate:verify", token.text
    return r


def _refused(r: Any) -> None:
    assert r.status_code == 401 and r.json()["error"] == "invalid_token", r.text


def _clients(flow: Flow) -> set[str]:
    with flow.engine.connect() as conn:
        return set(conn.execute(sa.select(oauth_clients.c.role)).scalars())


def test_the_reviewers_thief_registers_no_gate_after_the_rotation_and_the_deactivation(flow: Flow) -> None:
    stolen, token, _ = _admin(flow)
    _, other_token, _ = _admin(flow)
    terminal = _terminal(flow)
    thiefs = _mint(flow, token, terminal)
    untied = _mint(flow, token, None)

    rotated = _post(flow, other_token, f"/admin/v1/clients/{stolen}/secret", {"revoke_tokens": True})
    assert rotated.status_code == 200, rotated.text
    done = _post(flow, other_token, f"/admin/v1/clients/{stolen}:deactivate")
    assert done.status_code == 200, done.text
    _refused(_gate(flow, thiefs))  # 201 qg-terminal-gate-..., then gate:verify, before the mend
    _refused(_register(flow, untied, {}))
    assert "terminal_gate" not in _clients(flow)
    [rotation] = _audit(flow, "identity.admin.client.secret_rotated")
    [deactivation] = _audit(flow, "identity.admin.client.deactivated")
    assert (rotation["initial_access_tokens_ended"], deactivation["initial_access_tokens_ended"]) == (2, 0)


def test_a_deactivated_admin_clients_tokens_end_anothers_stay(flow: Flow) -> None:
    stolen, token, _ = _admin(flow)
    _, other_token, _ = _admin(flow)
    terminal = _terminal(flow)
    thiefs, untied = _mint(flow, token, terminal), _mint(flow, token, None)
    kept = _mint(flow, other_token, terminal)

    done = _post(flow, other_token, f"/admin/v1/clients/{stolen}:deactivate")
    assert done.status_code == 200, done.text
    _refused(_gate(flow, thiefs))  # 201 before the mend
    _refused(_register(flow, untied, {}))
    assert _gate(flow, kept).status_code == 201  # another client's token stays
    [data] = _audit(flow, "identity.admin.client.deactivated")
    assert data["initial_access_tokens_ended"] == 2
    with flow.engine.connect() as conn:  # marked, never deleted: three rows, one used
        rows = conn.execute(sa.select(initial_access_tokens.c.used_at)).scalars().all()
    assert len(rows) == 3 and sum(r is not None for r in rows) == 1


def test_a_secret_rotation_that_revokes_the_tokens_ends_them_one_that_does_not_keeps_them(flow: Flow) -> None:
    stolen, token, _ = _admin(flow)
    _, other_token, _ = _admin(flow)
    terminal = _terminal(flow)
    first, second = _mint(flow, token, terminal), _mint(flow, token, terminal)

    kept = _post(flow, other_token, f"/admin/v1/clients/{stolen}/secret", {"revoke_tokens": False})
    assert kept.status_code == 200, kept.text
    assert _gate(flow, first).status_code == 201
    rotated = _post(flow, other_token, f"/admin/v1/clients/{stolen}/secret", {"revoke_tokens": True})
    assert rotated.status_code == 200, rotated.text
    _refused(_gate(flow, second))  # 201 before the mend
    one, two = _audit(flow, "identity.admin.client.secret_rotated")
    assert (one["initial_access_tokens_ended"], two["initial_access_tokens_ended"]) == (0, 1)


def test_a_deactivated_organisations_tokens_end_and_stay_ended(flow: Flow) -> None:
    """Those its admin clients minted, and those tied to it (whoever minted them). Its reactivation brings
    none back, as it brings back no enrolment code."""
    _, token, authority = _admin(flow)
    _, other_token, _ = _admin(flow)
    terminal = _terminal(flow)
    minted = _mint(flow, token, terminal)  # by a client of the port authority deactivated
    tied, also = _mint(flow, other_token, terminal), _mint(flow, other_token, terminal)  # tied to the terminal
    kept = _mint(flow, other_token, add_org(flow.engine, OrgKind.SHIPPING_LINE).organisation_id)

    for org in (authority, terminal):
        done = _post(flow, other_token, f"/admin/v1/organisations/{org}:deactivate", {"reason": "fraud suspected"})
        assert done.status_code == 200, done.text
    first, second = _audit(flow, "identity.admin.organisation.deactivated")
    assert (first["initial_access_tokens_ended"], second["initial_access_tokens_ended"]) == (1, 2)
    again = _post(flow, other_token, f"/admin/v1/organisations/{terminal}:reactivate", {"reason": "cleared"})
    assert again.status_code == 200, again.text
    for ended in (minted, tied, also):
        _refused(_gate(flow, ended))  # 201 before the mend
    assert "terminal_gate" not in _clients(flow)
    assert _register(flow, kept, {}).status_code == 201  # another organisation's


def test_a_token_tied_to_an_inactive_organisation_registers_nothing(flow: Flow) -> None:
    """A token left live (minted before review 163's mend): refused while its organisation is inactive, in
    the check of the headers as in the registration, and left unused (201 before the mend, a client that
    came to life with the organisation's reactivation)."""
    _, token, _ = _admin(flow)
    terminal = _terminal(flow)
    iat = _mint(flow, token, terminal)
    with flow.engine.begin() as conn:
        conn.execute(organisations.update().where(organisations.c.id == terminal).values(active=False))
    _refused(_gate(flow, iat))
    assert "terminal_gate" not in _clients(flow)
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(initial_access_tokens.c.used_at)).scalar_one() is None



@pytest.mark.parametrize("cut", ["the client", "its organisation"])
def test_a_token_left_live_by_a_deactivation_before_the_mend_registers_nothing(flow: Flow, cut: str) -> None:
    """A token no deactivation ended (its minting client, or that client's organisation, deactivated before
    review 163's mend, written here as the row update it then was): refused at the headers and at the
    registration, since a token is no better than the client that minted it, and left unused."""
    minter, token, _ = _admin(flow)
    terminal = _terminal(flow)
    iat = _mint(flow, token, terminal)
    with flow.engine.begin() as conn:
        if cut == "the client":
            conn.execute(oauth_clients.update().where(oauth_clients.c.client_id == minter).values(active=False))
        else:
            org = conn.execute(sa.select(oauth_clients.c.organisation_id)
                               .where(oauth_clients.c.client_id == minter)).scalar_one()
            conn.execute(organisations.update().where(organisations.c.id == org).values(active=False))
    _refused(_gate(flow, iat))  # 201, then gate:verify, before
    with pytest.raises(RegistrationError) as refused:  # the registration's own claim, past the headers' check
        _management(flow.engine).register(iat, {"quaygate_role": "terminal_gate", "jwks": public_jwks(rsa_key()),
                                                "token_endpoint_auth_method": "private_key_jwt"},
                                          now=datetime.now(UTC))
    assert refused.value.reason == "iat_issuer_inactive"
    assert "terminal_gate" not in _clients(flow)
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(initial_access_tokens.c.used_at)).scalar_one() is None

# The service level: a mint and a deactivation of the minting client or of an organisation, one after the
# other, then interleaved on PostgreSQL. (Through the API the client's token is revoked with the
# deactivation; a request that passed its token check before it still runs its mint after.)


def _world(engine: sa.Engine) -> tuple[str, uuid.UUID, uuid.UUID]:
    """(an admin client, its port authority, a terminal)."""
    authority = add_org(engine, OrgKind.PORT_AUTHORITY).organisation_id
    terminal = add_org(engine, OrgKind.TERMINAL, terminal_code=TERMINAL).organisation_id
    assert authority is not None and terminal is not None
    client_id, _ = create_client(engine, name="admin", role="admin", organisation_id=authority, now=datetime.now(UTC))
    return client_id, authority, terminal


def _management(engine: sa.Engine) -> ClientManagement:
    return ClientManagement(engine, GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60), issuer="x")


def _mint_as(engine: sa.Engine, client_id: str, organisation: uuid.UUID | None) -> str:
    token, _ = _management(engine).create_initial_access_token(organisation_id=organisation, created_by=client_id,
                                                               ttl=MONTH, now=datetime.now(UTC))
    return token


def _cut(engine: sa.Engine, cut: str, client_id: str, org: uuid.UUID) -> Any:
    if cut == "client":
        return _management(engine).deactivate(client_id, admin="qg-admin-other", now=datetime.now(UTC))
    grants = GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60)
    return set_active(engine, grants, org, active=False, actor="qg-admin-other", reason="fraud suspected",
                      now=datetime.now(UTC), access_token_ttl=300)


def _live(engine: sa.Engine) -> int:
    now = datetime.now(UTC)
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(initial_access_tokens).where(
            initial_access_tokens.c.used_at.is_(None), initial_access_tokens.c.expires_at > now)).scalar_one())


@pytest.mark.parametrize("cut", ["client", "its organisation", "the token's organisation"])
def test_no_token_is_minted_by_a_deactivated_client_or_for_a_deactivated_organisation(engine: sa.Engine,
                                                                                         cut: str) -> None:
    client_id, authority, terminal = _world(engine)
    _cut(engine, cut, client_id, terminal if cut == "the token's organisation" else authority)
    with pytest.raises(RegistrationError) as refused:
        _mint_as(engine, client_id, terminal)
    expected = "organisation_inactive" if cut == "the token's organisation" else "issuer_inactive"
    assert refused.value.reason == expected
    assert _live(engine) == 0
    _mint_as(engine, "cli", None)  # no such client: the command line's
    assert _live(engine) == 1


@pytest.mark.parametrize("cut", ["client", "its organisation", "the token's organisation"])
def test_a_deactivation_during_a_mint_waits_and_ends_its_token(pg_engine: sa.Engine, cut: str) -> None:
    """The mint held open just before its COMMIT: the deactivation of its client (the client's row), of
    the client's organisation or of the token's (the organisation's row) waits for it, then ends its
    token. Before the mend it went through, and the token committed after it was live."""
    client_id, authority, terminal = _world(pg_engine)
    org = terminal if cut == "the token's organisation" else authority
    with HeldBeforeCommit(pg_engine, "INSERT INTO initial_access_tokens") as mint_held:
        minting, minted = in_thread(lambda: _mint_as(pg_engine, client_id, terminal))
        assert mint_held.held.wait(10)
        cutting, _ = in_thread(lambda: _cut(pg_engine, "client" if cut == "client" else "organisation",
                                            client_id, org))
        waited = waits_on_a_lock(pg_engine, cutting)
        mint_held.go.set()
        minting.join(20)
        cutting.join(20)
    assert minted and not cutting.is_alive()
    assert waited
    assert _live(pg_engine) == 0


def test_a_registration_during_its_organisations_deactivation_is_seen_by_it(pg_engine: sa.Engine) -> None:
    """The registration held open just before its COMMIT: the deactivation of the token's organisation
    waits for it, then counts the new client among the organisation's (its tokens revoked with theirs).
    Before the mend it did not wait and missed it: a client of the organisation that no deactivation
    had seen."""
    client_id, _, terminal = _world(pg_engine)
    iat = _mint_as(pg_engine, client_id, terminal)
    with HeldBeforeCommit(pg_engine, "INSERT INTO oauth_clients") as held:
        registering, registered = in_thread(lambda: _management(pg_engine).register(
            iat, {"quaygate_role": "terminal_gate", "token_endpoint_auth_method": "private_key_jwt",
                  "jwks": public_jwks(rsa_key())}, now=datetime.now(UTC)))
        assert held.held.wait(10)
        cutting, changed = in_thread(lambda: _cut(pg_engine, "organisation", client_id, terminal))
        waited = waits_on_a_lock(pg_engine, cutting)
        held.go.set()
        registering.join(20)
        cutting.join(20)
    assert registered and changed and waited
    assert changed[0].clients == (registered[0].client_id,)
