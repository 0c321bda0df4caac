"""Review 132, finding 4: the data key can be replaced. A keyring (QUAYGATE_DATA_KEY seals, the
QUAYGATE_DATA_KEYS_PREVIOUS open), ``quaygate keys rekey-data`` seals every sealed column again under the
current key, and ``--check`` says when a previous key may be dropped."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from identity import audit
from identity.broker.keys import EncryptionKeys
from identity.domain import face_enrolment as enrolments
from identity.face.sealing import TAG_PURPOSE, enrolment_tag, open_template, seal_template
from identity.face.service import current_of
from identity.face.store import TemplateStore
from identity.keys import KeyStore
from quaygate.cli import main
from quaygate.crypto import DataCipher, UnknownDataKey
from quaygate.schema import audit_log, face_templates, signing_keys, webhook_subscriptions
from quaygate.settings import Settings
from release_service.adapters.audit import ensure_audit_key, export_public_key
from release_service.domain.parties import OrgKind
from release_service.domain.webhooks import secret_aad
from tests.factories import add_driver, add_org, now

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
OTHER = bytes(range(50, 82))


def _b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


# ---- the keyring ---------------------------------------------------------------------------------


def test_a_blob_names_its_key_and_opens_under_the_keyring_only() -> None:
    old, ring = DataCipher(OLD), DataCipher(NEW, [OLD])
    sealed = old.seal(b"secret", b"row-1")
    assert ring.sealed_key_id(sealed) == old.key_id and not ring.is_current(sealed)
    assert ring.open(sealed, b"row-1") == b"secret"
    with pytest.raises(InvalidTag):
        ring.open(sealed, b"row-2")  # the associated data still binds it to its row
    resealed = ring.reseal(sealed, b"row-1")
    assert resealed is not None and ring.is_current(resealed) and ring.reseal(resealed, b"row-1") is None
    with pytest.raises(UnknownDataKey):
        DataCipher(NEW).open(sealed, b"row-1")  # the previous key dropped: refused by name
    with pytest.raises(UnknownDataKey):
        ring.open(DataCipher(OTHER).seal(b"x", b"row-1"), b"row-1")


def test_a_v1_blob_from_before_the_keyring_opens_under_the_key_that_made_it() -> None:
    aead_blob = _v1(OLD, b"secret", b"aad")
    assert DataCipher(OLD).open(aead_blob, b"aad") == b"secret"
    ring = DataCipher(NEW, [OTHER, OLD])
    assert ring.sealed_key_id(aead_blob) is None and not ring.is_current(aead_blob)
    assert ring.open(aead_blob, b"aad") == b"secret"
    with pytest.raises(InvalidTag):
        DataCipher(NEW, [OTHER]).open(aead_blob, b"aad")


def _v1(key: bytes, plaintext: bytes, aad: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(12)
    return base64.urlsafe_b64encode(b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def test_what_a_client_holds_opens_under_the_current_key_only() -> None:
    """Review 135, finding 1 (ii): ``open_current``, for sealed values a client or a browser holds."""
    ring = DataCipher(NEW, [OLD])
    assert ring.open_current(ring.seal(b"flow", b"aad"), b"aad") == b"flow"
    with pytest.raises(UnknownDataKey):
        ring.open_current(DataCipher(OLD).seal(b"flow", b"aad"), b"aad")  # ring.open takes it
    with pytest.raises(InvalidTag):
        ring.open_current(_v1(OLD, b"flow", b"aad"), b"aad")
    assert DataCipher(OLD).open_current(_v1(OLD, b"flow", b"aad"), b"aad") == b"flow"
    with pytest.raises(InvalidTag):
        ring.open_current(ring.seal(b"flow", b"aad"), b"other")


def test_derived_keys_follow_the_current_key_and_keep_the_previous_ones() -> None:
    ring = DataCipher(NEW, [OLD])
    assert ring.derive(b"p") == DataCipher(NEW).derive(b"p")
    assert ring.derive_all(b"p") == (DataCipher(NEW).derive(b"p"), DataCipher(OLD).derive(b"p"))


@pytest.mark.parametrize("previous, message", [
    (_b64(NEW), "key 1 repeats QUAYGATE_DATA_KEY"),
    (f"{_b64(OLD)},{_b64(OLD)}", "key 2 repeats"),
    ("c2hvcnQ", "key 1 is not 32 bytes"),
])
def test_settings_refuse_a_malformed_or_repeated_previous_key(previous: str, message: str,
                                                              tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Settings(var_dir=tmp_path, data_key=_b64(NEW), data_keys_previous=previous)
    assert _b64(OLD) not in str(info.value) and _b64(NEW) not in str(info.value)


def test_settings_refuse_a_malformed_face_digest_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS: key 2 is not 32 bytes"):
        Settings(var_dir=tmp_path, data_key=_b64(NEW), face_digest_keys_previous=f"{_b64(OLD)},c2hvcnQ")
    settings = Settings(var_dir=tmp_path, data_key=_b64(NEW), face_digest_keys_previous=f" {_b64(OLD)} ,")
    assert settings.previous_face_digest_keys_bytes() == (OLD,)


def test_production_refuses_a_weak_previous_key(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, data_key=_b64(NEW), data_keys_previous=f"{_b64(OLD)},{_b64(bytes(32))}")
    assert any("previous key 2" in r and "random" in r for r in settings.production_refusals())
    assert not any("previous key 1" in r for r in settings.production_refusals())
    assert settings.data_cipher().previous_key_ids == (DataCipher(OLD).key_id, DataCipher(bytes(32)).key_id)


# ---- rekey-data ----------------------------------------------------------------------------------


@pytest.fixture
def cli(engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Runs ``quaygate ...`` on the test's database with the given data keys."""
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("QUAYGATE_PEPPER", "tests-only-pepper-" + "x" * 32)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)

    def run(args: list[str], current: bytes, *previous: bytes) -> int:
        monkeypatch.setenv("QUAYGATE_DATA_KEY", _b64(current))
        if previous:
            monkeypatch.setenv("QUAYGATE_DATA_KEYS_PREVIOUS", ",".join(_b64(k) for k in previous))
        else:
            monkeypatch.delenv("QUAYGATE_DATA_KEYS_PREVIOUS", raising=False)
        return main(args)

    yield run


def _world(engine: sa.Engine, cipher: DataCipher) -> dict[str, Any]:
    """One row of every sealed kind, each sealed under ``cipher`` through the code that seals it."""
    t = now()
    keys = KeyStore(engine, cipher)
    keys.ensure_active(t)
    retired = str(keys.signing_key("ES256").kid)
    keys.rotate(t)
    keys.retire_due(t + timedelta(days=30))
    enc = EncryptionKeys(engine, cipher, overlap=timedelta(days=1))
    enc_kid = enc.ensure_active(t)
    audit_key = ensure_audit_key(engine, cipher, t)
    org = add_org(engine, OrgKind.TRANSPORT_OPERATOR)
    sub = uuid.uuid4()
    person = add_driver(engine, org.organisation_id)
    template = uuid.uuid4()
    tag_key = cipher.derive(TAG_PURPOSE)
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=sub, organisation_id=org.organisation_id, url="https://example.org/hook",
            secret_enc=cipher.seal(b"whsec", secret_aad(sub)), event_types=["*"], active=True, created_at=t))
        conn.execute(face_templates.insert().values(
            person_id=person, template_id=template, sealed=seal_template(cipher, person, template, (0.5,) * 128),
            key_id=cipher.key_id, source="id_photo", face_px=200, sharpness=50.0, enrolled_by="test", enrolled_at=t))
        audit.record(enrolments.ENROLLED, at=t, actor={"system": "test"}, subject=str(person), conn=conn,
                     data={"template_id": str(template), "generation": 1,
                           "tag": enrolment_tag(tag_key, enrolments.ENROLLED, person, 1, template)})
    return {"retired": retired, "enc": enc_kid, "audit": audit_key.kid, "sub": sub, "person": person,
            "template": template, "active": {a: str(keys.signing_key(a).kid) for a in ("ES256", "RS256")}}


def _all_open(engine: sa.Engine, cipher: DataCipher, w: dict[str, Any]) -> None:
    """Every sealed kind of ``_world`` opens and says what it said, under ``cipher`` alone."""
    keys = KeyStore(engine, cipher)
    assert {a: str(keys.signing_key(a).kid) for a in ("ES256", "RS256")} == w["active"]
    assert keys.rotated_out(w["retired"]) is not None  # its retirement record opens and vouches for it
    assert EncryptionKeys(engine, cipher, overlap=timedelta(days=1)).private_key(w["enc"], now()) is not None
    jwks, ignored = export_public_key(engine, cipher)
    assert [k["kid"] for k in jwks["keys"]] == [w["audit"]] and ignored == []
    with engine.connect() as conn:
        sealed = conn.execute(sa.select(webhook_subscriptions.c.secret_enc)
                              .where(webhook_subscriptions.c.id == w["sub"])).scalar_one()
        assert cipher.open(sealed, secret_aad(w["sub"])) == b"whsec"
        row = TemplateStore(conn).get(w["person"])
        assert row is not None and row.key_id == cipher.key_id
        assert open_template(cipher, w["person"], w["template"], row.sealed) == (0.5,) * 128
        current = current_of(TemplateStore(conn), cipher.derive_all(TAG_PURPOSE), w["person"])
        assert current.template_id == str(w["template"]) and current.forged == 0


def test_rekey_seals_every_kind_again_and_the_previous_key_can_go(engine: sa.Engine, cli: Any,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    w = _world(engine, DataCipher(OLD))
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 1
    out = capsys.readouterr().out
    assert "webhook_subscriptions.secret_enc: 1 not under the current key" in out
    assert "face_templates.sealed: 1 not" in out and "face enrolment tags: 1 not" in out
    assert "face enrolments' re-tag mark: not yet written" in out
    assert cli(["keys", "rekey-data", "--batch", "1"], NEW, OLD) == 0
    out = capsys.readouterr().out
    assert "face_templates.sealed: 1 sealed again" in out and "face enrolment tags: 1 persons tagged" in out
    with engine.connect() as conn:  # the re-tagged person, with the entry that decided: its kind, time and row
        decided = conn.execute(sa.select(audit_log.c.id, audit_log.c.at).where(
            audit_log.c.kind == enrolments.ENROLLED, audit_log.c.subject == str(w["person"]))).one()
    assert (f"  person {w['person']}: {enrolments.ENROLLED} of {decided.at.isoformat()} (audit row {decided.id}), "
            f"template {w['template']}") in out
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 0
    assert "nothing left under other keys" in capsys.readouterr().out
    # A second run seals nothing again (idempotent), and every kind opens with the old key dropped.
    with engine.connect() as conn:
        before = conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_enc)).all()
    assert cli(["keys", "rekey-data"], NEW, OLD) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_enc)).all() == before
    _all_open(engine, DataCipher(NEW), w)
    with engine.connect() as conn:
        runs = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "quaygate.data_key.rekeyed")
                            .order_by(audit_log.c.id)).scalars().all()
    assert len(runs) == 2
    first = runs[0]
    assert first["current_key_id"] == DataCipher(NEW).key_id
    assert first["previous_key_ids"] == [DataCipher(OLD).key_id]
    assert first["columns"]["webhook_subscriptions.secret_enc"] == {"resealed": 1, "changed": 0, "unreadable": []}
    assert first["enrolments_retagged"] == 1
    assert runs[1]["columns"]["signing_keys.private_enc"]["resealed"] == 0
    assert _b64(NEW) not in json.dumps(runs) and _b64(OLD) not in json.dumps(runs)


def _current(engine: sa.Engine, person: uuid.UUID, *keys: bytes) -> enrolments.Current:
    with engine.connect() as conn:
        return current_of(TemplateStore(conn), DataCipher(keys[0], keys[1:]).derive_all(TAG_PURPOSE), person)


def _forge_enrolment(engine: sa.Engine, key: bytes, person: uuid.UUID, generation: int) -> uuid.UUID:
    """What a holder of data key ``key`` who can write the database does (review 135, finding 1 (a)): his
    own template on the person's row, sealed under that key, and an entry naming it, tagged under it."""
    mine, cipher = uuid.uuid4(), DataCipher(key)
    with engine.begin() as conn:
        conn.execute(face_templates.update().where(face_templates.c.person_id == person).values(
            template_id=mine, sealed=seal_template(cipher, person, mine, (0.9,) * 128), key_id=cipher.key_id))
        audit.record(enrolments.UPGRADED, at=now(), actor={"system": "face"}, subject=str(person), conn=conn,
                     data={"template_id": str(mine), "generation": generation,
                           "tag": enrolment_tag(cipher.derive(TAG_PURPOSE), enrolments.UPGRADED, person,
                                                generation, mine)})
    return mine


def test_a_previous_key_makes_no_enrolment_once_rekey_data_has_tagged_them_all(engine: sa.Engine, cli: Any,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    """Review 135, finding 1 (iii): after the rekey, a holder of the old (leaked) key who writes his own
    template and an entry above the person's generation tagged under the old key is refused: a previous
    key's entry counts only below the person's generation under the current key. Before rekey-data has run
    (the key just changed) the old key's entries still decide, so no one's face stops working."""
    w = _world(engine, DataCipher(OLD))
    person = w["person"]
    assert _current(engine, person, NEW, OLD).template_id == str(w["template"])  # the switch: still his
    assert cli(["keys", "rekey-data"], NEW, OLD) == 0
    after = _current(engine, person, NEW, OLD)
    assert (after.template_id, after.generation, after.forged) == (str(w["template"]), 2, 0)
    _forge_enrolment(engine, OLD, person, 3)
    forged = _current(engine, person, NEW, OLD)
    assert (forged.template_id, forged.generation, forged.forged) == (str(w["template"]), 2, 1)
    _forge_enrolment(engine, OLD, person, 2)  # at the current generation: a tie he would win on the row id
    assert _current(engine, person, NEW, OLD).template_id == str(w["template"])
    # A person never enrolled: the old key's generation 1 is above his 0 under the current key.
    stranger = add_driver(engine, add_org(engine, OrgKind.TRANSPORT_OPERATOR).organisation_id)
    with engine.begin() as conn:
        conn.execute(face_templates.insert().values(
            person_id=stranger, template_id=uuid.uuid4(), sealed="x", key_id="x", source="id_photo", face_px=200,
            sharpness=50.0, enrolled_by="test", enrolled_at=now()))
    _forge_enrolment(engine, OLD, stranger, 1)
    assert _current(engine, stranger, NEW, OLD).template_id is None
    capsys.readouterr()
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 1  # and his rows are not under the current key
    out = capsys.readouterr().out
    assert "face_templates.sealed: 2 not under the current key" in out and "re-tag mark: written" in out


def test_face_digest_keys_prints_what_lets_the_previous_data_keys_go(cli: Any,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Review 135, finding 1 (iv): the previous keys' capture digest keys alone, with those already kept."""
    from identity.face.service import DIGEST_PURPOSE

    assert cli(["keys", "face-digest-keys"], NEW) == 2
    assert "nothing to keep" in capsys.readouterr().err
    assert cli(["keys", "face-digest-keys"], NEW, OLD) == 0
    out = capsys.readouterr().out.strip()
    digest = DataCipher(OLD).derive(DIGEST_PURPOSE)
    assert out == f"QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS={_b64(digest).rstrip('=')}"
    assert _b64(OLD).rstrip("=") not in out


def test_the_retagged_flag_is_covered_by_the_tag(engine: sa.Engine) -> None:
    """Review 135, finding 4: an entry marked ``retagged`` vouches for the history below it (entries under a
    dropped key there are not counted as forged). An insider who can only INSERT copied a verified entry with
    the flag added, and its tag still verified: the forgeries below it went unlogged. The flag is in the
    tagged message now: the copy is a forgery itself."""
    person = add_driver(engine, add_org(engine, OrgKind.TRANSPORT_OPERATOR).organisation_id)
    key = DataCipher(NEW).derive(TAG_PURPOSE)

    def entry(generation: int, template: uuid.UUID, tag: str, **more: Any) -> None:
        with engine.begin() as conn:
            audit.record(enrolments.ENROLLED, at=now(), actor={"system": "test"}, subject=str(person), conn=conn,
                         data={"template_id": str(template), "generation": generation, "tag": tag, **more})

    first, second = uuid.uuid4(), uuid.uuid4()
    entry(1, first, enrolment_tag(key, enrolments.ENROLLED, person, 1, first))
    second_tag = enrolment_tag(key, enrolments.ENROLLED, person, 2, second)
    entry(2, second, second_tag)
    entry(1, uuid.uuid4(), "forged")
    assert _current(engine, person, NEW).forged == 1
    entry(2, second, second_tag, retagged=True)  # the copy, flagged
    current = _current(engine, person, NEW)
    assert (current.template_id, current.forged) == (str(second), 2)


def test_a_row_under_an_unknown_key_is_reported_and_kept(engine: sa.Engine, cli: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    w = _world(engine, DataCipher(OLD))
    stranger = DataCipher(OTHER).seal(b"whsec", secret_aad(w["sub"]))
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == w["sub"])
                     .values(secret_enc=stranger))
    assert cli(["keys", "rekey-data"], NEW, OLD) == 1
    captured = capsys.readouterr()
    assert f"webhook_subscriptions.secret_enc: row {w['sub']} opens under no configured data key" in captured.err
    with engine.connect() as conn:
        assert conn.execute(sa.select(webhook_subscriptions.c.secret_enc)
                            .where(webhook_subscriptions.c.id == w["sub"])).scalar_one() == stranger
        data = conn.execute(sa.select(audit_log.c.data)
                            .where(audit_log.c.kind == "quaygate.data_key.rekeyed")).scalar_one()
    assert data["columns"]["webhook_subscriptions.secret_enc"]["unreadable"] == [str(w["sub"])]
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 1
    assert "webhook_subscriptions.secret_enc: 1 not under the current key" in capsys.readouterr().out


def test_rekey_leaves_a_row_changed_meanwhile_to_its_writer(pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    from quaygate import rekey

    w = _world(pg_engine, DataCipher(OLD))
    ring = DataCipher(NEW, [OLD])
    theirs = ring.seal(b"rotated by the admin", secret_aad(w["sub"]))
    counts: dict[str, rekey.TableCount] = {}
    with pg_engine.connect() as held:
        held.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == w["sub"])
                     .values(secret_enc=theirs))  # not committed: the row is locked
        pid = held.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        runner = threading.Thread(target=lambda: counts.update(rekey.rekey(pg_engine, ring)))
        runner.start()
        _wait_until_blocked_by(pg_engine, pid)
        held.commit()
    runner.join()
    assert counts["webhook_subscriptions.secret_enc"].as_dict() == {"resealed": 0, "changed": 1, "unreadable": []}
    with pg_engine.connect() as conn:
        stored = conn.execute(sa.select(webhook_subscriptions.c.secret_enc)
                              .where(webhook_subscriptions.c.id == w["sub"])).scalar_one()
    assert stored == theirs and DataCipher(NEW).open(stored, secret_aad(w["sub"])) == b"rotated by the admin"


def _wait_until_blocked_by(engine: sa.Engine, pid: int) -> None:
    """Until some session waits for a lock ``pid`` holds (no time assumed: the other thread gets there)."""
    with engine.connect() as conn:
        while not conn.execute(sa.text("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE :pid = ANY("
                                       "pg_blocking_pids(pid)))"), {"pid": pid}).scalar_one():
            conn.rollback()
            threading.Event().wait(0.01)
