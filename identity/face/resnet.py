"""dlib's face recognition ResNet run by numpy: the same network and the same weights, read from
``dlib_face_recognition_resnet_model_v1.dat``, one BLAS matrix product per convolution.

Why: the installed dlib is the prebuilt ``dlib-bin`` wheel, built without BLAS
(``dlib.DLIB_USE_BLAS`` False): its ResNet costs 70 to 135 ms of one core per face, most of a
capture's budget (issue 6: 120 ms per capture, decoding and detection included), and issue 6 rules
out building dlib from source. numpy's wheel bundles an optimised OpenBLAS, so the same arithmetic
takes a fraction of that (docs/face.md, "Where the encoding runs"). dlib still finds the face, its
landmarks and the 150x150 chip (``identity.face.engine``); only the 128-number projection runs here.

The file, in dlib's own serialization (dlib/serialize.h, dlib/dnn/*.h):

- integers: a control byte (bit 0x80: negative; low 4 bits: how many little-endian bytes follow;
  bits 0x70 always 0), then the magnitude. Strings: a length, then the bytes. bool: ASCII '1'/'0'.
  A lone float (means, multipliers): two integers, mantissa then exponent (value = m * 2**e).
- a tensor: version 2, then num_samples, k, nr, nc, then the values as little-endian IEEE float32
  (version 1, from older dlib, stored each value as a float above). An alias tensor (the shape of a
  slice of a layer's parameters): version 1 and the four sizes.
- the network, outermost first: ``add_loss_layer`` (version 1, the loss, the subnetwork), then each
  ``add_layer`` writes its version (2), its subnetwork, then its own layer and its state (three
  bools, three tensors that are empty in a saved model); ``add_tag_layer``/``add_skip_layer`` write
  version 1 and their subnetwork; the lowest ``add_layer`` (version 2 or 3) writes the input layer
  in place of a subnetwork. So the file is a run of version numbers from the top of the network
  down, then the input layer, then the layers from the bottom up.

What the file does not say: which tag a tag/skip wrapper or an ``add_prev`` layer refers to. That
comes from the network's definition in dlib (``tools/python/src/face_recognition.cpp``,
``anet_type``), expanded by ``face_network_plan``; the loader checks the file against it layer by
layer (kind, filter count, kernel, stride; padding and the values come from the file) and refuses a
file that differs (``ModelFormatError``).

The arithmetic mirrors dlib's CPU code (dlib/dnn/cpu_dlib.cpp): convolution is cross-correlation
with zero padding, output size ``1 + (n + 2 * padding - kernel) // stride``; pooling windows are
not padded here (padding 0 in this network) and have the same output size; ``add_prev`` adds
tensors of different shapes as if each were extended with zeros to the larger one (at the end of
each axis: a 3x3 block output lands in the top-left of a 4x4 shortcut); the input is
``(pixel - mean) / 256`` per channel; the loss layer (``loss_metric_``) hands out the last layer's
128 numbers as they are. Activations are kept channels-last (N, H, W, C) so that a convolution is
one copy (im2col through a strided view) and one float32 matrix product; each affine layer that
follows a convolution is folded into that convolution's weights and bias at load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHIP_SIZE = 150


class ModelFormatError(ValueError):
    """The model file is not dlib's face recognition ResNet as this module reads it."""


# ---- the file -------------------------------------------------------------------------------------


class _Reader:
    """dlib's serialization primitives over an in-memory file (dlib/serialize.h, dlib/dnn/tensor.h)."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelFormatError(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                                   f"{len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self, what: str = "integer") -> int:
        control = self._take(1, what)[0]
        if control & 0x70:
            raise ModelFormatError(f"not an integer (control byte {control:#04x}) at offset {self.pos - 1}: {what}")
        size = control & 0x0F
        if size > 8:
            raise ModelFormatError(f"integer of {size} bytes at offset {self.pos - 1}: {what}")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def natural(self, what: str) -> int:
        value = self.integer(what)
        if value < 0:
            raise ModelFormatError(f"negative {what} ({value}) at offset {self.pos}")
        return value

    def real(self, what: str) -> float:
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent >= 32000:  # float_details: is_inf, is_ninf, is_nan
            raise ModelFormatError(f"{what} is not finite")
        return math.ldexp(float(mantissa), exponent)

    def text(self, what: str) -> str:
        size = self.natural(what)
        if size > 256:
            raise ModelFormatError(f"a {size}-byte string at offset {self.pos}: {what}")
        return bytes(self._take(size, what)).decode("ascii", errors="replace")

    def flag(self, what: str) -> bool:
        value = self._take(1, what)[0]
        if value not in (ord("0"), ord("1")):
            raise ModelFormatError(f"not a bool ({value:#04x}) at offset {self.pos - 1}: {what}")
        return value == ord("1")

    def tensor(self, what: str) -> np.ndarray:
        version = self.integer(what)
        shape = tuple(self.natural(what) for _ in range(4))
        count = shape[0] * shape[1] * shape[2] * shape[3]
        if version == 2:
            values = np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32)
            if not np.isfinite(values).all():
                raise ModelFormatError(f"{what}: values that are not finite numbers (a damaged file)")
            return values.reshape(shape)
        if version == 1:  # each value as a dlib float: two integers, at least 4 bytes
            if 4 * count > len(self.data) - self.pos:
                raise ModelFormatError(f"truncated: {what} claims {count} values at offset {self.pos}")
            return np.array([self.real(what) for _ in range(count)], dtype=np.float32).reshape(shape)
        raise ModelFormatError(f"tensor version {version} at offset {self.pos}: {what}")

    def alias(self, what: str) -> tuple[int, int, int, int]:
        version = self.integer(what)
        if version != 1:
            raise ModelFormatError(f"alias tensor version {version}: {what}")
        n, k, nr, nc = (self.natural(what) for _ in range(4))
        return n, k, nr, nc

    def at_string(self, prefix: bytes) -> bool:
        """Whether a string starting with ``prefix`` begins here (without consuming it)."""
        saved = self.pos
        try:
            size = self.integer()
            return size >= len(prefix) and bytes(self.data[self.pos:self.pos + len(prefix)]) == prefix
        except ModelFormatError:
            return False
        finally:
            self.pos = saved


# ---- layers, as read ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Conv:
    filters: np.ndarray  # (num_filters, k, nr, nc), dlib's layout
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True, eq=False)
class Affine:
    gamma: np.ndarray  # per channel (CONV_MODE)
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    size: tuple[int, int]  # (0, 0): the whole input (avg_pool_everything)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    pass


@dataclass(frozen=True, eq=False)
class Fc:
    weights: np.ndarray  # (num_inputs, num_outputs): output = input @ weights (no bias)


@dataclass(frozen=True)
class Wrapper:
    """A tag or skip layer: the file says neither which, nor its number."""


Layer = Conv | Affine | Relu | Pool | AddPrev | Fc | Wrapper


@dataclass(frozen=True, eq=False)
class ModelFile:
    mean: tuple[float, float, float]  # input_rgb_image_sized: avg_red, avg_green, avg_blue
    size: tuple[int, int]
    layers: list[Layer] = field(default_factory=list)  # bottom (next to the input) first


def _multipliers(r: _Reader, what: str) -> None:
    for _ in range(4):  # learning rate and weight decay multipliers (training only)
        r.real(what)


def _read_conv(r: _Reader, version: str) -> Conv:
    params = r.tensor("con_ params").ravel()
    num_filters = r.natural("con_ num_filters")
    nr, nc = r.natural("con_ nr"), r.natural("con_ nc")
    stride = (r.integer("con_ stride_y"), r.integer("con_ stride_x"))
    padding = (r.integer("con_ padding_y"), r.integer("con_ padding_x"))
    filters = r.alias("con_ filters")
    biases = r.alias("con_ biases")
    _multipliers(r, "con_ multipliers")
    use_bias = r.flag("con_ use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6" and r.flag("con_ use_relu"):
        raise ModelFormatError("con_ with a fused relu is not supported")
    if filters[0] != num_filters or filters[2:] != (nr, nc) or min(stride) < 1:
        raise ModelFormatError(f"con_ filters {filters} do not match {num_filters}x{nr}x{nc} stride {stride}")
    if not (0 <= padding[0] < nr and 0 <= padding[1] < nc):
        raise ModelFormatError(f"con_ padding {padding} for a {nr}x{nc} filter")
    count = math.prod(filters)
    expected = count + (num_filters if use_bias else 0)
    if params.size != expected or (use_bias and biases != (1, num_filters, 1, 1)):
        raise ModelFormatError(f"con_ has {params.size} parameters, expected {expected}")
    bias = params[count:count + num_filters].copy() if use_bias else None
    return Conv(params[:count].reshape(filters).copy(), bias, stride, padding)


def _read_affine(r: _Reader, version: str) -> Affine:
    params = r.tensor("affine_ params").ravel()
    gamma, beta = r.alias("affine_ gamma"), r.alias("affine_ beta")
    mode = r.integer("affine_ mode")
    if version == "affine_2" and r.flag("affine_ disabled"):
        raise ModelFormatError("a disabled affine_ layer is not supported")
    if mode != 0:  # layer_mode: CONV_MODE = 0, FC_MODE = 1
        raise ModelFormatError(f"affine_ in mode {mode}, expected CONV_MODE (0)")
    channels = gamma[1]
    if gamma != (1, channels, 1, 1) or beta != gamma or params.size != 2 * channels:
        raise ModelFormatError(f"affine_ gamma {gamma}, beta {beta}, {params.size} parameters")
    return Affine(params[:channels].copy(), params[channels:].copy())


def _read_pool(r: _Reader, kind: str) -> Pool:
    size = (r.natural(f"{kind}_pool nr"), r.natural(f"{kind}_pool nc"))
    stride = (r.integer(f"{kind}_pool stride_y"), r.integer(f"{kind}_pool stride_x"))
    padding = (r.integer(f"{kind}_pool padding_y"), r.integer(f"{kind}_pool padding_x"))
    if min(stride) < 1 or padding != (0, 0):
        # dlib clips a padded window to the image (the max or mean of what is inside); this network
        # pools without padding, so that case is not mirrored here.
        raise ModelFormatError(f"{kind}_pool with stride {stride} and padding {padding} is not supported")
    return Pool(kind, size, stride, padding)


def _read_fc(r: _Reader) -> Fc:
    num_outputs, num_inputs = r.natural("fc_ num_outputs"), r.natural("fc_ num_inputs")
    params = r.tensor("fc_ params")
    weights = r.alias("fc_ weights")
    r.alias("fc_ biases")
    bias_mode = r.integer("fc_ bias_mode")
    _multipliers(r, "fc_ multipliers")
    if bias_mode != 1:  # fc_bias_mode: FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        raise ModelFormatError("fc_ with a bias is not supported (the face network has fc_no_bias)")
    if weights[:2] != (num_inputs, num_outputs) or params.size != num_inputs * num_outputs:
        raise ModelFormatError(f"fc_ weights {weights}, {params.size} parameters, {num_inputs}x{num_outputs}")
    return Fc(params.reshape(num_inputs, num_outputs).copy())


def _read_layer(r: _Reader) -> Layer:
    version = r.text("layer version")
    if version in ("con_4", "con_5", "con_6"):
        return _read_conv(r, version)
    if version in ("affine_", "affine_2"):
        return _read_affine(r, version)
    if version == "relu_":
        return Relu()
    if version == "max_pool_2":
        return _read_pool(r, "max")
    if version == "avg_pool_2":
        return _read_pool(r, "avg")
    if version == "add_prev_":
        return AddPrev()
    if version == "fc_2":
        return _read_fc(r)
    raise ModelFormatError(f"unsupported layer {version!r} at offset {r.pos}")


def _layer_state(r: _Reader, version: int, *, lowest: bool) -> None:
    """What ``add_layer`` writes after its layer: flags and tensors that a saved model leaves empty."""
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.flag(name)
    for name in ("x_grad", "cached_output", "grad_final" if lowest else "params_grad"):
        if r.tensor(name).size:
            raise ModelFormatError(f"{name} of a layer is not empty")
    if lowest and version >= 3:
        r.natural("sample_expansion_factor")


def read_model(data: bytes) -> ModelFile:
    """Parse a dlib metric-learning network (``loss_metric`` over an ``input_rgb_image_sized``)."""
    r = _Reader(data)
    if r.integer("add_loss_layer version") != 1:
        raise ModelFormatError("not a dlib network with a loss layer (add_loss_layer version 1)")
    loss = r.text("loss version")
    if loss == "loss_metric_2":
        r.real("loss margin")
        r.real("loss dist_thresh")
    elif loss != "loss_metric_":
        raise ModelFormatError(f"loss {loss!r}, expected loss_metric_ (dlib's face recognition network)")
    # The version numbers of every wrapper, from the top down, until the input layer's name.
    versions: list[int] = []
    while not r.at_string(b"input_"):
        if len(versions) > 10_000:
            raise ModelFormatError("no input layer found")
        versions.append(r.integer("layer wrapper version"))
    if not versions:
        raise ModelFormatError("no layer above the input layer")
    lowest_version = versions.pop()
    if lowest_version not in (2, 3):
        raise ModelFormatError(f"lowest add_layer version {lowest_version}")
    name = r.text("input layer")
    if name != "input_rgb_image_sized":
        raise ModelFormatError(f"input layer {name!r}, expected input_rgb_image_sized")
    mean = (r.real("avg_red"), r.real("avg_green"), r.real("avg_blue"))
    size = (r.natural("input nr"), r.natural("input nc"))
    layers: list[Layer] = [_read_layer(r)]
    _layer_state(r, lowest_version, lowest=True)
    for version in reversed(versions):  # back up the network: bottom first
        if version == 2:
            layers.append(_read_layer(r))
            _layer_state(r, version, lowest=False)
        elif version == 1:
            layers.append(Wrapper())  # add_tag_layer / add_skip_layer: nothing of its own
        else:
            raise ModelFormatError(f"layer wrapper version {version}")
    if r.pos != len(r.data):
        raise ModelFormatError(f"{len(r.data) - r.pos} bytes after the network")
    return ModelFile(mean=mean, size=size, layers=layers)


# ---- the network's definition ---------------------------------------------------------------------


def face_network_plan() -> list[tuple[Any, ...]]:
    """dlib's ``anet_type`` (dlib tools/python/src/face_recognition.cpp), bottom (input) first:

        residual<N>      = add_prev1<block<N,1,tag1<SUBNET>>>
        residual_down<N> = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>
        block<N,stride>  = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUBNET>>>>>
        ares = relu<residual>, ares_down = relu<residual_down>
        anet_type = loss_metric<fc_no_bias<128,avg_pool_everything<alevel0<alevel1<alevel2<alevel3<
                    alevel4<max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>>>>>>>>
        alevel0 = ares_down<256>, alevel1 = ares<256>x2 over ares_down<256>,
        alevel2 = ares<128>x2 over ares_down<128>, alevel3 = ares<64>x3 over ares_down<64>, alevel4 = ares<32>x3
    """
    plan: list[tuple[Any, ...]] = []

    def block(n: int, stride: int) -> None:
        plan.extend([("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)])

    def ares(n: int) -> None:
        plan.append(("tag", 1))
        block(n, 1)
        plan.extend([("add_prev", 1), ("relu",)])

    def ares_down(n: int) -> None:
        plan.append(("tag", 1))
        block(n, 2)
        plan.extend([("tag", 2), ("skip", 1), ("pool", "avg", 2, 2), ("add_prev", 2), ("relu",)])

    plan.extend([("con", 32, 7, 2), ("affine",), ("relu",), ("pool", "max", 3, 2)])
    for _ in range(3):
        ares(32)
    for n, repeats in ((64, 3), (128, 2), (256, 2)):
        ares_down(n)
        for _ in range(repeats):
            ares(n)
    ares_down(256)
    plan.extend([("pool", "avg", 0, 1), ("fc", 128)])
    return plan


def _check(layer: Layer, step: tuple[Any, ...], index: int) -> None:
    def fail(found: str) -> ModelFormatError:
        return ModelFormatError(f"layer {index} (from the input): expected {step}, found {found}")

    kind = step[0]
    if kind in ("tag", "skip"):
        if not isinstance(layer, Wrapper):
            raise fail(type(layer).__name__)
    elif kind == "con":
        _, n, size, stride = step
        if not isinstance(layer, Conv):
            raise fail(type(layer).__name__)
        if layer.filters.shape[0] != n or layer.filters.shape[2:] != (size, size) or layer.stride != (stride, stride):
            raise fail(f"con {layer.filters.shape} stride {layer.stride}")
    elif kind == "pool":
        _, pool_kind, size, stride = step
        if not isinstance(layer, Pool) or layer.kind != pool_kind:
            raise fail(type(layer).__name__)
        if layer.size != (size, size) or layer.stride != (stride, stride):
            raise fail(f"{layer.kind}_pool {layer.size} stride {layer.stride}")
    elif kind == "fc":
        if not isinstance(layer, Fc) or layer.weights.shape[1] != step[1]:
            raise fail(type(layer).__name__)
    else:
        expected = {"affine": Affine, "relu": Relu, "add_prev": AddPrev}[kind]
        if not isinstance(layer, expected):
            raise fail(type(layer).__name__)


# ---- the runtime ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _ConvOp:
    weights: np.ndarray  # (kernel_y * kernel_x * channels_in, channels_out): im2col order (y, x, c)
    bias: np.ndarray
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    relu: bool  # a relu straight after (folded into the same pass over the output)


@dataclass(frozen=True)
class _PoolOp:
    kind: str
    size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class _TagOp:
    tag: int


@dataclass(frozen=True)
class _SkipOp:
    tag: int


@dataclass(frozen=True)
class _AddPrevOp:
    tag: int
    relu: bool


@dataclass(frozen=True)
class _ReluOp:
    pass


@dataclass(frozen=True, eq=False)
class _FcOp:
    weights: np.ndarray


_Op = _ConvOp | _PoolOp | _TagOp | _SkipOp | _AddPrevOp | _ReluOp | _FcOp


def _compile(model: ModelFile, plan: Sequence[tuple[Any, ...]]) -> list[_Op]:
    if len(model.layers) != len(plan):
        raise ModelFormatError(f"{len(model.layers)} layers in the file, {len(plan)} in dlib's face network")
    for index, (layer, step) in enumerate(zip(model.layers, plan, strict=True)):
        _check(layer, step, index)
    ops: list[_Op] = []
    pending = list(zip(model.layers, plan, strict=True))
    i = 0
    while i < len(pending):
        layer, step = pending[i]
        following = [p[0] for p in pending[i + 1:i + 3]]
        if isinstance(layer, Conv):
            filters = layer.filters.astype(np.float64)
            bias = layer.bias.astype(np.float64) if layer.bias is not None else np.zeros(filters.shape[0])
            used = 1
            if following and isinstance(following[0], Affine):  # fold: (conv + b) * gamma + beta
                gamma, beta = following[0].gamma.astype(np.float64), following[0].beta.astype(np.float64)
                filters = filters * gamma[:, None, None, None]
                bias = bias * gamma + beta
                used = 2
            relu = len(following) >= used and isinstance(following[used - 1], Relu)
            used += int(relu)
            out_c, in_c, ky, kx = filters.shape
            weights = np.ascontiguousarray(filters.transpose(2, 3, 1, 0).reshape(ky * kx * in_c, out_c), np.float32)
            ops.append(_ConvOp(weights, bias.astype(np.float32), (ky, kx), layer.stride, layer.padding, relu))
            i += used
            continue
        if isinstance(layer, Affine):
            raise ModelFormatError("an affine layer that does not follow a convolution is not supported")
        if isinstance(layer, Pool):
            ops.append(_PoolOp(layer.kind, layer.size, layer.stride))
        elif isinstance(layer, Wrapper):
            ops.append(_TagOp(step[1]) if step[0] == "tag" else _SkipOp(step[1]))
        elif isinstance(layer, AddPrev):
            relu = bool(following) and isinstance(following[0], Relu)
            ops.append(_AddPrevOp(step[1], relu))
            i += 1 + int(relu)
            continue
        elif isinstance(layer, Relu):
            ops.append(_ReluOp())
        elif isinstance(layer, Fc):
            ops.append(_FcOp(np.ascontiguousarray(layer.weights, np.float32)))
        i += 1
    return ops


def _conv(x: np.ndarray, op: _ConvOp) -> np.ndarray:
    """Cross-correlation as dlib's img2col + gemm, channels-last: one copy and one matrix product."""
    n, h, w, c = x.shape
    (ky, kx), (sy, sx), (py, px) = op.kernel, op.stride, op.padding
    if py or px:
        padded = np.zeros((n, h + 2 * py, w + 2 * px, c), dtype=np.float32)
        padded[:, py:py + h, px:px + w] = x
        x, h, w = padded, h + 2 * py, w + 2 * px
    out_h, out_w = 1 + (h - ky) // sy, 1 + (w - kx) // sx
    sn, sh, sw, sc = x.strides
    windows = np.lib.stride_tricks.as_strided(
        x, shape=(n, out_h, out_w, ky, kx, c), strides=(sn, sh * sy, sw * sx, sh, sw, sc), writeable=False)
    columns = windows.reshape(n * out_h * out_w, ky * kx * c)  # a copy: the im2col matrix
    out = columns @ op.weights
    out += op.bias
    if op.relu:
        np.maximum(out, 0, out=out)
    return out.reshape(n, out_h, out_w, op.weights.shape[1])


def _pool(x: np.ndarray, op: _PoolOp) -> np.ndarray:
    n, h, w, c = x.shape
    if op.size == (0, 0):  # avg_pool_everything
        return x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    (ky, kx), (sy, sx) = op.size, op.stride
    out_h, out_w = 1 + (h - ky) // sy, 1 + (w - kx) // sx
    views = [x[:, dy:dy + sy * (out_h - 1) + 1:sy, dx:dx + sx * (out_w - 1) + 1:sx]
             for dy in range(ky) for dx in range(kx)]
    out = views[0].copy()
    combine = np.maximum if op.kind == "max" else np.add
    for view in views[1:]:
        combine(out, view, out=out)
    if op.kind == "avg":
        out *= np.float32(1.0 / (ky * kx))
    return out


def _add_prev(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's tt::add(dest, src1, src2): each tensor extended with zeros to the larger shape."""
    if a.shape == b.shape:
        return a + b
    shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape, strict=True))
    out = np.zeros(shape, dtype=np.float32)
    out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
    out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return out


class FaceResNet:
    """dlib's face recognition ResNet with its weights, evaluated by numpy."""

    def __init__(self, model: ModelFile) -> None:
        if model.size != (CHIP_SIZE, CHIP_SIZE):
            raise ModelFormatError(f"input size {model.size}, expected {CHIP_SIZE}x{CHIP_SIZE}")
        self._ops = _compile(model, face_network_plan())
        self._mean = np.array(model.mean, dtype=np.float32)

    @classmethod
    def load(cls, path: str | Path) -> FaceResNet:
        return cls(read_model(Path(path).read_bytes()))

    def encode_chips(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB face chips (``dlib.get_face_chip``) to (N, 128) float32."""
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ValueError(f"face chips must be (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8, not {chips.shape} "
                             f"{chips.dtype}")
        # input_rgb_image_sized: (pixel - mean) / 256, in float (dlib/dnn/input.h)
        x = chips.astype(np.float32)
        x -= self._mean
        x *= np.float32(1.0 / 256.0)
        tags: dict[int, np.ndarray] = {}
        for op in self._ops:
            if isinstance(op, _ConvOp):
                x = _conv(x, op)
            elif isinstance(op, _PoolOp):
                x = _pool(x, op)
            elif isinstance(op, _TagOp):
                tags[op.tag] = x
            elif isinstance(op, _SkipOp):
                x = tags[op.tag]
            elif isinstance(op, _AddPrevOp):
                x = _add_prev(x, tags[op.tag])
                if op.relu:
                    np.maximum(x, 0, out=x)
            elif isinstance(op, _ReluOp):
                x = np.maximum(x, 0)  # a new array: x may be a tagged tensor
            else:
                # fc_: dlib flattens (k, nr, nc) per sample; after avg_pool_everything nr = nc = 1
                x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1) @ op.weights
        return x

    def encode_chip(self, chip: np.ndarray) -> np.ndarray:
        """One (150, 150, 3) uint8 RGB chip to its 128 numbers (float32)."""
        return self.encode_chips(chip[None])[0]


def model_path() -> str:
    """Where face_recognition_models keeps dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``)."""
    import face_recognition_models

    return str(face_recognition_models.face_recognition_model_location())


def limit_blas_threads(threads: int = 1) -> None:
    """One BLAS thread in this process: a capture's budget is one core (issue 6), and the worker pool
    (``identity.face.pool``) spreads captures over the cores; OpenBLAS threads would compete with the
    other workers for the same cores. Applies to the BLAS numpy already loaded (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")

