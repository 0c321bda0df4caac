"""Crafted PNGs that make Pillow raise something else than its usual errors are unreadable captures
(review 165, finding 1): an iCCP chunk after IDAT holding only ``b"x\\x00"`` (Pillow's ``load_end``:
IndexError) and a chunk type that is not ASCII (UnicodeDecodeError, a ValueError, where face_recognition's
import had turned Pillow's chunk-type check off in every worker). Both were a 500 at the step-up, the
enrolment (a 422 whose code was the exception's text) and the gate, and no step-up attempt was counted.
Now ``image_unreadable`` everywhere, counted against the person's allowance of unusable captures, on the
full app with the real face worker, on SQLite and PostgreSQL."""
# ruff: noqa: F811 - ``env`` and ``shared_pool`` are test_face_api's fixtures, imported and requested by name

from __future__ import annotations

import io
import logging
import struct
import zlib
from typing import Any

import pytest
from PIL import Image, ImageFile

from identity.domain.face import QualityRules
from identity.face import engine, face_for
from identity.face.engine import Analysis
from quaygate.app import IdentityFaceMatcher
from release_service.ports import FaceCaptureRefused
from tests.test_face_api import (  # noqa: F401
    _enrol,
    _kinds,
    _office,
    _problem,
    _session,
    _step_up,
    b64,
    env,
    shared_pool,
)
from tests.test_face_support import photo
from tests.test_identity_grants_support import Lifecycle


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunks(image: bytes) -> list[bytes]:
    """A PNG's chunks, whole (length, type, data, CRC), after the signature."""
    pos, found = 8, []
    while pos < len(image):
        length = struct.unpack(">I", image[pos:pos + 4])[0]
        found.append(image[pos:pos + 12 + length])
        pos += 12 + length
    return found


def inserted(image: bytes, extra: bytes, before: bytes) -> bytes:
    """``image`` (a PNG) with the chunks ``extra`` before its first chunk of type ``before``."""
    found = chunks(image)
    at = [c[4:8] for c in found].index(before)
    return image[:8] + b"".join(found[:at]) + extra + b"".join(found[at:])


def grey_png(width: int = 64, height: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(out, "PNG")
    return out.getvalue()


def crafted() -> dict[str, bytes]:
    """The two PNGs of the finding, each a valid picture but for one chunk."""
    return {
        "iCCP after IDAT": inserted(grey_png(), chunk(b"iCCP", b"x\x00"), b"IEND"),  # IndexError in load_end
        "non-ASCII chunk type": inserted(grey_png(), chunk(b"\xe9\xe9\xe9\xe9", b""), b"IDAT"),
    }


CASES = list(crafted())


# ---- the engine, in this process ------------------------------------------------------------------


def test_the_face_library_leaves_pillow_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """face_recognition sets ImageFile.LOAD_TRUNCATED_IMAGES when imported; the engine sets it back, so a
    worker that loaded the models still refuses truncated files and bad chunk types."""
    if not engine.available():
        pytest.skip("face_recognition is not installed")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as face_recognition's import left it
    engine._face_recognition()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("truncated", [False, True], ids=["strict", "truncated images loaded"])
@pytest.mark.parametrize("name", CASES)
def test_a_crafted_png_is_unreadable(monkeypatch: pytest.MonkeyPatch, name: str, truncated: bool) -> None:
    """Whatever Pillow raises on the file, and whatever its settings, decoding says image_unreadable."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated)
    data = crafted()[name]
    with pytest.raises(ValueError, match="^image_unreadable$"):
        engine.decode(data, max_side=640)
    assert engine.analyse(data, QualityRules()) == Analysis(code="image_unreadable")


def test_analyse_names_only_capture_codes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def raising(*_: Any, **__: Any) -> Any:
        raise ValueError("'ascii' codec can't decode byte 0xe9")

    monkeypatch.setattr(engine, "decode", raising)
    with caplog.at_level(logging.WARNING, logger="identity.face.engine"):
        assert engine.analyse(b"anything", QualityRules()).code == "image_unreadable"
    assert "identity.face.decode.failed" in caplog.text and "0xe9" not in caplog.text


# ---- on the full app, with the real worker ------------------------------------------------------------


def test_a_crafted_png_at_the_step_up_is_unreadable_and_counted(env: Lifecycle) -> None:
    """A 4xx image_unreadable, an audited refusal, and counted: past the person's allowance of unusable
    captures, 429 (it was a 500 each time, and never counted: review 165, finding 1)."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    service = face_for(env.app)
    service.bad_captures = 3
    cookie = _session(env, person)
    files = crafted()
    for name in (*CASES, CASES[0]):
        _problem(_step_up(env, cookie, files[name]), 422, "image_unreadable")
    _problem(_step_up(env, cookie, files[CASES[1]]), 429, "rate_limited")
    refused = [d["reason"] for k, d in _kinds(env) if k == "identity.face.verify.refused"]
    assert refused == ["image_unreadable"] * 3


def test_a_crafted_png_at_the_enrolment_is_unreadable(env: Lifecycle) -> None:
    person = env.person()
    for data in crafted().values():
        _problem(env.http.post(f"/admin/v1/persons/{person}/face", json={"image": b64(data)},
                               headers=_office(env)), 422, "image_unreadable")
    assert [d["code"] for k, d in _kinds(env) if k == "identity.face.enrol.refused"] == ["image_unreadable"] * 2


@pytest.mark.parametrize("name", CASES)
def test_a_crafted_png_at_the_gate_is_a_refused_capture(env: Lifecycle, name: str) -> None:
    """The gate's matcher (quaygate.app) refuses the capture as unusable, as any unreadable image: the
    gate answers 422 image_unreadable (tests/test_gate_face.py), never a 500."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    matcher = IdentityFaceMatcher(env.app)
    with pytest.raises(FaceCaptureRefused) as refused:
        matcher.match(person, crafted()[name], tolerance=0.5,
                      context={"terminal": "BEANR-K1700", "request_id": "r-1", "mode": "commit"})
    assert refused.value.code == "image_unreadable"
    # the same matcher still matches a real capture
    assert matcher.match(person, photo("obama2.jpg"), tolerance=0.5,
                         context={"terminal": "BEANR-K1700", "request_id": "r-2", "mode": "commit"}).matched


def test_a_code_the_service_does_not_know_is_an_unreadable_capture(env: Lifecycle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a worker answers, the service answers with its own codes: an unknown one is image_unreadable
    at the gate, the step-up and the enrolment (the audit entry's code too)."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    service = face_for(env.app)
    monkeypatch.setattr(service._pool, "analyse_blocking", lambda *_: Analysis(code="Truncated IHDR chunk"))

    async def analysed(*_: Any) -> Analysis:
        return Analysis(code="Truncated IHDR chunk")

    monkeypatch.setattr(service._pool, "analyse", analysed)
    match = service.verify_face_blocking(person, photo("obama2.jpg"))
    assert (match.matched, match.reason) == (False, "image_unreadable")
    _problem(_step_up(env, _session(env, person), "obama2.jpg"), 422, "image_unreadable")
    _problem(_enrol(env, env.person()), 422, "image_unreadable")
    assert [d["code"] for k, d in _kinds(env) if k == "identity.face.enrol.refused"] == ["image_unreadable"]
