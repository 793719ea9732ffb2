"""Quantization specs: element type, granularity, symmetry, and the integer grid they imply.

dtype strings (EQuant style):

==============  ===============================================  ==================================
string          grid                                             stored as
==============  ===============================================  ==================================
``s8``          [-128, 127] (narrow: [-127, 127])                int8
``sN`` (2..8)   [-2^(N-1), 2^(N-1)-1] (narrow drops the minimum)  int8 (values restricted to the grid)
``sN.F``        fractional width w = N.F: [-floor(2^(w-1)), floor(2^(w-1))-1]   int8 (fake-quant grids)
``u8``, ``uN``  [0, 2^N - 1]                                     uint8 (not for TensorRT)
``s4``          [-8, 7]; true INT4 only with ``block-size`` (MatMul/Gemm weights, opset 21)
``fp8e4m3``     E4M3FN, max 448                                  float8e4m3fn
==============  ===============================================  ==================================

qschemes: ``per_tensor_symmetric``, ``per_tensor_affine``, ``per_channel_symmetric``,
``per_channel_affine`` (and ``per_block_symmetric`` for blocked int4 weights).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..diagnostics import RecipeError

QSCHEMES = ("per_tensor_symmetric", "per_tensor_affine", "per_channel_symmetric", "per_channel_affine",
            "per_block_symmetric")
OBSERVERS = ("min_max", "moving_average", "percentile", "mse", "entropy", "histogram")
_DTYPE_RE = re.compile(r"^(?P<sign>[su])(?P<bits>\d+(?:\.\d+)?)$")
DTYPE_ALIASES = {"int8": "s8", "uint8": "u8", "int4": "s4", "uint4": "u4", "fp8": "fp8e4m3", "e4m3": "fp8e4m3",
                 "float8e4m3fn": "fp8e4m3", "fp8_e4m3": "fp8e4m3", "fp8e4m3fn": "fp8e4m3"}


@dataclass(frozen=True)
class QSpec:
    dtype: str = "s8"
    qscheme: str = "per_tensor_symmetric"
    observer: str | None = None  # activations only; None = target default
    observer_options: tuple[tuple[str, Any], ...] = ()
    narrow: bool | None = None  # None: weights narrow, activations full range
    block_size: int | None = None  # blocked int4 weights
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    # -- grid --------------------------------------------------------------------------------
    @property
    def fp8(self) -> bool:
        return self.dtype == "fp8e4m3"

    @property
    def signed(self) -> bool:
        return self.fp8 or self.dtype.startswith("s")

    @property
    def width(self) -> float:
        if self.fp8:
            return 8.0
        m = _DTYPE_RE.match(self.dtype)
        if m is None:
            raise RecipeError(f"'{self.dtype}' is not a dtype string (s8, u8, s4, s7.7, fp8e4m3)")
        return float(m.group("bits"))

    @property
    def bits(self) -> int:
        return int(math.ceil(self.width))

    @property
    def symmetric(self) -> bool:
        return self.qscheme.endswith("symmetric")

    @property
    def per_channel(self) -> bool:
        return self.qscheme.startswith("per_channel")

    @property
    def per_block(self) -> bool:
        return self.qscheme.startswith("per_block")

    def grid(self, narrow: bool) -> tuple[int, int]:
        """(qmin, qmax) of the integer grid."""
        if self.fp8:
            return (-448, 448)
        w = self.width
        if self.signed:
            top = int(math.floor(2 ** (w - 1)))
            qmin, qmax = -top, top - 1
            if narrow:
                qmin = -qmax
            return qmin, qmax
        return 0, int(math.floor(2 ** w)) - 1

    @property
    def storage(self) -> str:
        if self.fp8:
            return "float8e4m3fn"
        if self.block_size and self.bits <= 4:
            return "int4" if self.signed else "uint4"
        return "int8" if self.signed else "uint8"

    @property
    def act_storage(self) -> str:
        """The storage of an activation quantized with this spec: int4/uint4 (opset 21, saturating) for 4-bit
        activations, else as :attr:`storage`."""
        if not self.fp8 and self.bits <= 4:
            return "int4" if self.signed else "uint4"
        return self.storage

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.observer_options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype, "qscheme": self.qscheme}
        if self.observer:
            d["observer"] = self.observer
        for k, v in self.observer_options:
            d[k] = v
        if self.narrow is not None:
            d["narrow"] = self.narrow
        if self.block_size:
            d["block_size"] = self.block_size
        return d


def normalize_dtype(value: Any, where: str) -> str:
    s = str(value).strip().lower()
    s = DTYPE_ALIASES.get(s, s)
    if s == "fp8e4m3":
        return s
    m = _DTYPE_RE.match(s)
    if not m:
        import difflib

        close = difflib.get_close_matches(s, ["s8", "u8", "s4", "fp8e4m3", "s7.7"], n=1)
        raise RecipeError(f"{where}: unknown dtype '{value}'", hint=(f"did you mean '{close[0]}'? " if close else "")
                          + "dtypes: s8, u8, s2..s8, u2..u8, fractional widths like s7.7, fp8e4m3")
    w = float(m.group("bits"))
    if not 2 <= w <= 8:
        raise RecipeError(f"{where}: dtype '{value}' has {w:g} bits; 2 to 8 are supported")
    if m.group("sign") == "u" and "." in m.group("bits"):
        raise RecipeError(f"{where}: fractional widths are only defined for signed types ('{value}')")
    return s


_SPEC_KEYS = {"dtype", "qscheme", "observer", "narrow", "block_size", "block-size", "percentile", "bins",
              "averaging_constant", "averaging-constant", "range_method", "range-method", "symmetric", "granularity",
              "per_channel", "per-channel"}


def parse_qspec(data: Any, where: str, *, weight: bool) -> QSpec | None:
    """A QSpec from a recipe entry; ``float``/``null``/``none`` means unquantized (None)."""
    if data is None or (isinstance(data, str) and data.lower() in ("float", "none", "null", "fp32", "off")):
        return None
    if isinstance(data, str):
        data = {"dtype": data}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping like {{dtype: s8, qscheme: per_tensor_symmetric}} or 'float'")
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        import difflib

        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, sorted(_SPEC_KEYS), n=1)
        raise RecipeError(f"{where}: unknown key '{key}'", hint=(f"did you mean '{close[0]}'? " if close else "") +
                          "keys: dtype, qscheme, observer, percentile, bins, narrow, block_size")
    dtype = normalize_dtype(data.get("dtype", "s8"), where)
    default_scheme = "per_channel_symmetric" if weight else "per_tensor_symmetric"
    qscheme = str(data.get("qscheme", default_scheme)).lower()
    if "granularity" in data or "symmetric" in data or "per_channel" in data or "per-channel" in data:
        gran = data.get("granularity")
        pc = data.get("per_channel", data.get("per-channel"))
        if pc is not None:
            gran = "per_channel" if pc else "per_tensor"
        gran = gran or ("per_channel" if qscheme.startswith("per_channel") else "per_tensor")
        sym = data.get("symmetric", qscheme.endswith("symmetric"))
        qscheme = f"{gran}_{'symmetric' if sym else 'affine'}"
    if qscheme not in QSCHEMES:
        import difflib

        close = difflib.get_close_matches(qscheme, QSCHEMES, n=1)
        raise RecipeError(f"{where}: unknown qscheme '{qscheme}'",
                          hint=(f"did you mean '{close[0]}'? " if close else "") + "qschemes: " + ", ".join(QSCHEMES))
    observer = data.get("observer")
    if observer is not None:
        observer = str(observer).lower().replace("-", "_").replace("minmax", "min_max")
        if observer in ("kl", "kl_divergence"):
            observer = "entropy"
        if observer not in OBSERVERS:
            import difflib

            close = difflib.get_close_matches(observer, OBSERVERS, n=1)
            raise RecipeError(f"{where}: unknown observer '{data.get('observer')}'",
                              hint=(f"did you mean '{close[0]}'? " if close else "") + "observers: "
                              + ", ".join(OBSERVERS))
    opts = []
    for key in ("percentile", "bins", "averaging_constant", "averaging-constant", "range_method", "range-method"):
        if key in data:
            opts.append((key.replace("-", "_"), data[key]))
    if "percentile" in dict(opts):
        p = float(dict(opts)["percentile"])
        if not 0 < p <= 100:
            raise RecipeError(f"{where}: percentile must be in (0, 100], not {p}")
    narrow = data.get("narrow")
    block = data.get("block_size", data.get("block-size"))
    if block is not None:
        block = int(block)
        if block < 16 or block & (block - 1):
            raise RecipeError(f"{where}: block_size must be a power of two >= 16, not {block}")
        qscheme = "per_block_symmetric"
    if qscheme == "per_block_symmetric" and block is None:
        raise RecipeError(f"{where}: per_block_symmetric needs block_size")
    return QSpec(dtype, qscheme, observer, tuple(sorted(opts)), narrow, block)


def with_observer(spec: QSpec | None, observer: str | None, options: dict[str, Any] | None = None) -> QSpec | None:
    if spec is None:
        return None
    opts = dict(spec.observer_options)
    opts.update(options or {})
    return replace(spec, observer=observer or spec.observer, observer_options=tuple(sorted(opts.items())))


# --------------------------------------------------------------------------------------------
# quantization math (numpy; checked against onnx.reference in tests)
# --------------------------------------------------------------------------------------------


def round_half_even(x: np.ndarray) -> np.ndarray:
    return np.rint(x)


def symmetric_scale(amax: np.ndarray, qmax: float, *, floor: float = 1e-8) -> np.ndarray:
    """scale = amax / qmax, never zero (a zero scale is rejected by TensorRT and breaks division)."""
    amax = np.asarray(amax, dtype=np.float64)
    s = amax / qmax
    return np.where(s > floor, s, floor).astype(np.float32)


def affine_params(lo: np.ndarray, hi: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) with the range widened to include 0, as onnxruntime does."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    scale = (hi - lo) / float(qmax - qmin)
    scale = np.where(scale > 1e-8, scale, 1e-8)
    zp = np.clip(np.rint(qmin - lo / scale), qmin, qmax)
    return scale.astype(np.float32), zp


def quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear: x / scale in float32 (as onnxruntime and the reference do), round half to even,
    add the zero point, saturate."""
    q = round_half_even(np.asarray(x, np.float32) / np.asarray(scale, np.float32)).astype(np.float64)
    return np.clip(q + np.asarray(zp, np.float64), qmin, qmax)


def fake_quant(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | int, qmin: int, qmax: int) -> np.ndarray:
    return ((quantize(x, scale, zp, qmin, qmax) - zp) * scale).astype(np.float32)


def fp8_quantize(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    import ml_dtypes

    y = np.clip(np.asarray(x, np.float32) / np.asarray(scale, np.float32), -448.0, 448.0)
    return y.astype(ml_dtypes.float8_e4m3fn)


def storage_grid(dtype: Any) -> tuple[int, int, bool]:
    """(qmin, qmax, is_fp8) of a Q/DQ storage dtype (a numpy/ml_dtypes dtype or its name)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if "float8" in name:
        return -448, 448, True
    grids = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15),
             "int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-2**31, 2**31 - 1)}
    if name not in grids:
        raise ValueError(f"unsupported quantized storage type {name}")
    return grids[name] + (False,)


def broadcast_qparams(scale: np.ndarray, zp: np.ndarray | None, shape: tuple[int, ...], axis: int,
                       block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point (float64) broadcast against a tensor of ``shape``: per tensor as they are, per axis
    reshaped onto ``axis``, per block repeated along it (the one definition; DequantizeLinear on constants,
    the emitter's weight quantization and GPTQ's grids all use it)."""
    s = np.asarray(scale, np.float64)
    z = np.zeros_like(s) if zp is None else np.asarray(zp).astype(np.float64)
    if block:
        s = np.repeat(s, block, axis=axis).take(range(shape[axis]), axis=axis)
        z = np.repeat(z, block, axis=axis).take(range(shape[axis]), axis=axis)
    elif s.ndim == 1 and s.size > 1:
        bshape = [1] * len(shape)
        bshape[axis] = -1
        s, z = s.reshape(bshape), z.reshape(bshape)
    return s, z


def quantize_linear(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int = 1,
                    block: int | None = None, dtype: Any = "int8") -> np.ndarray:
    """ONNX QuantizeLinear on constants (per-tensor, per-axis or blocked) for any storage dtype.
    Integer grids come back as float64 values on the grid; fp8 as an ml_dtypes array."""
    x = np.asarray(x, np.float32)
    axis = axis + x.ndim if axis < 0 else axis
    s, z = broadcast_qparams(scale, zp, x.shape, axis, block)
    qmin, qmax, fp8 = storage_grid(dtype)
    if fp8:
        return fp8_quantize(x, s.astype(np.float32))
    return quantize(x, s.astype(np.float32), z, qmin, qmax)


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int = 1,
                      block: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear on constants (per-tensor, per-axis or blocked)."""
    q = np.asarray(q)
    axis = axis + q.ndim if axis < 0 and q.ndim else axis
    s, z = broadcast_qparams(scale, zp, q.shape, axis, block)
    return ((q.astype(np.float64) - z) * s).astype(np.float32)
