"""calibrate: plan-driven tensors, batch-size independence, the statistics cache, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompiler.calib import CalibrationStats, as_data_source
from qcompiler.diagnostics import CalibrationError, FactOrderError
from qcompiler.ir import load_model
from qcompiler.pm import PassContext, run_pipeline


@pytest.fixture
def resnet(zoo_model):
    return zoo_model("resnet")


@pytest.mark.parametrize("method", ["min_max", "entropy", "percentile", "mse"])
def test_calibrate_pass_is_independent_of_batch_size(resnet, digits, method):
    x = digits.calibration_samples(64)
    results = []
    for bs, data in ((1, x), (4, x), (32, x), (32, x[::-1].copy())):
        g = load_model(resnet)
        ctx = PassContext(calib_data=as_data_source({"input": data}, batch_size=bs))
        run_pipeline(g, f"fold-bn,calibrate{{method={method}}}", ctx)
        results.append({t: (float(np.min(st.range[0])), float(np.max(st.range[1])))
                        for t, st in ctx.state.require(CalibrationStats).tensors.items()})
    assert all(r == results[0] for r in results[1:])
    assert len(results[0]) >= 6


def test_calibrate_observes_only_planned_tensors(resnet, digits):
    g = load_model(resnet)
    ctx = PassContext(calib_data=as_data_source({"input": digits.calibration_samples(16)}))
    run_pipeline(g, "fold-bn,calibrate", ctx)
    conv_inputs = {n.inputs[0].name for n in g.nodes if n.op == "Conv"}
    stats = ctx.state.require(CalibrationStats).tensors
    assert set(stats) <= conv_inputs | {n.inputs[i].name for n in g.nodes if n.op == "Add" for i in (0, 1)}
    assert "logits" not in stats


def test_cache_hit_and_stale(tmp_path, resnet, digits):
    cache = tmp_path / "stats.json"
    x = digits.calibration_samples(32)

    def go(data, method="entropy", pipe="fold-bn"):
        g = load_model(resnet)
        ctx = PassContext(calib_data=as_data_source({"input": data}), calib_cache=str(cache))
        res = run_pipeline(g, f"{pipe},calibrate{{method={method}}}", ctx)
        return res.records[-1].stats, ctx

    first, _ = go(x)
    assert first["cached"] == 0 and cache.exists()
    saved = json.loads(cache.read_text())
    second, ctx = go(x)
    assert second["cached"] == 1
    assert any(d.code == "QC404" and "reused" in d.message for d in ctx.diagnostics)
    # only the range method changed: histograms are reused
    third, _ = go(x, method="percentile")
    assert third["cached"] == 1
    # different data: stale, recalibrated, cache rewritten
    fourth, ctx = go(x[:16])
    assert fourth["cached"] == 0
    assert any("stale" in d.message for d in ctx.diagnostics)
    assert json.loads(cache.read_text())["key"] != saved["key"]
    # a different graph (no fold-bn): stale too
    fifth, _ = go(x[:16], pipe="cleanup")
    assert fifth["cached"] == 0
    assert CalibrationStats.load_cache(cache).samples == 16


def test_npz_cache_format(tmp_path, resnet, digits):
    cache = tmp_path / "stats.npz"
    for expect in (0, 1):
        g = load_model(resnet)
        ctx = PassContext(calib_data=as_data_source({"input": digits.calibration_samples(8)}), calib_cache=str(cache))
        res = run_pipeline(g, "calibrate", ctx)
        assert res.records[-1].stats["cached"] == expect


def test_errors_before_work(resnet):
    g = load_model(resnet)
    with pytest.raises(CalibrationError, match="needs calibration data"):
        run_pipeline(g, "calibrate", PassContext())
    with pytest.raises(FactOrderError):
        run_pipeline(g, "insert-qdq", PassContext())
    with pytest.raises(FactOrderError, match="invalidates"):
        run_pipeline(g, "calibrate,cle,insert-qdq", PassContext(allow_random_calibration=True))


def test_random_calibration_only_when_allowed(resnet):
    g = load_model(resnet)
    ctx = PassContext(allow_random_calibration=True)
    run_pipeline(g, "calibrate", ctx)
    assert any(d.code == "QC407" for d in ctx.diagnostics)


def _masked_attention():
    """q = xWq, k = xWk, v = xWv; softmax(q k^T + where(mask == 0, -inf, 0)) v Wo: the additive mask is -inf."""
    from ..builders import G

    b = G(seed=4)
    x = b.input("x", ["N", 8, 32])
    b.input("mask", ["N", 8], 7)
    q, k, v = (b.matmul(x, 32, 32) for _ in range(3))
    s = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 2, 1])])
    cond = b.node("Equal", ["mask", b.init(np.array(0, np.int64))])
    bias = b.node("Where", [cond, b.init(np.array(-np.inf, np.float32)), b.init(np.array(0.0, np.float32))])
    a = b.node("Add", [s, b.node("Unsqueeze", [bias, b.init(np.array([1], np.int64))])])
    o = b.node("MatMul", [b.node("Softmax", [a], axis=-1), v])
    b.output(b.matmul(o, 32, 32))
    return b.model()


@pytest.mark.parametrize("pipeline", ["ort-int8", "trt-int8"])
def test_a_tensor_with_infinite_values_stays_float_and_the_run_goes_on(tmp_path, pipeline):
    import onnx

    from qcompiler.api import compile_model
    from qcompiler.diagnostics import DiagnosticEngine
    from qcompiler.quant.lint import lint_model
    from qcompiler.testing import run, sqnr_db

    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(_masked_attention(), src)
    rng = np.random.default_rng(0)
    mask = np.ones((32, 8), np.int64)
    mask[:, 6:] = 0  # padding
    calib = tmp_path / "c.npz"
    np.savez(calib, x=rng.standard_normal((32, 8, 32)).astype(np.float32), mask=mask)
    diags = DiagnosticEngine()
    compile_model(src, out, pipeline, calib_data=str(calib), diagnostics=diags)
    if pipeline == "ort-int8":  # quantizes the mask Add's inputs: the -inf one must stay float
        assert any(d.code == "QC406" and "non-finite" in d.message and "stays float" in d.message for d in diags)
    feeds = {"x": rng.standard_normal((4, 8, 32)).astype(np.float32), "mask": mask[:4]}
    ref, got = run(load_model(src), feeds), run(load_model(out), feeds)
    (name,) = ref
    assert np.all(np.isfinite(got[name])) and sqnr_db(ref[name], got[name]) > 25
    if pipeline == "trt-int8":
        assert lint_model(out).n_errors == 0
