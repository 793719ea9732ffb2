"""Observers: numpy references, determinism across batch size and order, exact shard merging."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.calib.observers import ObserverConfig, TensorStats, compute_range


def _data(kind: str, n: int = 200_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "relu":
        return np.maximum(rng.standard_normal(n), 0).astype(np.float32) * 3
    if kind == "laplace":
        return rng.laplace(0, 1, n).astype(np.float32)
    if kind == "outliers":
        x = rng.standard_normal(n).astype(np.float32)
        x[:20] *= 40
        return x
    raise ValueError(kind)


def _feed(cfg: ObserverConfig, chunks) -> TensorStats:
    st = TensorStats("t", cfg)
    for c in chunks:
        st.update_minmax(c.min(), c.max(), c.size)
        if cfg.needs_hist():
            st.update_hist(c)
    return st


def test_min_max_is_exact():
    x = _data("laplace")
    st = _feed(ObserverConfig("min_max"), np.array_split(x, 7))
    lo, hi = compute_range(st)
    assert float(lo) == float(x.min()) and float(hi) == float(x.max())


@pytest.mark.parametrize("kind", ["normal", "relu", "laplace", "outliers"])
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(kind, p):
    x = _data(kind)
    cfg = ObserverConfig("percentile", percentile=p)
    st = _feed(cfg, np.array_split(x, 5))
    _, hi = compute_range(st)
    ref = np.percentile(np.abs(x), p)
    assert abs(float(hi) - ref) <= st.bin_width + 1e-12


def _ref_hist(x: np.ndarray, bins: int) -> tuple[np.ndarray, float]:
    amax = float(np.max(np.abs(x)))
    R = 2.0 ** np.frexp(amax)[1]
    h, _ = np.histogram(np.abs(x), bins=bins, range=(0.0, R))
    return h, R / bins


def _ref_entropy(x: np.ndarray, bins: int = 2048, num_bits: int = 8) -> float:
    """A straightforward (slow, stride 1) numpy port of TensorRT's KL calibration on |x|."""
    h, w = _ref_hist(x, bins)
    nz = np.flatnonzero(h)
    h = h[: nz[-1] + 1].astype(np.float64)
    h[0] = h[1]
    nq = 2 ** (num_bits - 1)
    best, best_i = np.inf, None
    for i in range(nq, len(h) + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        idx = np.minimum((np.arange(i) * nq) // i, nq - 1)
        q = np.zeros(i)
        for j in range(nq):
            sel = idx == j
            nonzero = sel & (h[:i] != 0)
            if nonzero.any():
                q[nonzero] = h[:i][sel].sum() / nonzero.sum()
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        if np.any(q[m] == 0):
            continue
        kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        if kl <= best:
            best, best_i = kl, i
    return best_i * w


@pytest.mark.parametrize("kind", ["normal", "relu", "laplace"])
def test_entropy_matches_reference(kind):
    x = _data(kind, n=60_000)
    st = _feed(ObserverConfig("entropy", bins=512), [x])
    _, hi = compute_range(st)
    ref = _ref_entropy(x, bins=512)
    assert abs(float(hi) - ref) <= 2 * st.bin_width, (float(hi), ref)


def _mse_err(x: np.ndarray, amax: float) -> float:
    s = amax / 127
    q = np.clip(np.round(x / s), -128, 127) * s
    return float(np.mean((x.astype(np.float64) - q) ** 2))


def _ref_mse(x: np.ndarray, bins: int) -> float:
    """Brute force over every bin edge of the |x| histogram, evaluated on the data itself."""
    _, w = _ref_hist(x, bins)
    amax = float(np.max(np.abs(x)))
    cands = np.arange(1, int(np.ceil(amax / w)) + 1) * w
    errs = [_mse_err(x, a) for a in cands]
    return float(cands[int(np.argmin(errs))])


@pytest.mark.parametrize("kind", ["normal", "outliers", "relu"])
def test_mse_matches_reference(kind):
    """The chosen clip value is as good (quantization MSE on the data) as the brute-force optimum."""
    x = _data(kind, n=80_000)
    st = _feed(ObserverConfig("mse", bins=1024), [x])
    _, hi = compute_range(st)
    ref = _ref_mse(x, 1024)
    assert _mse_err(x, float(hi)) <= _mse_err(x, ref) * 1.01
    assert abs(float(hi) - ref) <= 0.05 * ref  # and it is close to it


@pytest.mark.parametrize("method", ["min_max", "percentile", "entropy", "mse"])
def test_independent_of_batch_size_and_order(method):
    x = _data("outliers", n=64 * 100).reshape(64, 100)
    cfg = ObserverConfig(method)
    results = []
    for bs in (1, 4, 32):
        chunks = [x[i:i + bs] for i in range(0, 64, bs)]
        results.append(_feed(cfg, chunks))
        results.append(_feed(cfg, chunks[::-1]))
    ranges = [tuple(float(v) for v in compute_range(s)) for s in results]
    assert len(set(ranges)) == 1, ranges
    if cfg.needs_hist():
        for s in results[1:]:
            assert np.array_equal(s.hist, results[0].hist) and s.hist_exp == results[0].hist_exp


def test_shards_merge_like_one_pass():
    x = _data("laplace", n=30_000)
    shards = np.array_split(x, 6)
    for method in ("min_max", "entropy", "moving_average"):
        cfg = ObserverConfig(method)
        one = _feed(cfg, shards)
        a = _feed(cfg, shards[:2])
        b = _feed(cfg, shards[2:5])
        c = _feed(cfg, shards[5:])
        merged = a.merge(b).merge(c)
        assert merged.count == one.count
        if one.hist is not None:
            assert np.array_equal(merged.hist, one.hist)
        lo1, hi1 = compute_range(one)
        lo2, hi2 = compute_range(merged)
        np.testing.assert_allclose([float(lo1), float(hi1)], [float(lo2), float(hi2)], rtol=1e-12)


def test_histogram_range_grows_without_losing_counts():
    st = TensorStats("t", ObserverConfig("histogram"))
    small = np.linspace(-1, 1, 1001, dtype=np.float32)
    big = np.linspace(-100, 100, 1001, dtype=np.float32)
    st.update_hist(small)
    e1 = st.hist_exp
    st.update_hist(big)
    assert st.hist_exp > e1
    assert st.hist.sum() == 2002


def test_moving_average_follows_ema():
    cfg = ObserverConfig("moving_average", averaging_constant=0.5)
    st = TensorStats("t", cfg)
    for lo, hi in [(-1, 1), (-3, 3), (-1, 1)]:
        st.update_minmax(np.float64(lo), np.float64(hi), 10)
    lo, hi = compute_range(st)
    # ema: 1 -> 0.5*1 + 0.5*3 = 2 -> 0.5*2 + 0.5*1 = 1.5
    assert float(hi) == pytest.approx(1.5) and float(lo) == pytest.approx(-1.5)


def test_affine_percentile_clips_both_tails():
    x = _data("normal") + 2.0
    cfg = ObserverConfig("percentile", percentile=99.9, symmetric=False, unsigned=True)
    st = _feed(cfg, [x])
    lo, hi = compute_range(st)
    assert abs(float(hi) - np.percentile(x, 99.9)) <= 2 * st.bin_width
    assert abs(float(lo) - np.percentile(x, 0.1)) <= 2 * st.bin_width


def test_serialization_round_trip():
    x = _data("relu", n=5000)
    st = _feed(ObserverConfig("entropy"), [x])
    again = TensorStats.from_dict(st.to_dict())
    assert np.array_equal(again.hist, st.hist) and again.hist_exp == st.hist_exp
    assert float(compute_range(again)[1]) == float(compute_range(st)[1])


def test_a_channel_count_that_changes_between_batches_is_an_error_naming_the_tensor():
    """(A Flatten over the batch axis: [1, N*C] per batch, so per-channel statistics cannot be merged.)"""
    from qcompiler.diagnostics import CalibrationError

    st = TensorStats("flat", ObserverConfig("min_max", axis=1))
    st.update_minmax(np.zeros(16), np.ones(16), 16)
    with pytest.raises(CalibrationError, match="'flat' has 16 channels on one batch and 112 on another") as e:
        st.update_minmax(np.zeros(112), np.ones(112), 112)
    assert e.value.diagnostic.code == "QC409"


def test_smooth_quant_skips_with_a_warning_when_channels_depend_on_the_batch(tmp_path):
    """smooth-quant measures per channel; on a model whose Gemm input is Flatten(axis=0) (its width is the batch
    times the channels) it warns and changes nothing instead of failing the compile."""
    from qcompiler.calib.data import as_data_source
    from qcompiler.pm import PassContext, run_pipeline

    from ..builders import G

    b = G()
    x = b.input("x", ["N", 4])
    flat = b.node("Flatten", [b.node("Relu", [x])], axis=0)
    b.output(b.node("MatMul", [flat, b.init(b.rand(4, 8))]))
    g = b.graph(infer_outputs=False)
    rng = np.random.default_rng(0)
    scale = np.array([1, 1, 1, 50], np.float32)  # an outlier channel: smooth-quant would act
    feeds = [{"x": rng.standard_normal((1, 4)).astype(np.float32) * scale},
             {"x": rng.standard_normal((3, 4)).astype(np.float32) * scale}]
    ctx = PassContext(calib_data=as_data_source(feeds, layout="feed"))
    res = run_pipeline(g, "smooth-quant{layers=all}", ctx)
    assert not res.records[0].modified
    warn = [d for d in ctx.diagnostics if d.code == "QC302" and "channels on one batch" in d.message]
    assert warn and warn[0].severity.name == "WARNING"
