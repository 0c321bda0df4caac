"""What a capture claims to be, read from its header before any pixel is decoded (review 131, finding 2).

Standard library only: the service runs it in its own process, before a capture is queued for a face
worker, and the worker runs it again before Pillow decodes (``identity.face.engine.decode``), so the
picture a worker decodes is the one judged here.

Why per format. A decoding's cost is set by the picture's size, not the file's: a 200 kB PNG may
claim 40 million pixels, and PNG has no reduced decode, so Pillow builds the whole picture before
it can be downscaled (a 1 x 40,000,000 PNG: 2 s of a worker; a 6324 x 6324 one: 0.6 to 1.5 s; a
normal capture 0.03 to 0.06 s). A baseline JPEG is decoded already reduced (``Image.draft``, 1/8 of
each side at most): a 40 Mpx one in 0.02 s, its cost follows the file's bytes. A progressive JPEG is
not so cheap: libjpeg keeps the coefficients of the whole picture (240 MB at 40 Mpx) and each scan
passes over every block: a 40 Mpx one took 0.09 s with its 10 scans, 0.46 s with 31, 7.7 s with 3,000
tiny scans (370 kB). So does a baseline JPEG in more than one scan (its components in separate scans,
T.81 A.2.2): libjpeg buffers the whole picture's coefficients to join them (review 154, finding 3: a
625 kB, 7300 x 5470, 4-component one in 4 scans took 0.33 to 1.3 s and 250 to 330 MB of a worker).
It does so whenever a scan names fewer components than the frame has, in one scan too (review 165,
finding 2: a 156 kB, 6324 x 6324 frame of 4 components whose one scan names the first took 309 MB).
Hence (measured 2026-11-24 on the 2-core development machine, busy):

- PNG, a progressive JPEG, a JPEG of more than one scan or of a scan naming fewer components than its
  frame: at most ``max_png_pixels`` (``QUAYGATE_FACE_MAX_PNG_PIXELS``, 4 Mpx: 2000 x 2000, decoded in
  0.05 to 0.15 s, a progressive JPEG of 16 scans in 0.2 s; a webcam frame, a phone's capture in the
  browser, an ID photo are under it; cameras and phones write baseline JPEGs in one scan naming every
  component);
- a baseline JPEG in one scan naming every component: at most ``max_pixels``
  (``QUAYGATE_FACE_MAX_IMAGE_PIXELS``, 40 Mpx);
- JPEG: only the Huffman frame types cameras and phones write (baseline, extended, progressive: SOF0
  to SOF2; lossless, hierarchical and arithmetic-coded frames are refused: rare, and lossless is never
  decoded reduced), and at most ``MAX_JPEG_SCANS`` scans (libjpeg's progressive JPEG has 10);
- both: at most ``MAX_ASPECT`` times longer than wide (a face capture is never a strip; a strip is
  the cheapest way to claim many pixels with few bytes).

Padding (review 165, finding 3). Pillow reads what comes before a JPEG's first scan, and every chunk of
a PNG, one by one in Python before and after its C decoder: a real 184 kB photo padded to 4 MB with 0xFF
fill bytes or empty COM segments cost a worker 1.1 to 1.4 s and still matched (0.04 s unpadded), one with
350,000 empty PNG chunks 0.6 s; and this walk, in the service, 0.1 to 0.3 s. So the walk refuses more than
``MAX_JPEG_FILL`` fill bytes before a marker, a standalone marker (TEM, RSTn) outside a scan, more than
``MAX_JPEG_SEGMENTS`` markers up to the first scan or as many again from it to the EOI, more than
``MAX_PNG_CHUNKS_BEFORE_IDAT`` chunks before a PNG's first IDAT or ``MAX_PNG_CHUNKS`` in all, and a
segment or chunk running past the file's end; it walks no further than that, and the service runs it in a
thread, never on the event loop.

A second picture. Phones write one after the main image's EOI: Ultra HDR's gain map (Android 14), an MPF
gain map, an MPO's second frame. Pillow decodes the first picture only (an MPO's first frame), and libjpeg
stops at its EOI, so the scans counted are the main image's: each scan's entropy-coded data is skipped to
its next marker (not a stuffed FF 00, a fill byte or a restart marker: a search in C, 1.6 ms for a 4 MB
JPEG of noise, 14 to 28 ms for 4 MB of crafted FF 00, RSTn or fill bytes in a scan, measured 2026-11 on the
busy 2-core machine), every other segment by its length, to the EOI.
Before, the SOS markers were counted to the file's end, and a 12 Mpx phone photo with a gain map read as
two scans (image_too_large). An FF D9 inside a segment (a COM, an APPn, a DHT) is no EOI: libjpeg reads
past it, and so does the walk, so no scan hides behind one.

Refusals are the capture's quality codes the gate and the step-up already know
(``identity.domain.face.QUALITY_CODES``): ``image_too_large`` for too many pixels, ``image_unreadable``
for everything else.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ..domain.face import FaceCode

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_ASPECT = 4  # the longer side at most this many times the shorter
MAX_JPEG_SCANS = 16  # libjpeg(-turbo)'s progressive JPEG has 10, mozjpeg's about as many
# The walk itself is bounded, and so is what Pillow walks in Python before its C decoder takes over
# (module docstring, "Padding"): cameras and phones write a handful of segments and chunks.
MAX_JPEG_FILL = 8  # 0xFF fill bytes before one marker (T.81 B.1.1.2 allows any number; encoders write none)
MAX_JPEG_SEGMENTS = 64  # markers up to the first scan, SOS included (the sample photos have 8 to 10)
MAX_PNG_CHUNKS_BEFORE_IDAT = 64  # IHDR included (the sample photos have 2 to 5)
MAX_PNG_CHUNKS = 4096  # in all, to IEND: a 4 MB PNG in IDAT chunks of 1 kB (libpng writes 8 kB)
# Frame types taken: baseline, extended sequential and progressive, Huffman-coded (ITU T.81 B.1.1.3).
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
_JPEG_OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: no length, nothing before a scan
_SOS, _EOI = 0xDA, 0xD9
# The end of a scan's entropy-coded data (T.81 B.1.1.5, F.1.2.3): the first 0xFF that is not a stuffed data
# byte (FF 00), a fill byte (FF FF ...) or a restart marker (RST0 to RST7, inside the scan). A search in C:
# a scan of a 4 MB file is walked in milliseconds however many FF 00 pairs it has.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """How large a picture a capture may claim (module docstring)."""

    max_pixels: int = 40_000_000  # a baseline JPEG in one scan (decoded reduced)
    max_png_pixels: int = 4_000_000  # a PNG, a progressive JPEG, a JPEG of scans (decoded whole)

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_png_pixels < 1:
            raise ValueError("the face image pixel limits must be positive")


@dataclass(frozen=True, slots=True)
class Header:
    format: str  # JPEG | PNG, Pillow's names
    width: int
    height: int
    scans: int = 1  # a JPEG's scans to its main image's EOI (SOS markers); 1 for a PNG
    progressive: bool = False  # a progressive JPEG (SOF2)
    partial: bool = False  # a JPEG whose first scan names fewer components than the frame (non-interleaved)


def read(image: bytes) -> Header:
    """The capture's format and size, or ValueError(image_unreadable) for anything but a JPEG or PNG
    whose header says so plainly."""
    if image.startswith(PNG_SIGNATURE):
        return _png(image)
    if image.startswith(b"\xff\xd8"):
        return _jpeg(image)
    raise ValueError(FaceCode.IMAGE_UNREADABLE.value)


def judge(header: Header, limits: ImageLimits) -> FaceCode | None:
    """The refusal for the picture a capture claims, or None when it may be decoded."""
    width, height = header.width, header.height
    if width < 1 or height < 1:
        return FaceCode.IMAGE_UNREADABLE
    # decoded at full size, or its coefficients buffered whole (module docstring)
    whole = header.format == "PNG" or header.progressive or header.scans > 1 or header.partial
    most = limits.max_png_pixels if whole else limits.max_pixels
    if width * height > most:
        return FaceCode.IMAGE_TOO_LARGE
    if max(width, height) > MAX_ASPECT * min(width, height):
        return FaceCode.IMAGE_UNREADABLE
    if header.scans > MAX_JPEG_SCANS:
        return FaceCode.IMAGE_UNREADABLE
    return None


def refusal(image: bytes, limits: ImageLimits) -> FaceCode | None:
    """``read`` and ``judge`` in one: the capture's refusal, or None."""
    try:
        header = read(image)
    except ValueError:
        return FaceCode.IMAGE_UNREADABLE
    return judge(header, limits)


def _png(image: bytes) -> Header:
    # PNG §5.6: IHDR comes first, 13 bytes. A later second IHDR (which Pillow would take) is caught in
    # the worker, where Pillow's own reading of the size must agree with this one (engine.decode).
    if len(image) < 33 or image[12:16] != b"IHDR" or struct.unpack(">I", image[8:12])[0] != 13:
        raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
    width, height = struct.unpack(">II", image[16:24])
    _png_chunks(image)
    return Header("PNG", width, height)


def _png_chunks(image: bytes) -> None:
    """Walk the chunks (PNG §5.3: length, type, data, CRC) to IEND: at most ``MAX_PNG_CHUNKS_BEFORE_IDAT``
    before the first IDAT and ``MAX_PNG_CHUNKS`` in all, none running past the file's end; else
    ValueError(image_unreadable). Pillow walks each in Python (review 165, finding 3)."""
    pos, size, seen, idat = 8, len(image), 0, False
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", image, pos)
        seen += 1
        idat = idat or kind == b"IDAT"
        if seen > MAX_PNG_CHUNKS or (not idat and seen > MAX_PNG_CHUNKS_BEFORE_IDAT):
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
        pos += 12 + length
        if pos > size:
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
        if kind == b"IEND":
            return


def _jpeg(image: bytes) -> Header:
    """Walk the main image's markers (ITU T.81 B.1.1) to its EOI: the frame's size and components (Nf,
    B.2.2), the components each scan names (Ns, B.2.3), the scans. A scan's entropy-coded data is skipped
    to its next marker (``_SCAN_END``); every other segment by its length, so an FF D9 inside one is no
    EOI. What follows the EOI is not read: Pillow decodes the first picture only (module docstring)."""
    pos, size = 2, len(image)
    frame: tuple[int, int, bool, int] | None = None
    scans, partial, budget = 0, False, MAX_JPEG_SEGMENTS  # markers up to the first scan, then to the EOI
    while True:
        if budget == 0:  # the walk is bounded (module docstring, "Padding")
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
        budget -= 1
        if scans and pos >= size:  # cut short after a scan: Pillow's to refuse (a truncated file)
            break
        marker, pos = _marker(image, pos)
        if marker == _EOI and scans:
            break
        if marker in _JPEG_STANDALONE or marker in (0x00, _EOI) or pos + 2 > size:
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)  # restarts come only in a scan, EOI after one
        length = struct.unpack(">H", image[pos:pos + 2])[0]
        if length < 2 or pos + length > size:
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
        if marker in _JPEG_OTHER_FRAMES:
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
        if marker in _JPEG_FRAMES:
            if frame is not None or length < 8:  # one frame per picture
                raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
            height, width = struct.unpack(">HH", image[pos + 3:pos + 7])
            components = image[pos + 7]  # Nf: its component specifications fill the rest of the segment
            if components < 1 or length != 8 + 3 * components:
                raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
            frame = (width, height, marker == 0xC2, components)
        if marker != _SOS:
            pos += length
            continue
        named = image[pos + 2] if length >= 3 else 0  # Ns, each named in 2 bytes after it
        if frame is None or not 1 <= named <= frame[3] or length != 6 + 2 * named:
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
        scans += 1
        if scans == 1:
            partial, budget = named < frame[3], MAX_JPEG_SEGMENTS
        if scans > MAX_JPEG_SCANS:  # refused on the count (``judge``): no need to walk on
            break
        end = _SCAN_END.search(image, pos + length)
        if end is None:  # the data runs to the file's end (no EOI): Pillow's to refuse
            break
        pos = end.start()
    assert frame is not None  # a scan was met, and none comes before the frame
    return Header("JPEG", frame[0], frame[1], scans=scans, progressive=frame[2], partial=partial)


def _marker(image: bytes, pos: int) -> tuple[int, int]:
    """The marker at ``pos`` after its fill bytes (B.1.1.2, a few at most) and the position after it, or
    ValueError(image_unreadable) when ``pos`` holds no marker."""
    size = len(image)
    if pos >= size or image[pos] != 0xFF:
        raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
    start = pos
    while pos < size and image[pos] == 0xFF:
        pos += 1
        if pos - start > 1 + MAX_JPEG_FILL:
            raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
    if pos >= size:
        raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
    return image[pos], pos + 1
