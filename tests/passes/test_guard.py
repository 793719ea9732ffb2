"""guard: healthy models are left alone; a tensor a calibrator ruined gets another range (free) or goes float
(within the MAC budget); outputs made by a Concat are judged part by part; every decision is visible."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompiler.api import compile_model
from qcompiler.diagnostics import DiagnosticEngine, Severity
from qcompiler.ir import load_model
from qcompiler.passes.guard import GuardReport
from qcompiler.quant.judge import Judge, output_parts
from qcompiler.quant.lint import lint_model
from qcompiler.testing import run, sqnr_db

from ..builders import G


def _tailed(tmp_path, rare: float = 30.0):
    """x -> Gemm(32) -> Relu -> Gemm(32) -> Relu -> Gemm(16), x ~ N(0, 1).  Hidden unit 5 of the first layer is
    ``relu(rare * (x0 - 2.5))``: it fires on about one sample in 160, with values ``rare`` times larger than the
    other units, and the next layer amplifies it.  Percentile and entropy clip it away; with ``rare`` large,
    min_max coarsens every other unit to nothing instead."""
    b = G(seed=5)
    x = b.input("x", ["N", 32])
    w1 = b.rand(32, 32, scale=0.2)
    w1[5] = 0.0
    w1[5, 0] = rare
    b1 = np.zeros(32, np.float32)
    b1[5] = -2.5 * rare
    h = b.relu(b.node("Gemm", [x, b.init(w1, name="w1"), b.init(b1, name="b1")], transB=1, name="fc1"))
    w2 = b.rand(32, 32, scale=0.2)
    w2[:, 5] *= 4.0
    h = b.relu(b.node("Gemm", [h, b.init(w2, name="w2")], transB=1, name="fc2"))
    y = b.node("Gemm", [h, b.init(b.rand(16, 32, scale=0.2), name="w3")], transB=1, name="fc3")
    b.output(y)
    src = tmp_path / "m.onnx"
    onnx.save(b.model(), src)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((256, 32)).astype(np.float32)
    data[:, 0] = np.clip(data[:, 0], -2.4, 2.4)
    data[::16, 0] = 3.5  # the tail: 16 samples of 256, two in each guard evaluation batch of 16
    calib = tmp_path / "c.npz"
    np.savez(calib, x=data)
    return src, calib, data


def _compile(src, out, pipeline, calib):
    diags = DiagnosticEngine()
    res = compile_model(src, out, pipeline, calib_data=str(calib), diagnostics=diags)
    return res, diags


def test_a_healthy_model_is_left_exactly_as_it_is(zoo, tmp_path):
    from qcompiler.testing import canonical_text

    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 64)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    res, diags = _compile(src, a, "trt-int8", calib)
    _compile(src, b, "trt-int8{guard=off}", calib)
    assert canonical_text(load_model(a)) == canonical_text(load_model(b))  # the same graph, every value
    rep = res.context.state.get(GuardReport)
    assert rep.result.healthy_before and not rep.result.decisions and rep.result.evaluations == 1
    assert any(d.code == "QC604" and "every output is healthy" in d.message for d in diags)


def test_a_clipped_tail_gets_its_full_range_back(tmp_path):
    """entropy (TensorRT's own calibrator) clips the rare large activations that decide the output on those
    samples: the guard gives that tensor a range that keeps them (no float compute) and the output recovers."""
    src, calib, data = _tailed(tmp_path)
    off, on = tmp_path / "off.onnx", tmp_path / "on.onnx"
    _compile(src, off, "trt-int8{calib=entropy guard=off smooth=off}", calib)
    res, diags = _compile(src, on, "trt-int8{calib=entropy smooth=off}", calib)
    rep = res.context.state.get(GuardReport).result
    assert not rep.healthy_before and rep.worst_before < 20
    assert rep.decisions and all(d.remedy.startswith("range=") for d in rep.decisions)
    assert rep.float_macs_fraction == 0.0 and rep.worst_after >= 20
    ref_out = run(load_model(src), {"x": data})
    k = next(iter(ref_out))
    ref = ref_out[k]
    s_off = sqnr_db(ref, run(load_model(off), {"x": data})[k])
    s_on = sqnr_db(ref, run(load_model(on), {"x": data})[k])
    assert s_on > s_off + 5
    assert any(d.code == "QC604" and "range" in d.message for d in diags)
    assert lint_model(on).n_errors == 0


def test_float_within_the_budget_and_none_without_one(tmp_path):
    """The rare value is about 1000x the others, which matter too: no range carries both (min_max loses the small ones,
    a clipped range the large one), and min_max calibration keeps no histogram to try others with.  Float is the
    remedy: taken when the budget allows the layer that reads the tensor, refused with a warning when it does
    not."""
    src, calib, data = _tailed(tmp_path, rare=2000.0)
    ok, none = tmp_path / "ok.onnx", tmp_path / "none.onnx"
    res, diags = _compile(src, ok, "calibrate{method=min_max},insert-qdq,guard{budget=0.6}", calib)
    rep = res.context.state.get(GuardReport).result
    assert not rep.healthy_before
    floats = [d for d in rep.decisions if d.remedy == "float"]
    assert floats and not [d for d in rep.decisions if d.remedy != "float"]
    assert 0 < rep.float_macs_fraction <= 0.6 and rep.worst_after > rep.worst_before + 10
    g = load_model(ok)
    layer = next(n for n in g.nodes if n.name == floats[0].layers[0])
    assert not layer.inputs[1].inputs  # the FP32 weight, no DequantizeLinear
    assert any(d.code == "QC504" and "guard keeps" in d.message and "% of MACs" in d.message for d in diags)
    res2, diags2 = _compile(src, none, "calibrate{method=min_max},insert-qdq,guard{budget=0}", calib)
    rep2 = res2.context.state.get(GuardReport).result
    assert not rep2.decisions and rep2.worst_after < 20
    assert any(d.severity == Severity.WARNING and d.code == "QC604" and "budget 0 %" in d.message for d in diags2)


def test_concat_outputs_are_judged_by_part():
    """[boxes 0..600 | scores 0..1] in one output: the scores' error is invisible in the whole output's SQNR and
    plain in its own part's."""
    b = G(seed=1)
    x = b.input("x", ["N", 8])
    boxes = b.node("Mul", [b.node("Gemm", [x, b.init(b.rand(4, 8), name="wb")], transB=1),
                          b.init(np.float32(300.0), name="k")])
    scores = b.node("Sigmoid", [b.node("Gemm", [x, b.init(b.rand(3, 8), name="ws")], transB=1)])
    y = b.node("Concat", [boxes, scores], axis=1, name="out")
    b.output(y)
    g = b.graph()
    parts = output_parts(g)
    assert [(p.name, p.form) for p in parts] == [(f"{y}[0:4]", "values"), (f"{y}[4:7]", "probabilities")]
    xs = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    ref = run(g, {"x": xs})
    got = {y: ref[y].copy()}
    got[y][:, 4:] += 0.2  # scores off by 0.2: a disaster for a detector
    sq = Judge(parts, [ref]).health([got])
    assert sq[f"{y}[0:4]"] > 100 and sq[f"{y}[4:7]"] < 10
    assert sqnr_db(ref[y], got[y]) > 30  # the whole output hides it


@pytest.mark.slow
@pytest.mark.parametrize("name, gain", [("detector", 1.0), ("encoder", 5.0)])
def test_hard_models_recover_from_a_bad_calibrator(name, gain, tmp_path):
    """entropy without smoothing ruins the stand-ins' scores/embeddings; the guard recovers part of it with new
    ranges and float within 2 % of the MACs.  (The detector's head is judged by the F1 of its decoded detections,
    -10 log10 of the disagreement: 8.95 -> 10.25 dB on the judged samples is 12.7 % -> 9.4 %, and F1 on the
    evaluation set 0.907 -> 0.943.)"""
    from qcompiler.zoo import hard

    m = hard.get(name)
    src, calib = m.onnx_path(), m.calib_data(128)
    off, on = tmp_path / "off.onnx", tmp_path / "on.onnx"
    compile_model(src, off, "trt-int8{calib=entropy smooth=off guard=off}", calib_data=str(calib))
    res = compile_model(src, on, "trt-int8{calib=entropy smooth=off}", calib_data=str(calib))
    rep = res.context.state.get(GuardReport).result
    assert rep.float_macs_fraction <= 0.02 and rep.worst_after > rep.worst_before + gain
    assert m.evaluate(src, on)["metric"] > m.evaluate(src, off)["metric"] + 0.02
    assert lint_model(on).n_errors == 0


def test_a_model_that_does_not_run_on_the_data_is_an_input_error(tmp_path):
    """A model whose last node breaks on the data (a Reshape that holds only for some batch sizes) is the model's
    problem (QC406, exit 1), not a bug in a pass: calibrate says so when it runs the whole model (the named
    pipelines keep its outputs for the guard), the guard's FP32 run when calibration ran only what its
    statistics need."""
    from qcompiler.diagnostics import CalibrationError

    b = G(seed=1)
    x = b.input("x", ["N", 32])
    h = b.gemm(b.relu(b.gemm(x, 32, 32)), 32, 16)
    y = b.node("Reshape", [h, b.init(np.array([3, -1], np.int64), name="bad")], name="broken")
    b.output(y)
    src = tmp_path / "m.onnx"
    onnx.save(b.model(), src)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32))
    with pytest.raises(CalibrationError) as e:
        _compile(src, tmp_path / "q.onnx", "trt-int8", calib)
    assert e.value.code == "QC406" and "'broken'" in str(e.value) and "onnxruntime failed" in str(e.value)
    with pytest.raises(CalibrationError) as e:
        _compile(src, tmp_path / "q.onnx", "calibrate{histograms=true},insert-qdq,guard", calib)
    assert e.value.code == "QC406" and "'broken'" in str(e.value) and "does not run" in str(e.value)
    assert not (tmp_path / "q.onnx").exists()
