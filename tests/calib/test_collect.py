"""Collection through onnxruntime: exact against numpy on real intermediates, per-channel, sliced runs,
histogram subsampling.  (The calibrate pass itself: tests/passes/test_calibrate.py.)"""

from __future__ import annotations


import numpy as np
import pytest

from qcompiler.calib import ObserverConfig, as_data_source, collect
from qcompiler.ir import copy_graph
from qcompiler.testing import run

from ..builders import G


def _model():
    b = G(seed=1)
    x = b.input("x", ["N", 3, 8, 8])
    c1 = b.conv(x, 3, 8)
    r1 = b.relu(c1)
    c2 = b.conv(r1, 8, 8)
    b.output(b.add(c2, r1))
    return b.graph()


def _intermediates(g, x, batch=6):
    """All intermediate values via a copy with every tensor exposed, computed the way calibration
    computes them (same onnxruntime optimization level and batches: convolution kernels may differ in
    the last bit between levels and batch sizes)."""
    h = copy_graph(g)
    ts = h.tensors()
    h.outputs = [ts[n.outputs[0].name] for n in h.nodes]
    parts = [run(h, {"x": x[i:i + batch]}, opt_level="all") for i in range(0, len(x), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_min_max_exact_per_tensor_and_per_channel():
    g = _model()
    x = np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
    names = [n.outputs[0].name for n in g.nodes if n.op in ("Conv", "Relu")]
    reqs = {names[0]: ObserverConfig("min_max"), names[1]: ObserverConfig("min_max"),
            names[2]: ObserverConfig("min_max", axis=1)}
    stats = collect(g, reqs, as_data_source({"x": x}, batch_size=6))
    ref = _intermediates(g, x)
    assert float(stats[names[0]].min) == float(ref[names[0]].min())
    assert float(stats[names[0]].max) == float(ref[names[0]].max())
    # Relu output: non-negative by construction, only ReduceMax runs; the lower bound is 0
    assert float(stats[names[1]].min) == 0.0 and float(stats[names[1]].max) == float(ref[names[1]].max())
    np.testing.assert_array_equal(stats[names[2]].max, ref[names[2]].max(axis=(0, 2, 3)))
    np.testing.assert_array_equal(stats[names[2]].min, ref[names[2]].min(axis=(0, 2, 3)))
    assert stats[names[0]].count == 20


def test_histogram_of_graph_input_and_intermediate():
    g = _model()
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    name = next(n.outputs[0].name for n in g.nodes if n.op == "Conv")
    stats = collect(g, {"x": ObserverConfig("percentile", percentile=99.0),
                        name: ObserverConfig("percentile", percentile=99.0)}, as_data_source({"x": x}, batch_size=5))
    ref = _intermediates(g, x, batch=5)[name]
    assert stats["x"].hist.sum() == x.size and stats[name].hist.sum() == ref.size
    from qcompiler.calib import compute_range

    hi = float(compute_range(stats[name])[1])
    # the sample at rank ceil(0.99 n) lies in the bin whose upper edge is the clip value
    v = np.sort(np.abs(ref).ravel())[int(np.ceil(0.99 * ref.size)) - 1]
    w = stats[name].bin_width
    assert hi - w <= v < hi


@pytest.mark.parametrize("method,axis", [("min_max", 1), ("percentile", None), ("entropy", None),
                                         ("moving_average", None)])
def test_runs_in_slices_with_identical_statistics(monkeypatch, method, axis):
    """A batch whose exposed tensors exceed the run budget runs in slices; the statistics are the same
    (the moving average is per batch, so it never slices)."""
    import onnxruntime as ort

    from qcompiler.calib import compute_range
    from qcompiler.calib.collect import CollectOptions

    calls = []
    orig = ort.InferenceSession.run_with_ort_values

    def counting(self, names, feeds, *a, **k):
        calls.append(next(iter(feeds.values())).shape()[0])
        return orig(self, names, feeds, *a, **k)

    monkeypatch.setattr(ort.InferenceSession, "run_with_ort_values", counting)
    g = _model()
    x = np.random.default_rng(2).standard_normal((24, 3, 8, 8)).astype(np.float32)
    names = [n.outputs[0].name for n in g.nodes if n.op in ("Conv", "Relu")]
    reqs = {n: ObserverConfig(method, axis=axis) for n in names}
    out = []
    for budget in (0.0, 1e-3):  # 1e-3 MiB: one sample per run
        calls.clear()
        stats = collect(g, reqs, as_data_source({"x": x}, batch_size=12),
                        options=CollectOptions(batch_size=12, run_budget_mib=budget))
        out.append((list(calls), stats))
    assert out[0][0] == [12, 12]
    assert out[1][0] == ([12, 12] if method == "moving_average" else [1] * 24)
    for n in names:
        a, b = out[0][1][n], out[1][1][n]
        for u, v in zip(compute_range(a), compute_range(b)):
            np.testing.assert_array_equal(u, v)
        if a.hist is not None:
            np.testing.assert_array_equal(a.hist, b.hist)


@pytest.mark.parametrize("shape", [(1152, 7, 7), (96, 16, 16), (64, 56, 56), (7, 7, 1152), (3, 224, 224), (10,)])
def test_histogram_subsample_does_not_alias_with_the_layout(shape):
    """The auto stride shares no factor with the sample size, so a strided histogram sees every row, column
    and channel (a stride dividing H*W would only ever see one column of each feature map)."""
    from qcompiler.calib.collect import AUTO_SAMPLE_CAP, auto_stride, sample_view

    size = int(np.prod(shape))
    k = auto_stride(size)
    assert np.gcd(k, size) == 1 and k >= size / AUTO_SAMPLE_CAP
    idx = np.arange(size).reshape((1,) + shape)
    picked = sample_view(idx, 1, 0).reshape(-1)
    assert picked.size <= -(-size // k)
    for axis, dim in enumerate(shape):
        coords = np.unravel_index(picked, shape)[axis]
        assert len(np.unique(coords)) == dim, f"axis {axis} not fully covered"


def test_histogram_tail_of_a_few_large_channels_survives_subsampling():
    """Regression: a 7x7 map with a handful of large channels.  The 99.99th percentile from the subsampled
    histogram must stay close to the one of all values (it used to see only column 0, the border)."""
    from qcompiler.calib.collect import sample_view
    from qcompiler.calib.observers import TensorStats, compute_range

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1152, 7, 7)).astype(np.float32)
    x[:, :8] *= 20.0
    x[:, :, :, 0] *= 0.1  # the border column is quiet
    cfg = ObserverConfig(method="percentile")
    sub, full = TensorStats("t", cfg), TensorStats("t", cfg)
    for st, v in ((sub, sample_view(x, 32, 0)), (full, x)):
        st.update_minmax(x.min(), x.max(), x.size)
        st.update_hist(v, float(x.min()), float(x.max()))
    a_sub = float(np.max(np.abs(compute_range(sub)[1])))
    a_full = float(np.max(np.abs(compute_range(full)[1])))
    assert a_sub == pytest.approx(a_full, rel=0.2)
