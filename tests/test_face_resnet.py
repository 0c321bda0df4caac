"""dlib's face recognition ResNet in numpy (identity.face.resnet) against dlib's own encoder, on the
real photos the other face tests use (tests/test_face_support.py), and the loader on damaged files.

Measured when written: the largest difference over the 128 numbers of any photo is 4.5e-7, of a
flat white chip 3.0e-6 (float32 rounding: OpenBLAS sums in another order than dlib; the numbers
themselves reach 0.4); the tolerance below is 1e-5.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from identity.domain.face import QualityRules
from identity.face import engine, resnet
from identity.face.pool import FacePool
from tests.test_face_support import photo

TOLERANCE = 1e-5  # measured: 4.5e-7 on the photos, 3.0e-6 on a flat white chip
SAME = ("obama.jpg", "obama2.jpg", "32bit.png", "obama_partial_face.jpg")
OTHERS = ("biden.jpg", "astronaut.png")


def _fr() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import face_recognition
    return face_recognition


@pytest.fixture(scope="module")
def net() -> resnet.FaceResNet:
    return resnet.FaceResNet.load(resnet.model_path())


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return Path(resnet.model_path()).read_bytes()


@dataclasses.dataclass
class Face:
    chip: np.ndarray  # 150x150 RGB, dlib.get_face_chip
    full: np.ndarray  # face_recognition.face_encodings on the whole picture: what the engine stored so far
    on_chip: np.ndarray  # dlib's encoder on the chip alone


@pytest.fixture(scope="module")
def faces() -> dict[str, Face]:
    import dlib

    fr = _fr()
    found = {}
    for name in SAME + OTHERS:
        pixels = engine.decode(photo(name), max_side=640)
        grey = np.asarray(Image.fromarray(pixels).convert("L"))  # as the engine detects
        top, right, bottom, left = fr.face_locations(grey, number_of_times_to_upsample=0)[0]
        # face_encodings' default model="small": the 5-point landmarks
        landmarks = fr.api.pose_predictor_5_point(pixels, dlib.rectangle(left, top, right, bottom))
        chip = dlib.get_face_chip(pixels, landmarks, size=150, padding=0.25)
        full = fr.face_encodings(pixels, known_face_locations=[(top, right, bottom, left)], num_jitters=1)[0]
        on_chip = np.array(fr.api.face_encoder.compute_face_descriptor(chip))
        found[name] = Face(chip, full, on_chip)
    return found


# ---- the same numbers as dlib ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SAME + OTHERS)
def test_the_chip_is_what_dlib_encodes(faces: dict[str, Face], name: str) -> None:
    # compute_face_descriptor(image, landmarks) cuts this very chip: the same 128 numbers, exactly
    assert np.array_equal(faces[name].on_chip, faces[name].full)


@pytest.mark.parametrize("name", SAME + OTHERS)
def test_numpy_gives_dlibs_128_numbers(faces: dict[str, Face], net: resnet.FaceResNet, name: str) -> None:
    ours = net.encode_chip(faces[name].chip)
    assert ours.shape == (128,)
    # all 128 numbers, each within 1e-5 (a skipped layer or a wrong padding is off by 0.01 to 0.3)
    assert np.abs(ours - faces[name].on_chip).max() < TOLERANCE


def test_unusual_chips_too(net: resnet.FaceResNet) -> None:
    # Chips no photo gives (noise, flat black, flat white): other activations, the same rule.
    fr = _fr()
    rng = np.random.default_rng(6)
    chips = np.stack([rng.integers(0, 256, (150, 150, 3), dtype=np.uint8), np.zeros((150, 150, 3), np.uint8),
                      np.full((150, 150, 3), 255, np.uint8)])
    batch = net.encode_chips(chips)
    for chip, ours in zip(chips, batch, strict=True):
        theirs = np.array(fr.api.face_encoder.compute_face_descriptor(chip))
        assert np.abs(ours - theirs).max() < TOLERANCE
        assert np.abs(net.encode_chip(chip) - ours).max() < TOLERANCE  # one at a time = in a batch


def test_distances_agree_and_separate_people(faces: dict[str, Face], net: resnet.FaceResNet) -> None:
    ours = {name: net.encode_chip(face.chip) for name, face in faces.items()}
    theirs = {name: face.on_chip for name, face in faces.items()}
    for encodings in (ours, theirs):
        for a in SAME:
            for b in SAME:
                assert np.linalg.norm(encodings[a] - encodings[b]) < 0.5, (a, b)
            for other in OTHERS:
                assert np.linalg.norm(encodings[a] - encodings[other]) > 0.7, (a, other)
        assert np.linalg.norm(encodings[OTHERS[0]] - encodings[OTHERS[1]]) > 0.7
    for a in ours:
        for b in ours:
            assert abs(np.linalg.norm(ours[a] - ours[b]) - np.linalg.norm(theirs[a] - theirs[b])) < TOLERANCE


def test_a_wrong_padding_or_a_skipped_layer_shows(faces: dict[str, Face], model_bytes: bytes) -> None:
    """The equality above has teeth: the same runtime with one padding wrong, or one layer left out,
    is far outside the tolerance."""
    model = resnet.read_model(model_bytes)
    chip, reference = faces["obama.jpg"].chip, faces["obama.jpg"].on_chip
    convs = [i for i, layer in enumerate(model.layers) if isinstance(layer, resnet.Conv)]
    wrong = list(model.layers)
    wrong[convs[5]] = dataclasses.replace(wrong[convs[5]], padding=(0, 0))  # a 3x3 of the first level
    padded = resnet.FaceResNet(dataclasses.replace(model, layers=wrong)).encode_chip(chip)
    assert np.abs(padded - reference).max() > 100 * TOLERANCE

    net = resnet.FaceResNet(model)
    relu_after_add = next(i for i, op in enumerate(net._ops) if isinstance(op, resnet._AddPrevOp))
    net._ops[relu_after_add] = dataclasses.replace(net._ops[relu_after_add], relu=False)
    assert np.abs(net.encode_chip(chip) - reference).max() > 100 * TOLERANCE
    net._ops[relu_after_add] = dataclasses.replace(net._ops[relu_after_add], relu=True)
    second = [i for i, op in enumerate(net._ops) if isinstance(op, resnet._ConvOp)][2]
    del net._ops[second]  # a whole 32-to-32 convolution (with the affine and relu folded into it)
    assert np.abs(net.encode_chip(chip) - reference).max() > 100 * TOLERANCE


# ---- the engine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg"])
def test_the_engine_encodes_the_same_with_either_encoder(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("QUAYGATE_FACE_ENCODER", "dlib")
    theirs = engine.analyse(photo(name), QualityRules())
    monkeypatch.setenv("QUAYGATE_FACE_ENCODER", "numpy")
    ours = engine.analyse(photo(name), QualityRules())
    assert theirs.encoding is not None and ours.encoding is not None
    assert (ours.faces, ours.face_px, ours.sharpness) == (theirs.faces, theirs.face_px, theirs.sharpness)
    assert np.abs(np.array(ours.encoding) - np.array(theirs.encoding)).max() < TOLERANCE
    assert engine.runtime()["encoder"] == "numpy"


def test_an_unknown_encoder_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUAYGATE_FACE_ENCODER", "onnx")
    with pytest.raises(ValueError, match="QUAYGATE_FACE_ENCODER"):
        engine.analyse(photo("obama.jpg"), QualityRules())


def test_an_unreadable_model_falls_back_to_dlibs_encoder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         model_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    broken.write_bytes(model_bytes[:1000])
    monkeypatch.setattr(resnet, "model_path", lambda: str(broken))
    monkeypatch.setattr(engine, "_numpy_net", None)  # as in a fresh worker
    monkeypatch.setenv("QUAYGATE_FACE_ENCODER", "numpy")
    with caplog.at_level("ERROR", logger="identity.face.engine"):
        found = engine.analyse(photo("obama.jpg"), QualityRules())
    assert any(r.message.startswith("identity.face.encoder.fallback") for r in caplog.records)
    assert engine.runtime()["encoder"] == "dlib"
    monkeypatch.setenv("QUAYGATE_FACE_ENCODER", "dlib")
    assert found.encoding == engine.analyse(photo("obama.jpg"), QualityRules()).encoding


@pytest.fixture
def worker() -> Iterator[FacePool]:
    pool = FacePool(1)
    yield pool
    pool.close()


def test_a_worker_encodes_in_numpy_on_one_blas_thread(worker: FacePool) -> None:
    info = worker._pool().submit(engine.runtime).result(timeout=120)
    assert info["encoder"] == "numpy" and info["blas_threads"] == 1


# ---- the loader refuses what is not dlib's face network -------------------------------------------


def test_the_file_is_read_whole(model_bytes: bytes) -> None:
    model = resnet.read_model(model_bytes)
    assert model.size == (150, 150)
    assert [round(m, 3) for m in model.mean] == [122.782, 117.001, 104.298]  # dlib's training set means
    kinds = [type(layer).__name__ for layer in model.layers]
    assert (kinds.count("Conv"), kinds.count("Affine"), kinds.count("AddPrev"), kinds.count("Fc")) == (29, 29, 14, 1)
    assert sum(layer.filters.size for layer in model.layers if isinstance(layer, resnet.Conv)) > 5_000_000


@pytest.mark.parametrize("keep", [0, 1, 20, 300, 400, 50_000, -100_000, -1])
def test_a_truncated_file_is_refused(model_bytes: bytes, keep: int) -> None:
    with pytest.raises(resnet.ModelFormatError, match="truncated"):
        resnet.read_model(model_bytes[:keep])


def test_bytes_after_the_network_are_refused(model_bytes: bytes) -> None:
    with pytest.raises(resnet.ModelFormatError, match="after the network"):
        resnet.read_model(model_bytes + b"\x00")


def _replace_once(data: bytes, old: bytes, new: bytes, nth: int = 0) -> bytes:
    at = -1
    for _ in range(nth + 1):
        at = data.index(old, at + 1)
    return data[:at] + new + data[at + len(old):]


def test_a_corrupted_file_is_refused(model_bytes: bytes) -> None:
    with pytest.raises(resnet.ModelFormatError, match="unsupported layer 'con_9'"):
        resnet.read_model(_replace_once(model_bytes, b"con_4", b"con_9", nth=3))
    with pytest.raises(resnet.ModelFormatError, match="loss"):
        resnet.read_model(_replace_once(model_bytes, b"loss_metric_2", b"loss_mmod_xx2"))
    with pytest.raises(resnet.ModelFormatError):  # a layer's parameter count no longer adds up
        resnet.read_model(_replace_once(model_bytes, b"con_4\x01\x02\x02\x80\x12", b"con_4\x01\x02\x02\x81\x12"))
    # a weight turned into NaN (0xffffffff)
    at = model_bytes.index(b"con_4", 50_000) + 40
    with pytest.raises(resnet.ModelFormatError, match="not finite"):
        resnet.read_model(model_bytes[:at] + b"\xff\xff\xff\xff" + model_bytes[at + 4:])
    with pytest.raises(resnet.ModelFormatError):
        resnet.read_model(b"\x01\x02" + bytes(range(256)) * 10)


def test_another_dlib_model_file_is_refused() -> None:
    import face_recognition_models

    with pytest.raises(resnet.ModelFormatError):
        resnet.FaceResNet.load(face_recognition_models.pose_predictor_five_point_model_location())


def test_a_network_of_another_shape_is_refused(model_bytes: bytes) -> None:
    model = resnet.read_model(model_bytes)
    plan = resnet.face_network_plan()
    with pytest.raises(resnet.ModelFormatError, match="layers in the file"):
        resnet._compile(model, plan[:-1])
    swapped = list(plan)
    swapped[0] = ("con", 64, 7, 2)
    with pytest.raises(resnet.ModelFormatError, match="layer 0"):
        resnet._compile(model, swapped)
    missing_relu = [layer for i, layer in enumerate(model.layers) if i != 2]
    with pytest.raises(resnet.ModelFormatError):
        resnet.FaceResNet(dataclasses.replace(model, layers=missing_relu))
