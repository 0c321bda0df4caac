"""Review 172, finding 3: our upstream (itsme) encryption keys were published from the stored ``public_jwk``
column, unchecked, and a retiring key until whatever ``publish_until`` said. An insider with write access to the
table (and no data key) published his own RSA key, under his kid for ten years or under ours, and the upstreams
encrypted id tokens and userinfo (national register data) to him. Now, as for the token signing keys (review
132, identity.keys): a key is published only when its sealed private half opens under the data key, names its
kid and gives the row's public key, the published key being the one derived from it; a retiring key at most
until its rotation plus the overlap. And ``keys rotate --encryption`` under another data key refuses (review
172, finding 2's rule)."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jwe
from joserfc.jwe import JWERegistry
from joserfc.jwk import RSAKey

from identity.broker.keys import ALG, EncryptionKeys
from quaygate.cli import main
from quaygate.crypto import DataCipher
from quaygate.schema import encryption_keys
from tests.test_identity_support import utcnow

OURS = DataCipher(b"\x03" * 32)
OVERLAP = timedelta(hours=1)
TEN_YEARS = timedelta(days=3650)
_JWE = JWERegistry(algorithms=[ALG, "A256GCM"])


def _his_key(kid: str | None = None) -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"use": "enc", "alg": ALG, **({"kid": kid} if kid else {})})
    key.ensure_kid()
    return key


def _published(keys: EncryptionKeys, at: Any) -> dict[str, dict[str, Any]]:
    return {k["kid"]: k for k in keys.public_jwks(at)}


def _row(kid: str, key: RSAKey, at: Any, **values: Any) -> dict[str, Any]:
    return {"kid": kid, "alg": ALG, "public_jwk": key.as_dict(private=False), "private_enc": "AQ",
            "status": "retiring", "created_at": at, "retired_at": at, "publish_until": at + TEN_YEARS, **values}


def _decrypts(keys: EncryptionKeys, published: dict[str, Any], at: Any) -> bool:
    """What an upstream encrypts to the published key, we decrypt with the private key of that kid."""
    to = RSAKey.import_key(published)
    token = jwe.encrypt_compact({"alg": ALG, "enc": "A256GCM", "kid": published["kid"]}, b"national register", to,
                                 registry=_JWE)
    private = keys.private_key(published["kid"], at)
    return private is not None and jwe.decrypt_compact(token, private, registry=_JWE).plaintext == b"national register"


def test_a_row_written_into_the_table_is_never_published(engine: sa.Engine) -> None:
    now = utcnow()
    keys = EncryptionKeys(engine, OURS, overlap=OVERLAP)
    ours = keys.ensure_active(now)
    his, other = _his_key(), _his_key()
    sealed = _sealed(engine, ours)
    with engine.begin() as conn:
        # His own key, retiring, "published" ten years; a genuine sealed half copied under his kid (the kid is
        # its associated data: it does not open); a sealed half of his own key that opens nowhere.
        conn.execute(encryption_keys.insert().values(**_row(str(his.kid), his, now)))
        conn.execute(encryption_keys.insert().values(**_row(str(other.kid), other, now, private_enc=sealed)))
    keys.invalidate()
    for at in (now, now + timedelta(days=365)):
        published = _published(keys, at)
        assert set(published) == {ours}, at
        assert _decrypts(keys, published[ours], at)
    assert keys.private_key(str(his.kid), now) is None and keys.private_key(str(other.kid), now) is None


def test_our_kid_with_his_public_key_publishes_nothing_of_his(engine: sa.Engine) -> None:
    now = utcnow()
    keys = EncryptionKeys(engine, OURS, overlap=OVERLAP)
    ours = keys.ensure_active(now)
    genuine_n = _published(keys, now)[ours]["n"]
    his = _his_key(ours)
    with engine.begin() as conn:
        conn.execute(encryption_keys.update().where(encryption_keys.c.kid == ours)
                     .values(public_jwk=his.as_dict(private=False)))
    keys.invalidate()
    published = _published(keys, now)
    assert his.as_dict()["n"] not in {k["n"] for k in published.values()}
    assert ours not in published  # the row is not ours any more: neither published nor used
    # A restart (ensure_active) counts it for nothing: a key of ours takes its place, published, decrypting.
    restarted = EncryptionKeys(engine, OURS, overlap=OVERLAP)
    fresh = restarted.ensure_active(now + timedelta(seconds=1))
    assert fresh != ours
    published = _published(restarted, now + timedelta(seconds=1))
    assert set(published) == {fresh} and published[fresh]["n"] not in {his.as_dict()["n"], genuine_n}
    assert _decrypts(restarted, published[fresh], now + timedelta(seconds=1))


def test_a_retiring_keys_publication_is_capped_at_its_rotation_plus_the_overlap(engine: sa.Engine) -> None:
    now = utcnow()
    keys = EncryptionKeys(engine, OURS, overlap=OVERLAP)
    first = keys.ensure_active(now)
    second = keys.rotate(now)
    with engine.begin() as conn:  # an insider stretches the old key's publication to ten years
        conn.execute(encryption_keys.update().where(encryption_keys.c.kid == first)
                     .values(publish_until=now + TEN_YEARS))
    keys.invalidate()
    assert set(_published(keys, now + OVERLAP - timedelta(seconds=1))) == {first, second}
    assert set(_published(keys, now + OVERLAP + timedelta(seconds=1))) == {second}
    assert set(_published(keys, now + timedelta(days=365))) == {second}
    assert keys.private_key(first, now + OVERLAP + timedelta(seconds=1)) is None


def _sealed(engine: sa.Engine, kid: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(encryption_keys.c.private_enc).where(encryption_keys.c.kid == kid))
                   .scalar_one())


def _table(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(encryption_keys).order_by(encryption_keys.c.kid))]


def test_keys_rotate_encryption_under_another_data_key_refuses_and_writes_nothing(
        engine: sa.Engine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", database_url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    assert main(["keys", "rotate", "--encryption"]) == 0 and main(["keys", "rotate", "--encryption"]) == 0
    before = _table(engine)
    capsys.readouterr()
    monkeypatch.setenv("QUAYGATE_DATA_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))
    code = main(["keys", "rotate", "--encryption"])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "nothing changed" in err and "opens none" in err and "Traceback" not in err and "is active" not in out
    assert _table(engine) == before
