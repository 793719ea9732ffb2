"""Accuracy recovery passes: bias-correct (empirical and data-free), smooth-quant, mixed-precision, report."""

from __future__ import annotations

import json

import pytest

from qcompiler.api import compile_model
from qcompiler.calib import as_data_source
from qcompiler.diagnostics import DiagnosticEngine
from qcompiler.ir import copy_graph, load_model
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.quant.lint import lint_model
from qcompiler.testing import assert_outputs_close, run, sqnr_db


def _sqnr(digits, fp32_path, q) -> float:
    x = digits.load()["x_test"]
    return sqnr_db(run(load_model(str(fp32_path)), {"input": x})["logits"], run(q, {"input": x})["logits"])


@pytest.fixture
def w4(tmp_path):
    p = tmp_path / "w4.yaml"
    p.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    return str(p)


def test_empirical_bias_correction_improves_w4(zoo, digits, tmp_path, w4):
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 256))
    plain, bc = tmp_path / "plain.onnx", tmp_path / "bc.onnx"
    compile_model(str(src), str(plain), "trt-int8", config=w4, calib_data=calib)
    diags = DiagnosticEngine()
    compile_model(str(src), str(bc), "trt-int8{bias-correct=true}", config=w4, calib_data=calib, diagnostics=diags)
    assert any(d.code == "QC604" and "corrected" in d.message for d in diags)
    assert _sqnr(digits, src, load_model(bc)) > _sqnr(digits, src, load_model(plain)) + 0.5
    assert lint_model(bc).n_errors == 0


def test_data_free_bias_correction(zoo, digits, tmp_path, w4):
    src = zoo.onnx_path("resnet")
    out = tmp_path / "df.onnx"
    diags = DiagnosticEngine()
    compile_model(str(src), str(out), "fold-bn,calibrate,insert-qdq,bias-correct{mode=data-free}", config=w4,
                  calib_data=str(zoo.calibration_npz("resnet", 64)), diagnostics=diags)
    assert any("data-free bias correction adjusted" in d.message for d in diags)
    assert lint_model(out).n_errors == 0


def test_bias_correct_requires_quantized_graph():
    from qcompiler.diagnostics import FactOrderError
    from qcompiler.pm import PassManager

    with pytest.raises(FactOrderError):
        PassManager("bias-correct").check_facts(set())


def test_smooth_quant_is_exact_and_flattens_activation_channels(zoo, digits):
    g = load_model(zoo.onnx_path("transformer"))
    run_pipeline(g, "cleanup,fold-constants", PassContext())
    ref = copy_graph(g)
    x = digits.calibration_samples(64)
    ctx = PassContext(calib_data=as_data_source({"input": x}))
    res = run_pipeline(g, "smooth-quant{alpha=0.5}", ctx, verify_each=True)
    assert res.records[0].stats["sites"] >= 2  # the qkv and fc1 linears after each LayerNorm
    assert_outputs_close(ref, g, {"input": digits.load()["x_test"][:32]}, rtol=1e-4)
    assert any("activation range" in d.message for d in ctx.diagnostics)


def test_smooth_quant_then_quantize(zoo, digits, tmp_path):
    src = zoo.onnx_path("transformer")
    out = tmp_path / "sq.onnx"
    compile_model(str(src), str(out), "cleanup,fold-constants,smooth-quant,calibrate,insert-qdq,cleanup",
                  calib_data=str(zoo.calibration_npz("transformer", 128)))
    assert lint_model(out).n_errors == 0
    assert digits.evaluate(str(out)) >= digits.evaluate(str(src)) - 1.0


def test_mixed_precision_reaches_target(zoo, digits, tmp_path, w4):
    src, calib = zoo.onnx_path("mobilenetv2"), str(zoo.calibration_npz("mobilenetv2", 128))
    plain, mp = tmp_path / "plain.onnx", tmp_path / "mp.onnx"
    compile_model(str(src), str(plain), "trt-int8", config=w4, calib_data=calib)
    base = _sqnr(digits, src, load_model(plain))
    target = base + 3.0
    diags = DiagnosticEngine()
    res = compile_model(str(src), str(mp), f"trt-int8{{target-sqnr={target}}}", config=w4, calib_data=calib,
                        diagnostics=diags)
    from qcompiler.passes.mixed_precision import MixedPrecisionReport

    info = res.context.state.require(MixedPrecisionReport)
    assert 1 <= len(info.float_layers) <= 8 and info.sqnr >= target
    assert all(any(name in d.message for d in diags) for name in info.float_layers)
    assert _sqnr(digits, src, load_model(mp)) > base + 1.5
    assert lint_model(mp).n_errors == 0


def test_report_files(zoo, tmp_path):
    from qcompiler.cli import main

    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 64))
    q = tmp_path / "q.onnx"
    compile_model(str(src), str(q), "trt-int8", calib_data=calib)
    assert main(["report", str(src), str(q), "--calib-data", calib, "-o", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["output_sqnr_db"] > 25 and len(rep["layers"]) >= 8
    assert all("sensitivity_sqnr_db" in r for r in rep["layers"])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64" in html and "Layers (worst first)" in html
    assert (tmp_path / "rep" / "layers.png").stat().st_size > 1000
    assert "recipe" in rep


def test_compile_report_flag(zoo, tmp_path, capsys):
    from qcompiler.cli import main

    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 32))
    assert main(["compile", str(src), "-o", str(tmp_path / "q.onnx"), "--pipeline", "trt-int8", "--calib-data", calib,
                 "--report", "-q"]) == 0
    out = capsys.readouterr().out
    assert "SQNR" in out and "dB" in out
