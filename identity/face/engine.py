"""The face engine: our one wrapper around face_recognition (dlib), run inside the worker processes.

STYLE.md #7: face_recognition, dlib, numpy and Pillow are reached only here (and in ``resnet``, the
numpy runtime of dlib's network), and their exceptions and types become ours (``Analysis``,
``identity.domain.face.FaceCode``). Nothing here keeps the image: it is decoded in memory, analysed
and dropped when the function returns; only the 128-number encoding leaves, and the caller seals it
at once (``identity.face.sealing``).

Measured recipe (NOTES.md, docs/face.md): downscale to about 640 px on the longer side (JPEGs decode
already reduced, ``Image.draft``), detect with HOG on grey and ``number_of_times_to_upsample=0`` (10
to 24 ms instead of 0.2 to 1.1 s at full size), judge the faces (``identity.domain.face``) and encode
only the largest face, only when the capture passes. Encoding is what face_recognition's
``face_encodings(..., num_jitters=1)`` does, in three steps: dlib's 5-point landmarks
(face_recognition's default ``model="small"``), dlib's 150x150 face chip (padding 0.25), then dlib's
ResNet on the chip. The ResNet runs in numpy (``identity.face.resnet``, the same weights, 12 to
15 ms of one core) instead of dlib-bin's own code without BLAS (75 to 140 ms); on the sample photos
the two give the same 128 numbers within 5e-7. ``QUAYGATE_FACE_ENCODER=dlib`` (read in each worker) runs
dlib's own encoder instead, for comparison; the default is ``numpy``. A model file the numpy runtime
cannot read is logged (``identity.face.encoder.fallback``) and dlib's encoder takes over: slower,
the same templates.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

from ..domain.face import QUALITY_CODES, Box, FaceCode, QualityRules, judge_faces, judge_sharpness, largest
from . import header
from .header import ImageLimits

SHARPNESS_SIDE = 64  # the face is resized to this square before its Laplacian is measured
ENCODERS = ("numpy", "dlib")  # QUAYGATE_FACE_ENCODER: who runs dlib's ResNet on the face chip
DEFAULT_ENCODER = "numpy"
CHIP_PADDING = 0.25  # dlib's compute_face_descriptor default, which face_encodings uses
ACCEPTED_FORMATS = ("JPEG", "PNG")  # Pillow format names of the images the API takes (docs/face.md)

log = logging.getLogger(__name__)
_numpy_net: Any = None  # identity.face.resnet.FaceResNet once loaded; False when it could not be


@dataclass(frozen=True, slots=True)
class Analysis:
    """What a capture gave: a refusal code, or the encoding of its one face. Picklable (it crosses
    from the worker process back to the service)."""

    code: str | None
    faces: int = 0
    face_px: int | None = None
    sharpness: float | None = None
    encoding: tuple[float, ...] | None = None


def _face_recognition() -> Any:
    # Imported on first use: the models load at import (about 100 MB), in the workers only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import face_recognition
    from PIL import ImageFile

    # face_recognition's import sets this for the whole process (face_recognition/api.py), which turns
    # off Pillow's checks of a PNG's chunk types and of truncated files in every worker that loaded the
    # models: a chunk type that is not ASCII then raised UnicodeDecodeError (review 165, finding 1).
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    return face_recognition


def encoder_name() -> str:
    """The encoder chosen by ``QUAYGATE_FACE_ENCODER`` (numpy or dlib); ValueError for anything else."""
    name = os.environ.get("QUAYGATE_FACE_ENCODER", DEFAULT_ENCODER).strip().lower() or DEFAULT_ENCODER
    if name not in ENCODERS:
        raise ValueError(f"QUAYGATE_FACE_ENCODER must be one of {', '.join(ENCODERS)}, not {name!r}")
    return name


def _numpy_encoder() -> Any:
    """dlib's ResNet in numpy (``identity.face.resnet``), loaded once per process; None when the model
    file cannot be read that way (logged: dlib's encoder takes over, same templates, slower)."""
    global _numpy_net
    if _numpy_net is None:
        from . import resnet

        try:
            _numpy_net = resnet.FaceResNet.load(resnet.model_path())
        except (resnet.ModelFormatError, OSError) as exc:
            log.error("identity.face.encoder.fallback %s", exc)
            _numpy_net = False
        else:
            # One BLAS thread per worker: a capture's budget is one core (issue 6); the pool
            # (identity.face.pool) gives the parallelism, one worker per core.
            resnet.limit_blas_threads(1)
    return _numpy_net or None


def encode(pixels: Any, face: Box, encoder: str | None = None) -> tuple[float, ...]:
    """The 128 numbers of ``face`` in ``pixels`` (RGB), as face_recognition's ``face_encodings`` with
    one jitter gives them: 5-point landmarks, the 150x150 chip, dlib's ResNet (numpy or dlib's own)."""
    import dlib

    fr = _face_recognition()
    name = encoder or encoder_name()
    if name not in ENCODERS:
        raise ValueError(f"unknown face encoder {name!r}")
    net = _numpy_encoder() if name == "numpy" else None
    if net is None:
        found = fr.face_encodings(pixels, known_face_locations=[(face.top, face.right, face.bottom, face.left)],
                                  num_jitters=1)
        return tuple(float(v) for v in found[0])
    landmarks = fr.api.pose_predictor_5_point(pixels, dlib.rectangle(face.left, face.top, face.right, face.bottom))
    chip = dlib.get_face_chip(pixels, landmarks, size=150, padding=CHIP_PADDING)
    return tuple(float(v) for v in net.encode_chip(chip))


def runtime() -> dict[str, Any]:
    """What encodes in this process and with how many BLAS threads (the bench and tests check it)."""
    from threadpoolctl import threadpool_info

    name = encoder_name()
    numpy_ready = name == "numpy" and _numpy_encoder() is not None
    blas = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
    return {"encoder": "numpy" if numpy_ready else "dlib", "blas_threads": max(blas, default=None),
            "pid": os.getpid()}


def decode(image: bytes, *, max_side: int, limits: ImageLimits = ImageLimits()) -> Any:  # noqa: B008 - frozen
    """The image as an RGB numpy array at most ``max_side`` on its longer side, or ValueError with a
    FaceCode value. EXIF orientation is applied (phone captures are often stored sideways).

    Nothing is decoded before the header is judged (``identity.face.header``: pixels per format, the
    shape, a JPEG's frame type and scans), and Pillow's own reading of the size must be the one judged:
    a file the two read differently (a second PNG header further on) is refused unread."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    claimed = header.read(image)  # ValueError(image_unreadable)
    refused = header.judge(claimed, limits)
    if refused is not None:  # before decoding: a small file may claim a huge picture
        raise ValueError(refused.value)
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 Mpx and refuses above twice that; our own limits are lower (above).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Only the formats the API takes (docs/face.md): every other Pillow decoder (TIFF, PSD,
            # JPEG 2000 ...) is attack surface reachable from a login session and a gate lane.
            with Image.open(io.BytesIO(image), formats=ACCEPTED_FORMATS) as im:
                width, height = im.size
                if (width, height) != (claimed.width, claimed.height):
                    raise ValueError(FaceCode.IMAGE_UNREADABLE.value)
                # JPEG: decode at 1/2, 1/4 or 1/8 directly, as small as still covers the target size
                # (draft keeps both sides at least as large as asked: ask for the target's own shape).
                scale = min(1.0, max_side / max(width, height))
                im.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
                rgb = ImageOps.exif_transpose(im).convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ValueError(FaceCode.IMAGE_TOO_LARGE.value) from exc
    except Exception as exc:  # noqa: BLE001 - STYLE.md #7: whatever Pillow raises on a file is ours to name
        # Pillow's own errors (UnidentifiedImageError, OSError, SyntaxError) and what a crafted file makes
        # its plugins raise besides: IndexError from an iCCP chunk after IDAT, ValueError from a chunk it
        # cannot parse (review 165, finding 1: those left the worker, and every caller answered 500).
        ours = isinstance(exc, ValueError) and str(exc) == FaceCode.IMAGE_UNREADABLE.value  # sizes disagree
        if not (ours or isinstance(exc, UnidentifiedImageError | OSError | SyntaxError)):
            log.warning("identity.face.decode.failed %s", type(exc).__name__)
        raise ValueError(FaceCode.IMAGE_UNREADABLE.value) from exc
    scale = max_side / max(rgb.size)
    if scale < 1:
        # reducing_gap: a cheap integer box reduction first, then the filter on the last factor
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(rgb)


def sharpness(pixels: Any, box: Box) -> float:
    """Variance of the Laplacian of the face at 64x64 grey: low when the face is blurred."""
    import numpy as np
    from PIL import Image

    crop = pixels[max(box.top, 0):max(box.bottom, 0), max(box.left, 0):max(box.right, 0)]
    if crop.size == 0:
        return 0.0
    grey = Image.fromarray(crop).convert("L")
    shrink = grey.width >= SHARPNESS_SIDE and grey.height >= SHARPNESS_SIDE
    grey = grey.resize((SHARPNESS_SIDE, SHARPNESS_SIDE),
                       Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float64)
    laplacian = g[1:-1, 2:] + g[1:-1, :-2] + g[2:, 1:-1] + g[:-2, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(laplacian.var())


def analyse(image: bytes, rules: QualityRules, max_side: int = 640,
            limits: ImageLimits = ImageLimits()) -> Analysis:  # noqa: B008 - frozen
    """Detect, judge and encode one capture. Runs in a worker process (``identity.face.pool``)."""
    import numpy as np
    from PIL import Image
    try:
        pixels = decode(image, max_side=max_side, limits=limits)
    except ValueError as exc:
        code = str(exc)
        if code not in QUALITY_CODES:  # only a capture's own codes leave here, never a library's text
            log.warning("identity.face.decode.failed %s", type(exc).__name__)
            code = FaceCode.IMAGE_UNREADABLE.value
        return Analysis(code=code)
    del image
    fr = _face_recognition()
    # HOG on the grey image: the same boxes on the sample photos, about a quarter less time than on
    # three colour channels (dlib takes the strongest gradient of the three).
    grey = np.asarray(Image.fromarray(pixels).convert("L"))
    boxes = [Box(*map(int, b)) for b in fr.face_locations(grey, number_of_times_to_upsample=0, model="hog")]
    del grey
    code = judge_faces(boxes, rules)
    face = largest(boxes)
    if face is None:
        return Analysis(code=code)
    sharp = round(sharpness(pixels, face), 1)
    code = code or judge_sharpness(sharp, rules)
    if code is not None:
        return Analysis(code=code, faces=len(boxes), face_px=face.size, sharpness=sharp)
    encoding = encode(pixels, face)
    return Analysis(code=None, faces=len(boxes), face_px=face.size, sharpness=sharp, encoding=encoding)


def warm_up(hold: float = 0.0) -> bool:
    """Load the models and run one detection and one encoding, so the first capture is not slow.

    ``hold`` keeps this worker busy a little longer, so that each of N warm-up jobs submitted at once
    lands in another of N workers (a worker done early would otherwise take a second one, and leave
    another worker to load the models on its first real capture)."""
    import time

    import numpy as np

    fr = _face_recognition()
    blank = np.zeros((160, 160, 3), dtype=np.uint8)
    fr.face_locations(blank[:, :, 0], number_of_times_to_upsample=0)
    encode(blank, Box(top=10, right=150, bottom=150, left=10))
    if hold > 0:
        time.sleep(hold)
    return True


def available() -> bool:
    """True when face_recognition and its models can be imported here."""
    try:
        _face_recognition()
    except (ImportError, SystemExit):  # face_recognition_models calls quit() when pkg_resources is missing
        return False
    return True
