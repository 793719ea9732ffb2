"""strip-qdq: activation Q->DQ pairs bypassed, stored weights dequantized, the model quantizable again."""

from __future__ import annotations

import numpy as np

from qcompiler.api import compile_model
from qcompiler.ir import load_model
from qcompiler.ir.query import const_value
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.quant.qspec import dequantize_linear
from qcompiler.testing import run, sqnr_db

from ..builders import G


def test_pairs_bypassed_and_weights_dequantized():
    b = G(13)
    x = b.input("x", [1, 2, 4, 4])
    xq = b.qdq(x, np.float32(0.05), np.int8(0))
    wq = (np.arange(3 * 2).reshape(3, 2, 1, 1) - 3).astype(np.int8)
    scale = np.array([0.1, 0.2, 0.3], np.float32)
    w = b.dq(b.init(wq, name="wq"), b.init(scale, name="ws"), b.init(np.zeros(3, np.int8), name="wz"), axis=0)
    b.output(b.node("Conv", [xq, w]))
    g = b.graph()
    ctx = PassContext()
    ctx.facts.add("calibrated")
    res = run_pipeline(g, "strip-qdq", ctx, verify_each=True)
    assert res.records[0].stats == {"pairs": 1, "weights": 1}
    assert [n.op for n in g.nodes] == ["Conv"]
    conv = g.nodes[0]
    assert conv.inputs[0] is g.inputs[0]
    np.testing.assert_array_equal(const_value(conv.inputs[1]), dequantize_linear(wq, scale, np.zeros(3, np.int8), 0))
    assert not {"quantized", "calibrated"} & ctx.facts
    assert not run_pipeline(g, "strip-qdq", PassContext()).records[0].modified


def test_strip_then_requantize(zoo, digits, tmp_path):
    """A trt-int8 output stripped of its Q/DQ keeps only weight rounding: closer to FP32 than the Q/DQ model; and it
    quantizes again."""
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 32))
    q = tmp_path / "q.onnx"
    compile_model(src, q, "trt-int8", calib_data=calib)
    g = load_model(q)
    run_pipeline(g, "strip-qdq", PassContext())
    assert not any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in g.nodes)
    x = {"input": digits.load()["x_test"][:128]}
    fp32 = run(load_model(src), x)["logits"]
    assert sqnr_db(fp32, run(g, x)["logits"]) > sqnr_db(fp32, run(load_model(q), x)["logits"]) + 3.0
    again = tmp_path / "again.onnx"
    compile_model(q, again, "strip-qdq,calibrate,insert-qdq", calib_data=calib)
    assert sqnr_db(fp32, run(load_model(again), x)["logits"]) > 25
