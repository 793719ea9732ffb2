"""awq: exact in FP32 (its scales move between activation and weight), and better than round-to-nearest on
blocked int4 weights; trt-int4-weights: blocked weight-only output that lints clean and runs in onnxruntime."""

from __future__ import annotations

import pytest

from qcompiler.api import compile_model
from qcompiler.calib import as_data_source
from qcompiler.ir import copy_graph, load_model
from qcompiler.ir.query import op_histogram
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.quant.lint import lint_model
from qcompiler.testing import assert_outputs_close, run, sqnr_db


def test_awq_is_exact_in_fp32(zoo, digits):
    """The scale search only moves factors between activations and weights: same outputs."""
    g = load_model(zoo.onnx_path("transformer"))
    run_pipeline(g, "cleanup,fold-constants", PassContext())
    ref = copy_graph(g)
    ctx = PassContext(calib_data=as_data_source({"input": digits.calibration_samples(64)}))
    res = run_pipeline(g, "awq{block-size=16}", ctx, verify_each=True)
    assert res.records[0].stats["sites"] >= 1
    assert_outputs_close(ref, g, {"input": digits.load()["x_test"][:32]}, rtol=1e-4, atol=1e-5)
    assert any(d.code == "QC301" and "alpha" in d.message for d in ctx.diagnostics)


@pytest.mark.parametrize("method", ["rtn", "awq", "gptq"])
def test_trt_int4_weights(zoo, digits, tmp_path, method):
    src, calib = zoo.onnx_path("transformer"), str(zoo.calibration_npz("transformer", 64))
    out = tmp_path / "w4.onnx"
    compile_model(src, out, f"trt-int4-weights{{method={method} block-size=16}}", calib_data=calib)
    g = load_model(out)
    hist = op_histogram(g)
    assert hist.get("QuantizeLinear", 0) == 0  # weight-only: activations float
    dqs = [n for n in g.nodes if n.op == "DequantizeLinear"]
    assert dqs and all(n.attrs.get("block_size") == 16 and n.inputs[0].values.dtype.name == "int4" for n in dqs)
    assert int(g.opset) >= 21 and lint_model(out).n_errors == 0
    x = digits.load()["x_test"][:128]
    s = sqnr_db(run(load_model(src), {"input": x})["logits"], run(g, {"input": x})["logits"])
    assert s > 20
    if method != "rtn":  # better than round-to-nearest
        rtn = tmp_path / "rtn.onnx"
        compile_model(src, rtn, "trt-int4-weights{method=rtn block-size=16}", calib_data=calib)
        assert s > sqnr_db(run(load_model(src), {"input": x})["logits"], run(load_model(rtn), {"input": x})["logits"])
