"""Observers: per-tensor statistics updated batch by batch, merged across shards, turned into ranges.

State kept per tensor (never the activations themselves):

* ``min`` / ``max``: running extrema (per channel when ``axis`` is set);
* ``ema``: the moving-average state of per-batch min/max (``moving_average``), kept in a form that
  merges exactly across shards (see :class:`EmaState`);
* ``hist``: a signed histogram with ``2*bins`` bins over ``[-R, R)`` where ``R`` is a power of two
  larger than every |x| seen.  A new batch with larger values doubles ``R`` by merging pairs of bins,
  which loses no counts.  Because ``R`` is a power of two and bin indices are ``floor(x * bins / R)``
  (an exact computation in floating point), the final histogram is bit-identical whatever the batch
  size or order of the data, and merging shards equals one pass over all the data.

Range methods (``compute_range``) read only this state, so one histogram serves ``percentile``,
``mse`` and ``entropy`` without re-running the model (the ``histogram`` observer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HIST_METHODS = ("percentile", "mse", "entropy", "histogram")
METHODS = ("min_max", "moving_average") + HIST_METHODS


@dataclass(frozen=True)
class ObserverConfig:
    method: str = "min_max"
    axis: int | None = None  # per-channel axis (min/max methods only)
    bins: int = 2048  # histogram bins per sign (abs histogram resolution over [0, R))
    percentile: float = 99.99
    averaging_constant: float = 0.01
    range_method: str = "entropy"  # what `histogram` turns into a range
    num_bits: int = 8
    symmetric: bool = True
    unsigned: bool = False  # quantized grid [0, 2^bits - 1] (affine u8)
    narrow: bool = False
    fp8: bool = False  # E4M3 grid for mse (max 448)
    histogram: bool = False  # collect a histogram even for min_max/moving_average (other ranges can be computed)

    def needs_hist(self) -> bool:
        return self.method in HIST_METHODS or self.histogram

    def key(self) -> dict[str, Any]:
        """What changes the collected state (not how a range is chosen from it)."""
        return {"hist": self.needs_hist(), "axis": self.axis, "bins": self.bins if self.needs_hist() else None,
                "ema": self.averaging_constant if self.method == "moving_average" else None}


@dataclass
class EmaState:
    """EMA of per-batch values, mergeable: value = S + (1-c)^n * first (first batch initialises)."""

    c: float
    n: int = 0
    s: np.ndarray | None = None
    first: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if self.s is None:
            self.first = x.copy()
            self.s = self.c * x
        else:
            self.s = (1.0 - self.c) * self.s + self.c * x
        self.n += 1

    def merge(self, later: "EmaState") -> "EmaState":
        if self.s is None:
            return later
        if later.s is None:
            return self
        s = (1.0 - self.c) ** later.n * self.s + later.s
        return EmaState(self.c, self.n + later.n, s, self.first)

    @property
    def value(self) -> np.ndarray:
        if self.s is None or self.first is None:
            raise ValueError("the moving average saw no batch")
        return self.s + (1.0 - self.c) ** self.n * self.first


#: smallest histogram range 2**MIN_EXP: keeps bins / R finite in float32 (all-zero tensors included)
MIN_EXP = -100


def _pow2_above(amax: float) -> int:
    """Exponent e with 2**e > amax (strictly), for amax >= 0."""
    if amax <= 0.0 or not math.isfinite(amax):
        return MIN_EXP
    m, e = math.frexp(amax)  # amax = m * 2**e, 0.5 <= m < 1
    return max(e, MIN_EXP)


@dataclass
class TensorStats:
    name: str
    config: ObserverConfig
    count: int = 0  # elements seen
    batches: int = 0
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    ema_min: EmaState | None = None
    ema_max: EmaState | None = None
    hist: np.ndarray | None = None  # int64 [2*bins]
    hist_exp: int = -100  # R = 2**hist_exp
    range: tuple[np.ndarray, np.ndarray] | None = None  # chosen (lo, hi) after finalize
    #: index of the first sample on which the tensor took NaN or +-inf (it cannot be quantized), else None
    non_finite: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- updates ---------------------------------------------------------------------------
    def update_minmax(self, mn: np.ndarray, mx: np.ndarray, count: int) -> None:
        mn = np.asarray(mn, dtype=np.float64)
        mx = np.asarray(mx, dtype=np.float64)
        if self.min is not None and self.min.shape != mn.shape:
            from ..diagnostics import CalibrationError

            raise CalibrationError(f"tensor '{self.name}' has {self.min.size} channels on one batch and {mn.size} on "
                                   f"another (axis {self.config.axis}): its channel count depends on the batch",
                                   code="QC409", node=self.name,
                                   hint="the model's shapes change with the batch size here (a Flatten or Reshape "
                                        "over the batch axis?); check the model, or calibrate with one fixed batch "
                                        "size (--batch-size)")
        self.min = mn.copy() if self.min is None else np.minimum(self.min, mn)
        self.max = mx.copy() if self.max is None else np.maximum(self.max, mx)
        if self.config.method == "moving_average":
            if self.ema_min is None or self.ema_max is None:
                self.ema_min = EmaState(self.config.averaging_constant)
                self.ema_max = EmaState(self.config.averaging_constant)
            self.ema_min.update(mn)
            self.ema_max.update(mx)
        self.count += int(count)
        self.batches += 1

    def update_hist(self, x: np.ndarray, mn: float | None = None, mx: float | None = None) -> None:
        """Add a batch of values (any shape) to the histogram (and min/max when not given)."""
        x = np.asarray(x)
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        if mn is None or mx is None:
            mn, mx = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ValueError(f"non-finite values in tensor '{self.name}'")
        B = self.config.bins
        e = _pow2_above(max(abs(mn), abs(mx)))
        if self.hist is None:
            self.hist = np.zeros(2 * B, dtype=np.int64)
            self.hist_exp = e
        elif e > self.hist_exp:
            self.hist = _rebin(self.hist, e - self.hist_exp, B)
            self.hist_exp = e
        if x.size:
            # (x may be a strided view: every k-th element of each sample)
            # scale = B / R with R a power of two: the same rounding of x*B happens whatever R is, and
            # floor(floor(a / 2^e) / 2^k) == floor(a / 2^(e+k)), so re-binning later is exact
            scale = math.ldexp(float(B), -self.hist_exp)
            y = np.multiply(x, x.dtype.type(scale))
            np.floor(y, out=y)
            idx = y.astype(np.int32).reshape(-1)
            idx += B  # in [0, 2B): |x| <= amax < R by construction of R
            np.clip(idx, 0, 2 * B - 1, out=idx)  # only guards against mn/mx given wrongly by a caller
            self.hist += np.bincount(idx, minlength=2 * B)[: 2 * B]

    # -- merging ---------------------------------------------------------------------------
    def merge(self, other: "TensorStats") -> "TensorStats":
        """Combine with the stats of a later shard of the same data (exact for min/max/histograms)."""
        out = TensorStats(self.name, self.config, self.count + other.count, self.batches + other.batches)
        marks = [v for v in (self.non_finite, other.non_finite) if v is not None]
        if marks:  # sample indices are absolute (a shard's batches number their samples from its start)
            out.non_finite = min(marks)
        for key, fn in (("min", np.minimum), ("max", np.maximum)):
            a, b = getattr(self, key), getattr(other, key)
            setattr(out, key, b if a is None else a if b is None else fn(a, b))
        if self.ema_min is not None or other.ema_min is not None:
            e0 = EmaState(self.config.averaging_constant)
            out.ema_min = (self.ema_min or e0).merge(other.ema_min or e0)
            out.ema_max = (self.ema_max or e0).merge(other.ema_max or e0)
        if self.hist is not None and other.hist is not None:
            e = max(self.hist_exp, other.hist_exp)
            B = self.config.bins
            out.hist = _rebin(self.hist, e - self.hist_exp, B) + _rebin(other.hist, e - other.hist_exp, B)
            out.hist_exp = e
        elif self.hist is not None or other.hist is not None:
            src = self if self.hist is not None else other
            out.hist, out.hist_exp = src.histogram().copy(), src.hist_exp
        return out

    # -- views -----------------------------------------------------------------------------
    @property
    def bin_width(self) -> float:
        return 2.0 ** self.hist_exp / self.config.bins

    def histogram(self) -> np.ndarray:
        """The signed histogram (an error when this observer collected none)."""
        if self.hist is None:
            raise ValueError(f"no histogram was collected for '{self.name}' (collect with a histogram observer)")
        return self.hist

    def abs_hist(self) -> np.ndarray:
        """Counts of |x| in [j*w, (j+1)*w), j = 0..bins-1."""
        B = self.config.bins
        h = self.histogram()
        return h[B:] + h[:B][::-1]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "count": self.count, "batches": self.batches,
                             "config": self.config.__dict__}
        for key in ("min", "max"):
            v = getattr(self, key)
            d[key] = None if v is None else np.asarray(v).tolist()
        if self.ema_min is not None and self.ema_max is not None:
            d["ema"] = {"c": self.ema_min.c, "n": self.ema_min.n,
                        "min": [np.asarray(self.ema_min.s).tolist(), np.asarray(self.ema_min.first).tolist()],
                        "max": [np.asarray(self.ema_max.s).tolist(), np.asarray(self.ema_max.first).tolist()]}
        if self.hist is not None:
            nz = np.flatnonzero(self.hist)
            d["hist"] = {"exp": self.hist_exp, "index": nz.tolist(), "count": self.hist[nz].tolist()}
        if self.range is not None:
            d["range"] = [np.asarray(self.range[0]).tolist(), np.asarray(self.range[1]).tolist()]
        if self.non_finite is not None:
            d["non_finite"] = self.non_finite
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TensorStats":
        cfg = ObserverConfig(**d["config"])
        st = TensorStats(d["name"], cfg, int(d["count"]), int(d["batches"]))
        st.min = None if d.get("min") is None else np.asarray(d["min"], dtype=np.float64)
        st.max = None if d.get("max") is None else np.asarray(d["max"], dtype=np.float64)
        if "ema" in d:
            e = d["ema"]
            st.ema_min = EmaState(e["c"], e["n"], np.asarray(e["min"][0]), np.asarray(e["min"][1]))
            st.ema_max = EmaState(e["c"], e["n"], np.asarray(e["max"][0]), np.asarray(e["max"][1]))
        if "hist" in d:
            h = np.zeros(2 * cfg.bins, dtype=np.int64)
            h[np.asarray(d["hist"]["index"], dtype=np.int64)] = np.asarray(d["hist"]["count"], dtype=np.int64)
            st.hist, st.hist_exp = h, int(d["hist"]["exp"])
        if "range" in d:
            st.range = (np.asarray(d["range"][0]), np.asarray(d["range"][1]))
        st.non_finite = d.get("non_finite")
        return st


def _rebin(hist: np.ndarray, k: int, B: int) -> np.ndarray:
    """Histogram over [-R, R) re-expressed over [-R*2^k, R*2^k) (bins merge in groups of 2^k)."""
    if k <= 0:
        return hist.copy()
    j = np.arange(2 * B, dtype=np.int64) - B
    new = (j >> k) + B  # arithmetic shift = floor division by 2^k
    return np.bincount(new, weights=hist, minlength=2 * B).astype(np.int64)[: 2 * B]


# --------------------------------------------------------------------------------------------
# ranges
# --------------------------------------------------------------------------------------------


def qmax_for(cfg: ObserverConfig) -> float:
    if cfg.fp8:
        return 448.0
    if cfg.unsigned:
        return float(2 ** cfg.num_bits - 1)
    return float(2 ** (cfg.num_bits - 1) - (1 if cfg.narrow else 0))


def compute_range(st: TensorStats, method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the quantization range for a tensor: per-channel arrays or scalars (0-d arrays)."""
    cfg = st.config
    method = method or cfg.method
    if method == "histogram":
        method = cfg.range_method
    if st.min is None or st.max is None:
        raise ValueError(f"no statistics were collected for '{st.name}'")
    if method == "min_max":
        return np.asarray(st.min), np.asarray(st.max)
    if method == "moving_average":
        if st.ema_min is None or st.ema_max is None:
            return np.asarray(st.min), np.asarray(st.max)
        return np.asarray(st.ema_min.value), np.asarray(st.ema_max.value)
    if st.hist is None:
        raise ValueError(f"'{method}' needs a histogram for '{st.name}' (collect with a histogram observer)")
    lo_obs, hi_obs = float(np.min(st.min)), float(np.max(st.max))
    if cfg.symmetric or method == "entropy":
        amax = {"percentile": _amax_percentile, "mse": _amax_mse, "entropy": _amax_entropy}[method](st)
        amax = min(amax, max(abs(lo_obs), abs(hi_obs)))
        if lo_obs >= 0.0 and not cfg.symmetric:
            return np.asarray(0.0), np.asarray(amax)
        return np.asarray(-amax if lo_obs < 0 else 0.0), np.asarray(amax)
    # affine: clip each tail separately
    if method == "percentile":
        lo, hi = _percentile_signed(st, 100.0 - cfg.percentile), _percentile_signed(st, cfg.percentile)
    else:  # mse
        lo, hi = _affine_mse(st)
    return np.asarray(max(lo, lo_obs)), np.asarray(min(hi, hi_obs))


def _percentile_signed(st: TensorStats, p: float) -> float:
    h = st.histogram().astype(np.float64)
    cdf = np.cumsum(h)
    target = math.ceil(p / 100.0 * cdf[-1] - 1e-9 * cdf[-1])  # integer rank (float noise in p/100 * n)
    j = int(np.searchsorted(cdf, target, side="left"))
    j = min(j, len(h) - 1)
    B = st.config.bins
    return (j - B + 1) * st.bin_width


def _amax_percentile(st: TensorStats) -> float:
    h = st.abs_hist().astype(np.float64)
    cdf = np.cumsum(h)
    if cdf[-1] == 0:
        return 0.0
    target = math.ceil(st.config.percentile / 100.0 * cdf[-1] - 1e-9 * cdf[-1])
    j = int(np.searchsorted(cdf, target, side="left"))
    return (min(j, len(h) - 1) + 1) * st.bin_width


def _trimmed(st: TensorStats) -> np.ndarray:
    h = st.abs_hist()
    nz = np.flatnonzero(h)
    return h[: (nz[-1] + 1) if nz.size else 1].astype(np.float64)


def _candidates(n: int, start: int, target: int = 512) -> np.ndarray:
    stride = max(1, (n - start) // target)
    return np.unique(np.concatenate([np.arange(start, n + 1, stride), [n]]))


def _refine(best: int, n: int, start: int, fn, coarse: np.ndarray) -> int:
    stride = int(coarse[1] - coarse[0]) if len(coarse) > 1 else 1
    if stride <= 1:
        return best
    lo, hi = max(start, best - stride), min(n, best + stride)
    vals = [(fn(i), -i) for i in range(lo, hi + 1)]
    return -min(vals)[1]


def _amax_mse(st: TensorStats) -> float:
    """Clip value (a bin edge) minimising the expected quantization MSE of |x| on the target grid."""
    h = _trimmed(st)
    n = len(h)
    w = st.bin_width
    centers = (np.arange(n) + 0.5) * w
    qmax = qmax_for(st.config)
    if st.config.unsigned and not st.config.symmetric:
        qmax = qmax  # |x| of a non-negative tensor on [0, 2^b - 1]
    fp8 = st.config.fp8

    def err(i: int) -> float:
        amax = i * w
        if amax <= 0:
            return float("inf")
        if fp8:
            q = _fp8_round(np.minimum(centers, amax) * (448.0 / amax)) * (amax / 448.0)
        else:
            s = amax / qmax
            q = np.minimum(np.round(centers / s), qmax) * s
        return float(np.sum(h * (centers - q) ** 2))

    start = max(1, n // 16)
    cands = _candidates(n, start)
    errs = np.array([err(int(i)) for i in cands])
    best = int(cands[int(np.argmin(errs))])
    best = _refine(best, n, start, err, cands)
    return best * w


def _affine_mse(st: TensorStats) -> tuple[float, float]:
    assert st.min is not None and st.max is not None  # compute_range checked
    lo, hi = float(np.min(st.min)), float(np.max(st.max))
    B = st.config.bins
    h = st.histogram().astype(np.float64)
    centers = (np.arange(2 * B) - B + 0.5) * st.bin_width
    qmax = float(2 ** st.config.num_bits - 1)
    best = (float("inf"), lo, hi)
    for frac in np.linspace(0.3, 1.0, 141):
        a, b = lo * frac, hi * frac
        if b - a <= 0:
            continue
        s = (b - a) / qmax
        zp = np.round(-a / s)
        q = (np.clip(np.round(centers / s) + zp, 0, qmax) - zp) * s
        e = float(np.sum(h * (centers - q) ** 2))
        if e < best[0]:
            best = (e, a, b)
    return best[1], best[2]


def _amax_entropy(st: TensorStats) -> float:
    """TensorRT's entropy calibration: the clip threshold minimising KL(P || Q) between the clipped
    reference distribution and its quantized version (|x| histogram, 2^(bits-1) quantized bins)."""
    h = _trimmed(st)
    if len(h) > 1:
        h[0] = h[1]  # as TensorRT / pytorch-quantization: ignore the spike of exact zeros (ReLU)
    n = len(h)
    nq = 2 ** (st.config.num_bits - 1) if not st.config.unsigned else 2 ** st.config.num_bits
    if n <= nq:
        return n * st.bin_width
    total_outliers = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # sum of h[i:] for each i

    def kl(i: int) -> float:
        p = h[:i].copy()
        p[i - 1] += total_outliers[i]
        nonzero = p != 0
        # quantize the first i bins of h into nq groups; spread each group's mass over its nonzero bins
        idx = np.minimum(np.floor(np.arange(i) * nq / i).astype(np.int64), nq - 1)
        src = h[:i]
        sums = np.bincount(idx, weights=src, minlength=nq)
        cnt = np.bincount(idx, weights=(src != 0).astype(np.float64), minlength=nq)
        q = np.where(src != 0, sums[idx] / np.maximum(cnt[idx], 1.0), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            return float("inf")
        p = p / ps
        q = q / qs
        mask = nonzero
        qm = q[mask]
        if np.any(qm == 0):
            return float("inf")
        return float(np.sum(p[mask] * np.log(p[mask] / qm)))

    start = nq
    cands = _candidates(n, start)
    vals = np.array([kl(int(i)) for i in cands])
    best = int(cands[len(vals) - 1 - int(np.argmin(vals[::-1]))])  # the last minimum, as TensorRT
    best = _refine(best, n, start, kl, cands)
    return best * st.bin_width


def _fp8_round(x: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return np.asarray(x, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
