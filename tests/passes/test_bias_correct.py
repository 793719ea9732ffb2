"""bias-correct: empirical (calibration data) and data-free (BatchNorm statistics) corrections."""

from __future__ import annotations


import pytest

from qcompiler.api import compile_model
from qcompiler.diagnostics import DiagnosticEngine
from qcompiler.ir import load_model
from qcompiler.quant.lint import lint_model

@pytest.fixture
def w4(tmp_path):
    p = tmp_path / "w4.yaml"
    p.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    return str(p)

def test_empirical_bias_correction_improves_w4(zoo, logits_sqnr, tmp_path, w4):
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 256))
    plain, bc = tmp_path / "plain.onnx", tmp_path / "bc.onnx"
    compile_model(str(src), str(plain), "trt-int8", config=w4, calib_data=calib)
    diags = DiagnosticEngine()
    compile_model(str(src), str(bc), "trt-int8{bias-correct=true}", config=w4, calib_data=calib, diagnostics=diags)
    assert any(d.code == "QC604" and "corrected" in d.message for d in diags)
    assert logits_sqnr(src, load_model(bc)) > logits_sqnr(src, load_model(plain)) + 0.5
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
