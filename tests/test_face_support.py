"""Real photos of real people for the face tests and bench (no tests here).

Fetched at test time from registry packages, never committed (NOTES.md): the face_recognition sdist
ships ``tests/test_images/`` (three photos of Barack Obama, crops of them, an RGBA copy, and one of
Joe Biden); scikit-image's wheel ships ``skimage/data/astronaut.png`` (Eileen Collins, a third person)
and ``chelsea.png`` (a cat: a real photo with no human face). Both are downloaded once with pip into
``$QUAYGATE_TEST_CACHE`` (default ``~/.cache/quaygate``) under a file lock (xdist workers share it).
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

FACE_RECOGNITION_SDIST = "face_recognition==1.3.0"
SCIKIT_IMAGE_WHEEL = "scikit-image==0.26.0"
SDIST_PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png", "obama_partial_face.jpg")
WHEEL_PHOTOS = ("astronaut.png", "chelsea.png")


def cache_dir() -> Path:
    return Path(os.environ.get("QUAYGATE_TEST_CACHE", Path.home() / ".cache" / "quaygate")) / "faces"


def _pip_download(args: list[str], into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(into), *args],
                   check=True, capture_output=True, timeout=300)
    return next(p for p in into.iterdir() if p.is_file())


def _fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _pip_download(["--no-binary", ":all:", FACE_RECOGNITION_SDIST], Path(tmp) / "sdist")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if "/tests/test_images/" in member.name and name in SDIST_PHOTOS:
                    data = tar.extractfile(member)
                    assert data is not None
                    (target / name).write_bytes(data.read())
        wheel = _pip_download(["--only-binary", ":all:", SCIKIT_IMAGE_WHEEL], Path(tmp) / "wheel")
        with zipfile.ZipFile(wheel) as zf:
            for name in WHEEL_PHOTOS:
                (target / name).write_bytes(zf.read(f"skimage/data/{name}"))


def photo_dir() -> Path:
    """The folder with every photo, fetched on first use."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "faces.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((target / n).exists() for n in (*SDIST_PHOTOS, *WHEEL_PHOTOS)):
            try:
                _fetch(target)
            except (subprocess.SubprocessError, OSError, StopIteration) as exc:
                if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                    pytest.fail(f"could not fetch the test photos with pip: {exc}")
                pytest.skip(f"could not fetch the test photos with pip: {exc}")
    return target


def photo(name: str) -> bytes:
    return (photo_dir() / name).read_bytes()


def _jpeg(image: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)  # type: ignore[attr-defined]
    return out.getvalue()


def side_by_side(left: str, right: str, height: int = 640) -> bytes:
    """Two photos pasted side by side at the same height: a picture with two faces."""
    from PIL import Image

    images = []
    for name in (left, right):
        im = Image.open(io.BytesIO(photo(name))).convert("RGB")
        images.append(im.resize((round(im.width * height / im.height), height)))
    canvas = Image.new("RGB", (sum(i.width for i in images), height), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return _jpeg(canvas)


def blurred(name: str, radius: float = 4.0, side: int = 640) -> bytes:
    """The photo at the analysed scale with a Gaussian blur (an out-of-focus capture)."""
    from PIL import Image, ImageFilter

    im = Image.open(io.BytesIO(photo(name))).convert("RGB")
    im.thumbnail((side, side))
    return _jpeg(im.filter(ImageFilter.GaussianBlur(radius)))


def fresh(name: str) -> bytes:
    """The photo as a new capture: the same pixels, new bytes (a live camera never sends the same bytes
    twice, and the service refuses bytes it matched before: face_replayed). A JPEG gets a comment
    segment after its start marker, a PNG a text chunk after its header; decoders skip both."""
    import struct
    import uuid
    import zlib

    raw = photo(name)
    note = f"capture {uuid.uuid4()}".encode()
    if raw.startswith(b"\xff\xd8"):
        return raw[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + raw[2:]
    assert raw.startswith(b"\x89PNG\r\n\x1a\n"), name
    chunk = b"tEXt" + b"Comment\x00" + note
    text = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return raw[:33] + text + raw[33:]


def mirrored(name: str) -> bytes:
    """The photo mirrored left to right, as a new JPEG each call: a stand-in for another capture of the same
    face where the samples have one photo of a person. The photo enrolled, or a copy of it re-encoded, is no
    capture (under ``COPY_DISTANCE`` from the enrolled face: face_replayed, review 165, finding 4); mirrored,
    it measures 0.15 to 0.23 from it (obama.jpg 0.15, biden.jpg and astronaut.png 0.18, obama2.jpg 0.23)."""
    import uuid

    from PIL import Image, ImageOps

    out = io.BytesIO()
    ImageOps.mirror(Image.open(io.BytesIO(photo(name))).convert("RGB")).save(
        out, "JPEG", quality=92, comment=f"capture {uuid.uuid4()}".encode())
    return out.getvalue()
