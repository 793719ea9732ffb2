"""to-fp32: fp16 models, fp16 weights behind Casts and fp16 inputs brought to float32 for the passes; the interface
keeps its types; a float32 model is not touched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qcompiler.ir import load_model
from qcompiler.ir.dtypes import float_kind
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import run

from ..builders import G


def _fp16_weights_behind_casts():
    """A mixed model as exporters write it: fp16 weights, each behind Cast(to=float)."""
    b = G(17)
    x = b.input("x", ["N", 3, 8, 8])
    w = b.node("Cast", [b.init(b.rand(8, 3, 3, 3).astype(np.float16))], to=TensorProto.FLOAT)
    y = b.relu(b.node("Conv", [x, w], pads=[1, 1, 1, 1]))
    b.output(b.node("GlobalAveragePool", [y]))
    return b


def test_fp16_weights_behind_casts_become_float32_weights():
    b = _fp16_weights_behind_casts()
    g = b.graph()
    ref = b.graph()
    res = run_pipeline(g, "to-fp32", PassContext())
    assert res.records[0].modified
    conv = next(n for n in g.nodes if n.op == "Conv")
    assert float_kind(conv.inputs[1].dtype) == "fp32" and not [n for n in g.nodes if n.op == "Cast"]
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(ref, x)[g.outputs[0].name], run(g, x)[g.outputs[0].name], rtol=1e-6, atol=1e-6)


def test_an_fp16_model_keeps_its_interface(tmp_path):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    b = G(17)
    x = b.input("x", ["N", 3, 8, 8])
    b.output(b.node("GlobalAveragePool", [b.relu(b.conv(x, 3, 8))]))
    m16 = float16.convert_float_to_float16(b.model(), keep_io_types=False)
    onnx.save(m16, tmp_path / "m16.onnx")
    g = load_model(tmp_path / "m16.onnx")
    run_pipeline(g, "to-fp32", PassContext())
    kinds = {t.name: float_kind(t.dtype) for t in g.tensors().values()}
    assert kinds["x"] == "fp16" and kinds[g.outputs[0].name] == "fp16"
    conv = next(n for n in g.nodes if n.op == "Conv")
    assert kinds[conv.outputs[0].name] == "fp32" and float_kind(conv.inputs[1].dtype) == "fp32"
    assert [n.op for n in g.nodes].count("Cast") == 2  # after the input, before the output
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float16)}
    a, c = run(load_model(tmp_path / "m16.onnx"), x), run(g, x)
    name = g.outputs[0].name
    np.testing.assert_allclose(a[name].astype(np.float32), c[name].astype(np.float32), rtol=2e-2, atol=2e-3)


def test_a_float32_model_is_not_touched():
    g = G(17)
    x = g.input("x", ["N", 4])
    g.output(g.gemm(x, 4, 4))
    graph = g.graph()
    assert not run_pipeline(graph, "to-fp32", PassContext()).records[0].modified
