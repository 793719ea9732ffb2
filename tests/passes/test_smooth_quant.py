"""smooth-quant: exact in FP32, flattens activation channels, then quantizes better."""

from __future__ import annotations


import pytest

from qcompiler.api import compile_model
from qcompiler.calib import as_data_source
from qcompiler.ir import copy_graph, load_model
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.quant.lint import lint_model
from qcompiler.testing import assert_outputs_close

@pytest.fixture
def w4(tmp_path):
    p = tmp_path / "w4.yaml"
    p.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    return str(p)

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
