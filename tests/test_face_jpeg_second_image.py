"""A JPEG carrying a second picture after its main image's EOI is judged as its main image (a bug older than
review 165, on the line its finding 2 touched): the header counted the SOS markers to the end of the file,
so a phone's photo with a gain map appended (Ultra HDR on Android 14, an MPF gain map, an MPO's second
frame) read as two scans, and a 12 Mpx photo was refused image_too_large under the 4 Mpx limit of the
multi-scan JPEGs (or image_unreadable, more than 16 scans, when both are progressive). Now the walk skips
each scan's entropy-coded data to its next marker (not a stuffed FF00, a fill FF or a restart marker),
walks the segments by their lengths and counts the scans to the main image's EOI; what follows is
ignored, as Pillow ignores it (it decodes the first picture only). An FF D9 inside a segment is no EOI:
scans after it are counted (libjpeg decodes them)."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from PIL import Image

from identity.face import engine, header
from identity.face.header import MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, Header
from tests.test_face_image_cost import LIMITS, sequential_scans
from tests.test_face_support import photo

RED, BLUE = (200, 30, 30), (10, 10, 250)


def _jpeg(size: tuple[int, int], colour: tuple[int, int, int], **kw: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", **kw)
    return out.getvalue()


def _mpo(main: tuple[int, int], second: tuple[int, int]) -> bytes:
    """A multi-picture file as Pillow writes one (CIPA DC-007): an APP2 MPF index in the first picture,
    the second picture after its EOI."""
    out = io.BytesIO()
    Image.new("RGB", main, RED).save(out, "MPO", save_all=True, append_images=[Image.new("RGB", second, BLUE)])
    return out.getvalue()


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def _scan(image: bytes) -> bytes:
    """The first scan of a hand-built JPEG: its SOS segment and entropy-coded data, to its EOI."""
    return image[image.index(b"\xff\xda"):-2]


def _hidden(image: bytes, holder: int, scans: int = 1) -> bytes:
    """``image`` with a segment (``holder``) holding an FF D9 pair after its scan, then ``scans`` more copies
    of the scan: a walk that took the first FF D9 for the EOI would count none of them."""
    fake = _segment(holder, b"\x00\xff\xd9\xff\xd9" + bytes(8))
    return image[:-2] + fake + _scan(image) * scans + b"\xff\xd9"


def test_a_phone_photo_with_a_picture_after_its_eoi_is_judged_as_its_main_image() -> None:
    """A 12 Mpx baseline photo, in one scan, with a gain map appended (Ultra HDR) or in an MPO."""
    photo_12mpx = _jpeg((4000, 3000), (90, 90, 90))
    gain_map = _jpeg((1000, 750), (128, 128, 128))
    for data in (photo_12mpx + gain_map, photo_12mpx + _jpeg((1000, 750), BLUE, progressive=True),
                 _mpo((4000, 3000), (1000, 750))):
        assert header.read(data) == Header("JPEG", 4000, 3000, scans=1)
        assert header.refusal(data, LIMITS) is None  # was image_too_large: 2 scans over 4 Mpx


def test_a_progressive_photo_with_a_progressive_picture_appended_is_not_too_many_scans() -> None:
    main, second = _jpeg((640, 480), RED, progressive=True), _jpeg((320, 240), BLUE, progressive=True)
    assert header.read(main + second) == Header("JPEG", 640, 480, scans=10, progressive=True)
    assert header.refusal(main + second, LIMITS) is None  # was image_unreadable: 20 scans


@pytest.mark.parametrize("data", ["appended", "mpo"])
def test_pillow_decodes_the_main_picture_only(data: str) -> None:
    """What the worker decodes is the picture judged: the main one, not the one after its EOI."""
    main = _jpeg((640, 480), RED, progressive=True)
    image = main + _jpeg((320, 240), BLUE, progressive=True) if data == "appended" else _mpo((640, 480), (320, 240))
    pixels = engine.decode(image, max_side=1000, limits=LIMITS)
    assert pixels.shape == (480, 640, 3)
    assert abs(int(pixels[240, 320, 0]) - RED[0]) < 8 and int(pixels[240, 320, 2]) < 60, pixels[240, 320]


def test_the_walk_skips_stuffed_bytes_restart_markers_and_fill_in_a_scan() -> None:
    """Noise has FF00 pairs in its scan; restart markers every 4 blocks; fill bytes before the EOI."""
    out = io.BytesIO()
    Image.effect_noise((256, 256), 80).convert("RGB").save(out, "JPEG", quality=90, restart_marker_blocks=4)
    noise = out.getvalue()
    assert noise.count(b"\xff\x00") > 10 and noise.count(b"\xff\xd3") > 5
    filled = noise[:-2] + b"\xff" * 20 + b"\xff\xd9"
    for data in (noise, filled, filled + _jpeg((64, 64), BLUE, progressive=True)):
        assert header.read(data) == Header("JPEG", 256, 256, scans=1)
        assert engine.decode(data, max_side=640, limits=LIMITS).shape == (256, 256, 3)
    real = photo("obama.jpg")
    assert header.read(real + real + real).scans == 1


@pytest.mark.parametrize("holder", [0xFE, 0xE1, 0xC4], ids=["COM", "APP1", "DHT"])
def test_a_scan_after_a_fake_eoi_in_a_segment_is_counted(holder: int) -> None:
    """A baseline grey picture of 6 Mpx in one scan is taken (one scan naming its one component); with a
    second scan after an FF D9 held in a segment it is a multi-scan JPEG over 4 Mpx; with 16 more, too
    many scans. Stopping at the first FF D9 would have counted one."""
    one = sequential_scans(3000, 2000, 1)
    assert header.refusal(one, LIMITS) is None
    two = _hidden(one, holder)
    assert two.count(b"\xff\xda", 0, two.index(b"\xff\xd9")) == 1  # what a naive walk would count
    assert header.read(two).scans == 2
    assert header.refusal(two, LIMITS) == "image_too_large"
    small = sequential_scans(64, 64, 1)
    assert header.refusal(_hidden(small, holder, MAX_JPEG_SCANS - 1), LIMITS) is None
    assert header.refusal(_hidden(small, holder, MAX_JPEG_SCANS), LIMITS) == "image_unreadable"


def test_libjpeg_decodes_the_scans_after_a_fake_eoi_in_a_comment() -> None:
    """Why the FF D9 in a COM is no EOI: libjpeg reads past it, to the scans after it (the components of
    a non-interleaved picture here), so they cost what any scan costs and are counted."""
    three = sequential_scans(72, 40, 3)
    at = three.index(b"\xff\xda", three.index(b"\xff\xda") + 2)  # the second scan
    data = three[:at] + _segment(0xFE, b"\xff\xd9") + three[at:]
    assert header.read(data) == Header("JPEG", 72, 40, scans=3, partial=True)
    assert engine.decode(data, max_side=640, limits=LIMITS).shape == (40, 72, 3)


def test_what_the_walk_refuses_after_the_first_scan() -> None:
    """The walk past the first scan is bounded too: the markers up to the EOI, segment lengths, one frame,
    nothing between two segments but a marker."""
    three = sequential_scans(64, 64, 3)  # after its first scan: two SOS and the EOI
    at = three.index(b"\xff\xda", three.index(b"\xff\xda") + 2)  # the second scan
    comment = _segment(0xFE, b"")
    assert header.refusal(three[:at] + comment * (MAX_JPEG_SEGMENTS - 3) + three[at:], LIMITS) is None
    assert header.refusal(three[:at] + comment * (MAX_JPEG_SEGMENTS - 2) + three[at:], LIMITS) == "image_unreadable"
    frame = three[three.index(b"\xff\xc0"):three.index(b"\xff\xc4")]
    for data in (three[:at] + frame + three[at:],  # a second frame
                 three[:at] + comment + b"\x00\x00" + three[at:],  # bytes after a segment that are no marker
                 three[:at] + comment + b"\xff\x00" + three[at:],
                 three[:at] + comment + b"\xff\xd0" + three[at:],  # a restart marker outside a scan
                 three[:at] + b"\xff\xfe\x40\x00" + bytes(10)):  # a segment past the file's end
        assert header.refusal(data, LIMITS) == "image_unreadable", data[at:at + 8]
