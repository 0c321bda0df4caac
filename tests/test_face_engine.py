"""The face engine on real photos of real people (fetched from registry packages at test time), the
worker pool, and template sealing."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from identity.domain.face import DEFAULT_TOLERANCE, QualityRules, decide
from identity.face import engine, start_pool
from identity.face.pool import FacePool, FaceUnavailable, workers_for
from identity.face.sealing import TemplateUnreadable, open_template, seal_template
from quaygate.crypto import DataCipher
from quaygate.settings import Settings
from tests.test_face_support import blurred, photo, side_by_side

RULES = QualityRules()


def analyse(image: bytes) -> engine.Analysis:
    return engine.analyse(image, RULES)


@pytest.fixture(scope="module")
def obama() -> tuple[float, ...]:
    found = analyse(photo("obama.jpg"))
    assert found.code is None and found.encoding is not None
    return found.encoding


@pytest.mark.parametrize("name", ["obama2.jpg", "32bit.png", "obama_partial_face.jpg"])
def test_the_same_person_across_photos_is_accepted(obama: tuple[float, ...], name: str) -> None:
    live = analyse(photo(name))
    assert live.code is None and live.encoding is not None
    match = decide(live.encoding, obama, DEFAULT_TOLERANCE, source="id_photo")
    assert match.matched, match
    assert match.distance is not None and match.distance < 0.45


@pytest.mark.parametrize("name", ["biden.jpg", "astronaut.png"])
def test_different_people_are_rejected(obama: tuple[float, ...], name: str) -> None:
    live = analyse(photo(name))
    assert live.code is None and live.encoding is not None
    match = decide(live.encoding, obama, 0.6, source="id_photo")  # even at the loosest tolerance a terminal may set
    assert not match.matched and match.reason == "face_mismatch"
    assert match.distance is not None and match.distance > 0.75


def test_a_photo_without_a_face_is_refused() -> None:
    found = analyse(photo("chelsea.png"))  # a cat
    assert (found.code, found.faces, found.encoding) == ("face_not_found", 0, None)


@pytest.mark.parametrize(("left", "right"), [("obama.jpg", "biden.jpg"), ("biden.jpg", "obama2.jpg"),
                                            ("obama2.jpg", "biden.jpg")])
def test_a_photo_with_two_faces_is_refused(left: str, right: str) -> None:
    found = analyse(side_by_side(left, right))
    assert found.code == "face_multiple" and found.faces >= 2 and found.encoding is None


def test_a_small_face_is_refused() -> None:
    found = analyse(photo("obama3.jpg"))  # the face is 72 px high at the analysed scale
    assert found.code == "face_too_small" and found.face_px is not None and found.face_px < RULES.min_face_px
    assert found.encoding is None


def test_a_blurred_face_is_refused() -> None:
    found = analyse(blurred("obama.jpg", radius=4))
    assert found.code == "face_blurred" and found.encoding is None
    assert found.sharpness is not None and found.sharpness < RULES.min_sharpness
    sharp = analyse(photo("obama.jpg"))
    assert sharp.sharpness is not None and sharp.sharpness > 2 * RULES.min_sharpness


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_unreadable_and_oversized_images_are_refused_before_decoding() -> None:
    assert analyse(b"not an image").code == "image_unreadable"
    assert analyse(photo("obama.jpg")[:300]).code == "image_unreadable"  # truncated
    # small files claiming huge pictures (decompression bombs): over our limit, over Pillow's warning
    # threshold (89 Mpx) and over its refusal threshold
    assert analyse(_png_header(8_000, 6_000)).code == "image_too_large"
    assert analyse(_png_header(10_000, 10_000)).code == "image_too_large"
    assert analyse(_png_header(100_000, 100_000)).code == "image_too_large"


def _as(name: str, fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(photo(name))).convert("RGB").save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF", "WEBP", "PPM"])
def test_only_jpeg_and_png_are_decoded(fmt: str) -> None:
    """Pillow reads dozens of formats; the API takes JPEG and PNG (docs/face.md), and every other
    decoder is attack surface reachable from a login session and a gate lane: refused unread."""
    assert analyse(_as("obama.jpg", fmt)).code == "image_unreadable"
    with pytest.raises(ValueError, match="image_unreadable"):
        engine.decode(_as("obama.jpg", fmt), max_side=640)
    assert analyse(_as("obama.jpg", "JPEG")).code is None
    assert analyse(_as("obama.jpg", "PNG")).code is None


def test_exif_orientation_is_applied() -> None:
    from PIL import Image

    sideways = Image.open(io.BytesIO(photo("obama2.jpg"))).convert("RGB").rotate(-90, expand=True)
    plain = io.BytesIO()
    sideways.save(plain, "JPEG")
    assert analyse(plain.getvalue()).code == "face_not_found"  # HOG finds upright faces only
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: what a phone held sideways writes
    tagged = io.BytesIO()
    sideways.save(tagged, "JPEG", exif=exif.tobytes())
    assert analyse(tagged.getvalue()).code is None


def test_big_photos_are_downscaled_before_detection() -> None:
    pixels = engine.decode(photo("obama3.jpg"), max_side=640)  # 1434 x 2333
    assert max(pixels.shape[:2]) == 640


# ---- sealing ------------------------------------------------------------------------------------


def test_a_sealed_template_opens_only_for_its_person_and_enrolment(obama: tuple[float, ...]) -> None:
    cipher = DataCipher(b"k" * 32)
    person, template = uuid.uuid4(), uuid.uuid4()
    sealed = seal_template(cipher, person, template, obama)
    assert open_template(cipher, person, template, sealed) == obama
    assert struct.pack("<128d", *obama) not in sealed.encode()
    with pytest.raises(TemplateUnreadable):
        open_template(cipher, uuid.uuid4(), template, sealed)  # copied onto another person
    with pytest.raises(TemplateUnreadable):
        open_template(cipher, person, uuid.uuid4(), sealed)  # an old enrolment restored
    with pytest.raises(TemplateUnreadable):
        open_template(DataCipher(b"x" * 32), person, template, sealed)  # another data key
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(TemplateUnreadable):
        open_template(cipher, person, template, tampered)
    with pytest.raises(ValueError):
        seal_template(cipher, person, template, obama[:127])


# ---- the pool -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[FacePool]:
    p = FacePool(1, queue_per_worker=2)
    assert all(f.result(timeout=120) for f in p.warm_up())
    yield p
    p.close()


def test_the_pool_analyses_in_a_worker_process(pool: FacePool, obama: tuple[float, ...]) -> None:
    with ThreadPoolExecutor(1) as one:  # a loop of its own: the main thread may have one running already
        found = one.submit(asyncio.run, pool.analyse(photo("obama.jpg"))).result()
    assert found.code is None and found.encoding == obama  # the same encoding as in this process
    assert pool.analyse_blocking(photo("chelsea.png")).code == "face_not_found"


def test_the_pool_refuses_work_beyond_its_queue(pool: FacePool) -> None:
    image = photo("obama2.jpg")
    futures = [pool.submit(image) for _ in range(pool.limit)]
    with pytest.raises(FaceUnavailable) as refused:
        pool.submit(image)
    assert refused.value.code == "face_busy"
    assert all(f.result(timeout=120).code is None for f in futures)
    pool.analyse_blocking(image)  # admitted again once the queue drained


def test_a_closed_pool_is_unavailable() -> None:
    p = FacePool(1)
    p.close()
    with pytest.raises(FaceUnavailable) as closed:
        p.submit(b"x")
    assert closed.value.code == "face_unavailable"


def test_pool_size() -> None:
    assert workers_for(3) == 3
    assert workers_for(0) >= 1
    with pytest.raises(ValueError):
        workers_for(-1)


def test_the_lifespan_pool_warms_up_only_with_background_workers(tmp_path: Path) -> None:
    quiet = start_pool(Settings(var_dir=tmp_path, face_workers=1, background_workers=False))
    assert quiet._executor is None  # no process until the first capture: test apps stay cheap
    quiet.close()
    warm = start_pool(Settings(var_dir=tmp_path, face_workers=1, background_workers=True))
    try:
        assert warm._executor is not None and warm.workers == 1 and warm.limit == 4
        assert warm.analyse_blocking(photo("chelsea.png")).code == "face_not_found"
    finally:
        warm.close()


def test_a_dead_worker_gives_face_unavailable_then_a_fresh_pool() -> None:
    p = FacePool(1)
    try:
        assert all(f.result(timeout=120) for f in p.warm_up())
        assert p._executor is not None
        [pid] = list(p._executor._processes)  # our own worker process
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(FaceUnavailable) as dead:
            p.analyse_blocking(photo("chelsea.png"))
        assert dead.value.code == "face_unavailable"
        assert p.analyse_blocking(photo("chelsea.png")).code == "face_not_found"  # rebuilt
    finally:
        p.close()
