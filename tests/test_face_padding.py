"""A real photo padded with markers or chunks is refused on its header (review 165, finding 3): 0xFF fill
bytes, empty COM segments or standalone markers before a JPEG's first scan, or thousands of empty private
chunks in a PNG, passed the header check and still matched, at about 35 times a capture's cost, in a face
worker (Pillow walks them one by one in Python) and, for the header check itself, on the service's event
loop. Now the header walk refuses such files (image_unreadable, at the service and in the worker) after a
bounded walk, and runs in a thread with the rest of the preparation, never on the event loop. The real
photos still pass. No timed assertions: the cost is bounded by what is walked."""
# ruff: noqa: F811 - ``env`` and ``shared_pool`` are test_face_api's fixtures, imported and requested by name

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from PIL import Image

from identity.face import engine, face_for, header
from identity.face.header import MAX_JPEG_FILL, MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS, MAX_PNG_CHUNKS_BEFORE_IDAT
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
from tests.test_face_crafted_images import chunk, chunks, inserted
from tests.test_face_image_cost import LIMITS
from tests.test_face_support import photo
from tests.test_identity_grants_support import Lifecycle


def filled(image: bytes, n: int) -> bytes:
    """A JPEG with ``n`` 0xFF fill bytes before its second marker (T.81 B.1.1.2 allows any number)."""
    return image[:2] + b"\xff" * n + image[2:]


def commented(image: bytes, n: int) -> bytes:
    """A JPEG with ``n`` empty COM segments (4 bytes each) after SOI."""
    return image[:2] + b"\xff\xfe\x00\x02" * n + image[2:]


def before_idat(image: bytes) -> int:
    """How many chunks a PNG has before its first IDAT (IHDR included)."""
    return [c[4:8] for c in chunks(image)].index(b"IDAT")


def private_chunks(image: bytes, n: int, before: bytes = b"IDAT") -> bytes:
    """A PNG with ``n`` empty private chunks (12 bytes each) before its first chunk of type ``before``."""
    return inserted(image, chunk(b"prVt", b"") * n, before)


def padded() -> dict[str, bytes]:
    """obama.jpg and 32bit.png (a face that matches), padded as the review did, to about 1 MB here."""
    jpeg, png = photo("obama.jpg"), photo("32bit.png")
    return {
        "jpeg, 0xFF fill bytes": filled(jpeg, 1_000_000),
        "jpeg, a few more fill bytes than allowed": filled(jpeg, MAX_JPEG_FILL + 1),
        "jpeg, empty COM segments": commented(jpeg, 250_000),
        "jpeg, a segment more than allowed": commented(jpeg, MAX_JPEG_SEGMENTS),
        "jpeg, a restart marker before the scan": jpeg[:2] + b"\xff\xd0" + jpeg[2:],
        "jpeg, a TEM marker before the scan": jpeg[:2] + b"\xff\x01" + jpeg[2:],
        "png, private chunks before IDAT": private_chunks(png, 80_000),
        "png, a chunk more than allowed before IDAT": private_chunks(png, MAX_PNG_CHUNKS_BEFORE_IDAT + 1
                                                                     - before_idat(png)),
        "png, private chunks after IDAT": private_chunks(png, 80_000, before=b"IEND"),
        "png, a chunk runs past the end": png[:-12] + b"\x00\x00\x10\x00tEXt" + png[-12:],
    }


@pytest.fixture(scope="module")
def padded_files() -> dict[str, bytes]:
    return padded()


@pytest.mark.parametrize("name", list(padded()))
def test_a_padded_photo_is_refused_on_its_header(padded_files: dict[str, bytes], name: str) -> None:
    data = padded_files[name]
    assert header.refusal(data, LIMITS) == "image_unreadable"
    with pytest.raises(ValueError, match="^image_unreadable$"):  # and in the worker, before Pillow
        engine.decode(data, max_side=640, limits=LIMITS)


def test_what_the_walk_still_takes() -> None:
    """Up to the limits, a padded photo is still a photo: a few fill bytes, some segments, some chunks,
    and a PNG written in many small IDAT chunks."""
    jpeg, png = photo("obama.jpg"), photo("32bit.png")
    walked = 10  # obama.jpg's own markers up to its scan, SOS included
    for data in (filled(jpeg, MAX_JPEG_FILL), commented(jpeg, MAX_JPEG_SEGMENTS - walked),
                 private_chunks(png, MAX_PNG_CHUNKS_BEFORE_IDAT - before_idat(png)),
                 private_chunks(png, 500, before=b"IEND")):
        assert header.refusal(data, LIMITS) is None
        assert engine.decode(data, max_side=640, limits=LIMITS).shape[2] == 3
    assert header.refusal(commented(jpeg, MAX_JPEG_SEGMENTS - walked + 1), LIMITS) == "image_unreadable"
    # 1000 x 1000 noise (1.5 MB) in IDAT chunks of 512 bytes (libpng writes 8 kB): some 2900, under the bound
    out = io.BytesIO()
    Image.effect_noise((1000, 1000), 64).convert("RGB").save(out, "PNG", compress_level=1)
    whole = out.getvalue()
    ihdr, idat, iend = chunks(whole)[0], [c for c in chunks(whole) if c[4:8] == b"IDAT"], chunks(whole)[-1]
    data = b"".join(c[8:-4] for c in idat)
    small = b"".join(chunk(b"IDAT", data[i:i + 512]) for i in range(0, len(data), 512))
    many = whole[:8] + ihdr + small + iend
    assert MAX_PNG_CHUNKS // 2 < len(chunks(many)) <= MAX_PNG_CHUNKS
    assert header.refusal(many, LIMITS) is None
    assert engine.decode(many, max_side=640, limits=LIMITS).shape == (640, 640, 3)
    empty = whole[:8] + ihdr + chunk(b"IDAT", b"") * MAX_PNG_CHUNKS + b"".join(idat) + iend
    assert header.refusal(empty, LIMITS) == "image_unreadable"


@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "obama_partial_face.jpg",
                                  "32bit.png", "astronaut.png", "chelsea.png"])
def test_the_real_photos_pass_the_walk(name: str) -> None:
    assert header.refusal(photo(name), LIMITS) is None


# ---- on the full app: refused before a worker, and judged off the event loop --------------------------


def _on_loop(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each header judged in this process from now on: whether it ran on an event loop's thread."""
    real, seen = header.refusal, []

    def judged(image: bytes, limits: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            seen.append(False)
        else:
            seen.append(True)
        return real(image, limits)

    monkeypatch.setattr(header, "refusal", judged)
    return seen


def test_a_padded_photo_is_refused_at_the_step_up_and_the_enrolment_off_the_event_loop(
    env: Lifecycle, monkeypatch: pytest.MonkeyPatch, padded_files: dict[str, bytes]
) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    seen = _on_loop(monkeypatch)
    service = face_for(env.app)
    service.bad_captures = 2
    cookie = _session(env, person)
    _problem(_step_up(env, cookie, padded_files["jpeg, empty COM segments"]), 422, "image_unreadable")
    _problem(_step_up(env, cookie, padded_files["png, private chunks before IDAT"]), 422, "image_unreadable")
    _problem(_step_up(env, cookie, "obama2.jpg"), 429, "rate_limited")  # two unusable captures: the allowance
    other = env.person()
    _problem(env.http.post(f"/admin/v1/persons/{other}/face", headers=_office(env),
                           json={"image": b64(padded_files["jpeg, 0xFF fill bytes"])}), 422, "image_unreadable")
    assert [d["code"] for k, d in _kinds(env) if k == "identity.face.enrol.refused"] == ["image_unreadable"]
    assert _enrol(env, other, "obama.jpg").status_code == 201
    # the step-up's and the enrolments' headers, judged in a thread, never on the event loop
    assert seen == [False] * 4
