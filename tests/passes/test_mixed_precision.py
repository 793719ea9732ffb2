"""mixed-precision: the most sensitive layers go back to float until the target SQNR."""

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

def test_mixed_precision_reaches_target(zoo, logits_sqnr, tmp_path, w4):
    src, calib = zoo.onnx_path("mobilenetv2"), str(zoo.calibration_npz("mobilenetv2", 128))
    plain, mp = tmp_path / "plain.onnx", tmp_path / "mp.onnx"
    compile_model(str(src), str(plain), "trt-int8", config=w4, calib_data=calib)
    base = logits_sqnr(src, load_model(plain))
    target = base + 3.0
    diags = DiagnosticEngine()
    res = compile_model(str(src), str(mp), f"trt-int8{{target-sqnr={target}}}", config=w4, calib_data=calib,
                        diagnostics=diags)
    from qcompiler.passes.mixed_precision import MixedPrecisionReport

    info = res.context.state.require(MixedPrecisionReport)
    assert 1 <= len(info.float_layers) <= 8 and info.sqnr >= target
    assert all(any(name in d.message for d in diags) for name in info.float_layers)
    assert logits_sqnr(src, load_model(mp)) > base + 1.5
    assert lint_model(mp).n_errors == 0
