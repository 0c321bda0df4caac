"""A capture's cost is bounded before any pixel is decoded (review 131, finding 2): small files claiming
big pictures (a 1 x 5,000,000 PNG of a few kB, a 2100 x 2100 PNG, a progressive JPEG with extra scans, a
lossless JPEG, a strip) are refused on their header alone (identity/face/header.py), in the service
before a face worker is given them (tests/test_face_api.py, tests/test_gate_face.py) and again in the
worker before Pillow decodes; the photos of real captures pass. And one terminal has at most its share
of the pool's jobs (``FacePool.per_owner``)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from concurrent.futures import Future
from typing import Any

import pytest
from PIL import Image

from identity.domain.face import QualityRules
from identity.face import engine, header
from identity.face.header import MAX_JPEG_SCANS, Header, ImageLimits
from identity.face.pool import ENROLMENTS, OFF_GATE, STEP_UP_OF, STEP_UPS, FacePool, FaceUnavailable
from tests.test_face_support import photo

LIMITS = ImageLimits()


def png(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


def jpeg(width: int, height: int, **kw: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(out, "JPEG", quality=10, **kw)
    return out.getvalue()


def more_scans(image: bytes, extra: int) -> bytes:
    """A progressive JPEG with ``extra`` copies of its smallest scans appended before EOI: each scan
    passes over every block of the picture (libjpeg warns of the bogus progression and decodes on)."""
    starts = [m.start() for m in re.finditer(b"\xff\xda", image)]
    scans = [image[a:b] for a, b in zip(starts, [*starts[1:], len(image) - 2], strict=True)]
    smallest = sorted(scans, key=len)[:3]
    return image[:starts[0]] + b"".join(scans) + b"".join((smallest * extra)[:extra]) + b"\xff\xd9"


def sequential_scans(width: int, height: int, components: int = 3, scans: int | None = None) -> bytes:
    """A baseline (SOF0) JPEG whose components come in separate scans, one each (T.81 A.2.2: a
    non-interleaved sequential JPEG), every block flat grey. Pillow cannot write one, so it is built by
    hand: one-symbol Huffman tables make each block two bits (DC difference 0, then EOB), so a picture
    of many pixels is a small file; libjpeg must buffer the whole picture's coefficients to join the
    scans, as for a progressive JPEG (review 154, finding 3). ``scans``: only the first so many scans
    (one: a single scan naming one of the frame's components, which libjpeg buffers whole all the same:
    review 165, finding 2)."""

    def segment(marker: int, body: bytes) -> bytes:
        return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body

    one_code = bytes((1,)) + bytes(15)  # a single code, one bit long ("0")
    frame = struct.pack(">BHHB", 8, height, width, components)
    frame += b"".join(bytes((c, 0x11, 0)) for c in range(1, components + 1))
    blocks = -(-width // 8) * -(-height // 8)
    bits = 2 * blocks
    data = bytes(bits // 8) + (bytes((0xFF >> (bits % 8),)) if bits % 8 else b"")  # padded with 1 bits
    out = b"\xff\xd8" + segment(0xDB, bytes(1) + bytes((1,)) * 64) + segment(0xC0, frame)
    out += segment(0xC4, bytes((0x00,)) + one_code + bytes((0,)) + bytes((0x10,)) + one_code + bytes((0,)))
    for c in range(1, (components if scans is None else scans) + 1):
        out += segment(0xDA, bytes((1, c, 0x00, 0, 63, 0))) + data
    return out + b"\xff\xd9"


def second_ihdr(image: bytes, width: int, height: int) -> bytes:
    """A PNG with a second IHDR after the first, claiming another size (Pillow takes the last)."""
    data = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + data + struct.pack(">I", zlib.crc32(b"IHDR" + data))
    return image[:33] + chunk + image[33:]


def bombs() -> dict[str, tuple[bytes, str]]:
    """Small files whose pictures cost a worker far more than a capture (module docstring)."""
    lossless = bytearray(jpeg(64, 64))
    at = lossless.index(b"\xff\xc0")
    lossless[at + 1] = 0xC3  # SOF3: lossless, never decoded reduced
    return {
        "strip png 1x5M": (png(1, 5_000_000), "image_too_large"),
        "png 2100x2100": (png(2100, 2100), "image_too_large"),
        "png 16-bit 2100x2100": (png(2100, 2100, "I;16"), "image_too_large"),
        "progressive jpeg 2100x2100": (jpeg(2100, 2100, progressive=True), "image_too_large"),
        "baseline jpeg in 3 scans 2100x2100": (sequential_scans(2100, 2100), "image_too_large"),
        "baseline jpeg in 4 scans 2100x2100": (sequential_scans(2100, 2100, 4), "image_too_large"),
        # one scan naming 1 of the frame's 4 (3) components: 156 kB, 309 MB (232 MB) of a worker to decode
        "baseline jpeg 6324x6324, one scan of 1 of 4 components": (sequential_scans(6324, 6324, 4, scans=1),
                                                                   "image_too_large"),
        "baseline jpeg 6324x6324, one scan of 1 of 3 components": (sequential_scans(6324, 6324, 3, scans=1),
                                                                   "image_too_large"),
        "png 5:1": (png(3000, 600), "image_unreadable"),
        "jpeg 5:1": (jpeg(5000, 1000), "image_unreadable"),
        "progressive jpeg with extra scans": (more_scans(jpeg(600, 600, progressive=True), 10), "image_unreadable"),
        "lossless jpeg": (bytes(lossless), "image_unreadable"),
        "jpeg without a frame": (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20, "image_unreadable"),
    }


@pytest.fixture(scope="module")
def bomb_files() -> dict[str, tuple[bytes, str]]:
    return bombs()


def test_the_bombs_are_small_files(bomb_files: dict[str, tuple[bytes, str]]) -> None:
    assert all(len(data) < 300_000 for data, _ in bomb_files.values())


@pytest.mark.parametrize("name", list(bombs()))
def test_a_costly_picture_is_refused_on_its_header(bomb_files: dict[str, tuple[bytes, str]], name: str) -> None:
    data, code = bomb_files[name]
    assert header.refusal(data, LIMITS) == code
    # and in the worker, before Pillow decodes anything
    with pytest.raises(ValueError, match=code):
        engine.decode(data, max_side=640, limits=LIMITS)


@pytest.mark.parametrize("name", ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png",
                                  "astronaut.png", "chelsea.png", "obama_partial_face.jpg"])
def test_real_captures_pass_the_header(name: str) -> None:
    got = header.read(photo(name))
    assert got.format == ("PNG" if name.endswith(".png") else "JPEG")
    assert header.judge(got, LIMITS) is None


def test_what_passes_the_header() -> None:
    # a baseline JPEG is decoded reduced: 40 Mpx claimed is fine; 2000 x 2000 PNG at the PNG limit;
    # libjpeg's own progressive JPEG (10 scans); exactly 4:1
    assert header.judge(Header("JPEG", 8000, 5000), LIMITS) is None
    assert header.judge(Header("JPEG", 8000, 5001), LIMITS) == "image_too_large"
    assert header.refusal(png(2000, 2000), LIMITS) is None
    progressive = jpeg(1000, 800, progressive=True)
    assert header.read(progressive) == Header("JPEG", 1000, 800, scans=10, progressive=True)
    assert header.refusal(more_scans(progressive, MAX_JPEG_SCANS - 10), LIMITS) is None
    assert header.refusal(more_scans(progressive, MAX_JPEG_SCANS - 9), LIMITS) == "image_unreadable"
    # a baseline JPEG in more than one scan is decoded whole, as a progressive one (review 154, finding 3)
    assert header.read(sequential_scans(2000, 2000)) == Header("JPEG", 2000, 2000, scans=3, partial=True)
    assert header.refusal(sequential_scans(2000, 2000), LIMITS) is None
    assert header.refusal(sequential_scans(2000, 2001), LIMITS) == "image_too_large"
    assert header.judge(Header("JPEG", 8000, 5000, scans=2), LIMITS) == "image_too_large"
    assert header.judge(Header("PNG", 400, 100), LIMITS) is None
    assert header.judge(Header("PNG", 100, 401), LIMITS) == "image_unreadable"
    assert header.judge(Header("PNG", 0, 100), LIMITS) == "image_unreadable"
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_png_pixels=0)


def test_the_hand_built_multi_scan_jpeg_is_one_libjpeg_decodes() -> None:
    for components in (3, 4):
        assert engine.decode(sequential_scans(72, 40, components), max_side=640, limits=LIMITS).shape == (40, 72, 3)
        # and one scan of one of its components (libjpeg leaves the others grey)
        one = sequential_scans(72, 40, components, scans=1)
        assert engine.decode(one, max_side=640, limits=LIMITS).shape == (40, 72, 3)


def test_a_scan_naming_fewer_components_than_the_frame_is_decoded_whole() -> None:
    """Review 165, finding 2: the header counted scans, not the components a scan names; libjpeg buffers
    the whole picture whenever a scan names fewer than the frame has, so such a file has the limit of the
    pictures decoded whole (4 Mpx), in one scan too."""
    assert header.read(sequential_scans(6324, 6324, 4, scans=1)) == Header("JPEG", 6324, 6324, partial=True)
    assert header.refusal(sequential_scans(2000, 2000, 4, scans=1), LIMITS) is None
    assert header.refusal(sequential_scans(2000, 2001, 4, scans=1), LIMITS) == "image_too_large"
    assert header.refusal(sequential_scans(8000, 5000, 1), LIMITS) is None  # grey: one scan names its one component
    assert header.judge(Header("JPEG", 8000, 5000, partial=True), LIMITS) == "image_too_large"


def test_the_worker_decodes_only_the_picture_judged() -> None:
    """A PNG whose first header says 100 x 100 and a second one more: Pillow reads the other size, which
    the worker refuses before decoding."""
    small = png(100, 100)
    assert engine.decode(small, max_side=640, limits=LIMITS).shape == (100, 100, 3)
    forged = second_ihdr(small, 3000, 3000)
    assert header.refusal(forged, LIMITS) is None  # the first header is all the service reads
    with pytest.raises(ValueError, match="image_unreadable"):
        engine.decode(forged, max_side=640, limits=LIMITS)
    assert engine.analyse(forged, QualityRules()).code == "image_unreadable"


def test_unreadable_headers() -> None:
    for data in (b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, b"\xff\xd8", b"\xff\xd8\xff\xd9",
                 b"\xff\xd8\xff\xe0\xff\xff", photo("obama.jpg")[:300]):
        assert header.refusal(data, LIMITS) == "image_unreadable", data[:12]


# ---- one terminal's share of the pool ------------------------------------------------------------


class _Held:
    """An executor whose jobs stay in flight until released: admission alone is under test."""

    def __init__(self) -> None:
        self.jobs: list[Future[Any]] = []

    def submit(self, *_: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.jobs.append(future)
        return future


def test_one_terminal_has_at_most_its_share_of_the_pool() -> None:
    pool = FacePool(1, queue_per_worker=4)
    held = _Held()
    pool._executor = held  # type: ignore[assignment]
    assert (pool.limit, pool.per_owner) == (4, 2)
    pool.submit(b"a", "gate:A")
    pool.submit(b"b", "gate:A")
    with pytest.raises(FaceUnavailable) as busy:
        pool.submit(b"c", "gate:A")  # its share is taken
    assert busy.value.code == "face_busy"
    pool.submit(b"d", "gate:B")  # another terminal still gets in
    pool.submit(b"e")  # and work of no terminal
    with pytest.raises(FaceUnavailable):
        pool.submit(b"f", "gate:C")  # the pool's own limit
    held.jobs[0].set_result(None)  # one of A's jobs ends
    pool.submit(b"g", "gate:A")
    for job in held.jobs[1:]:
        job.set_result(None)
    assert pool._owners == {} and pool._in_flight == 0
    assert FacePool(2, queue_per_worker=4, per_owner=3).per_owner == 3
    assert FacePool(1, queue_per_worker=2, per_owner=9).per_owner == 2  # never above the pool's limit
    with pytest.raises(ValueError):
        FacePool(1, per_owner=-1)


def test_the_step_ups_and_the_enrolments_never_take_the_gate_s_half_of_the_pool() -> None:
    """Review 154, finding 2: step-ups had no share, so an accomplice's step-ups from many addresses filled
    the pool and every gate capture was face_busy. Now all work not a gate's has half the pool, the
    step-ups and the enrolments a quarter each within it, one person's step-ups two at a time."""
    pool = FacePool(4, queue_per_worker=4)
    held = _Held()
    pool._executor = held  # type: ignore[assignment]
    assert (pool.limit, pool.off_gate, pool.step_ups, pool.enrolments, pool.step_ups_per_person) == (16, 8, 4, 4, 2)
    accomplice, other = (STEP_UPS, f"{STEP_UP_OF}a", OFF_GATE), (STEP_UPS, f"{STEP_UP_OF}b", OFF_GATE)
    pool.submit(b"a", accomplice)
    pool.submit(b"a", accomplice)
    with pytest.raises(FaceUnavailable):
        pool.submit(b"a", accomplice)  # one person: two at a time
    pool.submit(b"b", other)
    pool.submit(b"b", other)
    with pytest.raises(FaceUnavailable):
        pool.submit(b"c", (STEP_UPS, f"{STEP_UP_OF}c", OFF_GATE))  # the step-ups' share is taken
    for _ in range(4):
        pool.submit(b"e", (ENROLMENTS, OFF_GATE))
    with pytest.raises(FaceUnavailable):
        pool.submit(b"g", (ENROLMENTS, OFF_GATE))
    for n in range(8):  # the gate's half is whole
        pool.submit(b"h", (f"gate:{n % 2}",))
    assert pool._in_flight == pool.limit
    for job in held.jobs:
        job.set_result(None)
    assert pool._owners == {} and pool._in_flight == 0
    # the smallest pools: one or two jobs
    two = FacePool(1, queue_per_worker=2)
    two._executor = _Held()  # type: ignore[assignment]
    assert (two.off_gate, two.step_ups, two.enrolments, two.step_ups_per_person) == (1, 1, 1, 1)
    two.submit(b"a", accomplice)
    with pytest.raises(FaceUnavailable):
        two.submit(b"b", (ENROLMENTS, OFF_GATE))
    two.submit(b"c", ("gate:A",))
