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
from joserfc.jwk import ECKey

from identity import audit
from identity.broker.keys import EncryptionKeys
from identity.domain import face_enrolment as enrolments
from identity.domain.face import FaceCode
from identity.face.sealing import TAG_PURPOSE, enrolment_tag, open_template, seal_template
from identity.face.service import current_of
from identity.face.store import TemplateStore
from identity.keys import KeyStore
from identity.tokens import sign_jwt
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
    template, anchor = uuid.uuid4(), uuid.uuid4()  # the anchor of a retake (review 154, finding 1)
    tag_key = cipher.derive(TAG_PURPOSE)
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=sub, organisation_id=org.organisation_id, url="https://example.org/hook",
            secret_enc=cipher.seal(b"whsec", secret_aad(sub)), event_types=["*"], active=True, created_at=t))
        conn.execute(face_templates.insert().values(
            person_id=person, template_id=template, sealed=seal_template(cipher, person, template, (0.5,) * 128),
            key_id=cipher.key_id, source="id_photo", face_px=200, sharpness=50.0, enrolled_by="test", enrolled_at=t,
            anchor_template_id=anchor, anchor_sealed=seal_template(cipher, person, anchor, (0.25,) * 128)))
        audit.record(enrolments.ENROLLED, at=t, actor={"system": "test"}, subject=str(person), conn=conn,
                     data={"template_id": str(template), "generation": 1,
                           "tag": enrolment_tag(tag_key, enrolments.ENROLLED, person, 1, template)})
    return {"retired": retired, "enc": enc_kid, "audit": audit_key.kid, "sub": sub, "person": person,
            "template": template, "anchor": anchor,
            "active": {a: str(keys.signing_key(a).kid) for a in ("ES256", "RS256")}}


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
        assert row.anchor_sealed is not None and row.anchor_template_id == w["anchor"]
        assert open_template(cipher, w["person"], w["anchor"], row.anchor_sealed) == (0.25,) * 128
        current = current_of(TemplateStore(conn), cipher.derive_all(TAG_PURPOSE), w["person"])
        assert current.template_id == str(w["template"]) and current.forged == 0


def test_rekey_seals_every_kind_again_and_the_previous_key_can_go(engine: sa.Engine, cli: Any,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    w = _world(engine, DataCipher(OLD))
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 1
    out = capsys.readouterr().out
    assert "webhook_subscriptions.secret_enc: 1 not under the current key" in out
    assert "face_templates.sealed: 1 not" in out and "face enrolment tags: 1 not" in out
    assert "face_templates.anchor_sealed: 1 not" in out
    assert "face enrolments' re-tag mark: not yet written" in out
    assert cli(["keys", "rekey-data", "--batch", "1"], NEW, OLD) == 0
    out = capsys.readouterr().out
    assert "face_templates.sealed: 1 sealed again" in out and "face enrolment tags: 1 persons tagged" in out
    assert "face_templates.anchor_sealed: 1 sealed again" in out
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
    assert first["columns"]["webhook_subscriptions.secret_enc"] == {"resealed": 1, "changed": 0, "unreadable": [],
                                                                    "refused": {}}
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
    assert counts["webhook_subscriptions.secret_enc"].as_dict() == {"resealed": 0, "changed": 1, "unreadable": [],
                                                                   "refused": {}}
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


# ---- review 140, finding 1: a leaked previous key plants nothing once rekey-data has finished -------------


@pytest.fixture
def service(cli: Any) -> Iterator[Any]:
    """The service as it runs (``Container.build``) with the data keys the last ``cli`` call set."""
    from quaygate.container import Container

    built: list[Container] = []

    def build() -> Container:
        built.append(Container.build(Settings()))
        return built[-1]

    yield build
    for c in built:
        c.close()


TEN_YEARS = timedelta(days=3650)


def _plant_token_key(engine: sa.Engine, key: bytes, *, retired: timedelta = TEN_YEARS,
                     published: timedelta = TEN_YEARS) -> ECKey:
    """What a holder of data key ``key`` who can write the database does (review 140, finding 1 (a)): his own
    key as a token key being rotated out, sealed under that key, rotated out and published until ``retired``
    and ``published`` from now (the retirement job leaves a key alone until its publish_until)."""
    mine = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
    mine.ensure_kid()
    kid, t = str(mine.kid), now()
    with engine.begin() as conn:
        conn.execute(signing_keys.insert().values(
            kid=kid, alg="ES256", use="sig", public_jwk=mine.as_dict(private=False),
            private_enc=DataCipher(key).seal(json.dumps(mine.as_dict(private=True)).encode(), kid.encode()),
            status="retiring", created_at=t - timedelta(days=1), retired_at=t + retired, publish_until=t + published))
    return mine


def _plant_face(engine: sa.Engine, key: bytes, person: uuid.UUID, template: uuid.UUID) -> None:
    """(b): his own face sealed under ``key`` on the driver's row, under the template id the trail names."""
    with engine.begin() as conn:
        conn.execute(face_templates.update().where(face_templates.c.person_id == person).values(
            sealed=seal_template(DataCipher(key), person, template, (0.9,) * 128), key_id=DataCipher(key).key_id))


def test_a_stored_blob_under_a_previous_key_opens_until_the_rekey_has_finished() -> None:
    """``open_stored``: a previous key's blob opens while the rekey has not finished (the rotation window: the
    service keeps working), never once it has (asked at most once per check_every, then never again); a
    cipher nobody told how to ask refuses it."""
    finished, ticks = [False], [0.0]
    asked: list[bool] = []

    def mark() -> bool:
        asked.append(finished[0])
        return finished[0]

    ring = DataCipher(NEW, [OLD])
    ring.watch_rekey(mark, check_every=1.0, monotonic=lambda: ticks[0])
    old, new = DataCipher(OLD).seal(b"row", b"aad"), ring.seal(b"row", b"aad")
    assert ring.open_stored(old, b"aad") == b"row" and ring.open_stored(_v1(OLD, b"row", b"aad"), b"aad") == b"row"
    assert ring.open_stored(new, b"aad") == b"row" and asked == [False]  # once within check_every
    finished[0], ticks[0] = True, 1.5
    with pytest.raises(UnknownDataKey):
        ring.open_stored(old, b"aad")
    with pytest.raises(InvalidTag):
        ring.open_stored(_v1(OLD, b"row", b"aad"), b"aad")
    assert ring.open_stored(new, b"aad") == b"row" and ring.open_stored(_v1(NEW, b"r", b"aad"), b"aad") == b"r"
    finished[0], ticks[0] = False, 10.0  # the mark cannot go away: never asked again
    with pytest.raises(UnknownDataKey):
        ring.open_stored(old, b"aad")
    assert asked == [False, True]
    assert ring.open(old, b"aad") == b"row"  # what rekey-data itself opens with
    with pytest.raises(UnknownDataKey):
        DataCipher(NEW, [OLD]).open_stored(old, b"aad")


def test_a_leaked_previous_key_plants_no_key_and_no_face_once_rekey_data_has_finished(
        engine: sa.Engine, cli: Any, service: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 140, finding 1: the rotation is done (--check exits 0, the re-tag mark written), the old key
    is still in QUAYGATE_DATA_KEYS_PREVIOUS. Its holder, with write access to the database, plants (a) his own
    token key, retiring and published ten years ahead, and (b) his own face on a driver's row under the
    template id the trail names. The service takes neither; a later rekey-data seals neither again."""
    from identity.bootstrap import key_store
    from identity.face import FaceService
    from identity.face.sealing import TemplateUnreadable
    from release_service.api.gate_offline import KeyStorePassSigner
    from release_service.domain.gate_pass import PASS_TYP

    w = _world(engine, DataCipher(OLD))
    assert cli(["keys", "rekey-data"], NEW, OLD) == 0
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 0
    mine = _plant_token_key(engine, OLD)
    _plant_face(engine, OLD, w["person"], w["template"])
    c = service()
    keys = key_store(c)
    assert str(mine.kid) not in {str(k.kid) for k in keys.public_key_set(refresh=True, kid=str(mine.kid))}
    assert str(mine.kid) not in {k["kid"] for k in keys.jwks()["keys"]}
    forged = sign_jwt({"jti": "p-1", "iat": int(now().timestamp())}, mine, typ=PASS_TYP)
    assert KeyStorePassSigner(keys).verify(forged) is None and keys.rotated_out(str(mine.kid)) is None
    face = FaceService(engine=engine, cipher=c.cipher, pool=None,  # type: ignore[arg-type]
                       tolerance=0.5, max_image_bytes=1 << 20)
    assert face._template(w["person"]) == FaceCode.UNAVAILABLE
    with engine.connect() as conn:
        row = TemplateStore(conn).get(w["person"])
    assert row is not None
    with pytest.raises(TemplateUnreadable):
        open_template(c.cipher, w["person"], w["template"], row.sealed)
    # rekey-data, run again as --check asks, names both and seals neither again.
    capsys.readouterr()
    assert cli(["keys", "rekey-data", "--check"], NEW, OLD) == 1
    assert cli(["keys", "rekey-data"], NEW, OLD) == 1
    err = capsys.readouterr().err
    assert f"signing_keys.private_enc: row {mine.kid}" in err and f"face_templates.sealed: row {w['person']}" in err
    with engine.connect() as conn:
        sealed = conn.execute(sa.select(signing_keys.c.private_enc).where(signing_keys.c.kid == str(mine.kid))
                              ).scalar_one()
    assert DataCipher(NEW, [OLD]).sealed_key_id(sealed) == DataCipher(OLD).key_id
    keys.invalidate()
    assert str(mine.kid) not in {str(k.kid) for k in keys.public_key_set()}


def test_rekey_data_names_every_row_it_seals_again_and_refuses_a_key_row_no_rotation_wrote(
        engine: sa.Engine, cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 140, finding 1: before the mark (the rotation window) the old key's rows still open, so what its
    holder planted then is sealed again like any other: the run names every key row (kid, use, status, dates)
    and every face template (person) it seals again, and leaves a token key row whose dates no rotation
    writes (rotated out in the future, published past its rotation plus the publication period), exiting 1."""
    w = _world(engine, DataCipher(OLD))
    far = _plant_token_key(engine, OLD)
    long = _plant_token_key(engine, OLD, retired=-timedelta(hours=1))
    near = _plant_token_key(engine, OLD, retired=timedelta(0), published=timedelta(minutes=12))  # as rotate() would
    _plant_face(engine, OLD, w["person"], w["template"])
    assert cli(["keys", "rekey-data"], NEW, OLD) == 1
    captured = capsys.readouterr()
    refused = "signing_keys.private_enc: row {} refused: its dates are none a rotation writes: {}"
    assert refused.format(far.kid, "rotated out in the future") in captured.err
    assert refused.format(long.kid, "published until") in captured.err and "plus the publication period" in captured.err
    assert f"  signing_keys.private_enc: kid {near.kid} (sig ES256 retiring, created " in captured.out
    assert f"  signing_keys.private_enc: kid {w['retired']} (sig " in captured.out
    assert f"  face_templates.sealed: person {w['person']} (template {w['template']}" in captured.out
    with engine.connect() as conn:
        sealed = dict(conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_enc)).all())
    ring = DataCipher(NEW, [OLD])
    assert {ring.sealed_key_id(sealed[str(k.kid)]) for k in (far, long)} == {DataCipher(OLD).key_id}
    assert ring.is_current(sealed[str(near.kid)])


def test_an_audit_key_and_an_encryption_key_planted_after_rekey_data_are_not_ours(engine: sa.Engine, cli: Any,
                                                                                  service: Any) -> None:
    """Review 140, finding 1, the other stored keys: an audit key (he would sign the trail's checkpoints) and
    an upstream encryption key (upstreams would encrypt to it), sealed under the old key after the rekey:
    the audit key is not exported, the encryption key decrypts nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from joserfc.jwk import RSAKey

    from quaygate.schema import encryption_keys

    _world(engine, DataCipher(OLD))
    assert cli(["keys", "rekey-data"], NEW, OLD) == 0
    old, t = DataCipher(OLD), now()
    raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                     serialization.NoEncryption())
    rsa = RSAKey.generate_key(2048, parameters={"use": "enc", "alg": "RSA-OAEP-256", "kid": "planted-enc"})
    with engine.begin() as conn:
        conn.execute(signing_keys.insert().values(
            kid="audit-planted", alg="EdDSA", use="audit", public_jwk={}, status="active", created_at=t,
            private_enc=old.seal(raw, b"audit-planted")))
        conn.execute(encryption_keys.insert().values(
            kid="planted-enc", alg="RSA-OAEP-256", public_jwk=rsa.as_dict(private=False), status="retiring",
            private_enc=old.seal(json.dumps(rsa.as_dict(private=True)).encode(), b"planted-enc"),
            created_at=t, retired_at=t, publish_until=t + TEN_YEARS))
    c = service()
    jwks, ignored = export_public_key(engine, c.cipher)
    assert ignored == ["audit-planted"] and "audit-planted" not in {k["kid"] for k in jwks["keys"]}
    enc = EncryptionKeys(engine, c.cipher, overlap=timedelta(days=1))
    # Review 172, finding 3: a row that is not ours is neither published nor decrypted with (it raised
    # InvalidTag at the first upstream answer before; it was published meanwhile).
    assert enc.private_key("planted-enc", t) is None
    assert "planted-enc" not in {k["kid"] for k in enc.public_jwks(t)}
