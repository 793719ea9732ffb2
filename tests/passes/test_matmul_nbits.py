"""matmul-nbits: blocked int4 DequantizeLinear -> MatMul as com.microsoft MatMulNBits, equal in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.api import compile_model
from qcompiler.diagnostics import DiagnosticEngine
from qcompiler.ir import load_model
from qcompiler.ir.graph import iter_graphs
from qcompiler.passes.matmul_nbits import pack
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import run

from ..builders import G


def _model(tmp_path, k=64):
    b = G(17, seed=2)
    x = b.input("x", ["N", 8, k])
    h = b.node("Relu", [b.matmul(x, k, 96)])
    b.output(b.matmul(h, 96, 32))
    src, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(b.model(), src)
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 8, k)).astype(np.float32))
    return src, calib


def test_pack_puts_even_k_in_the_low_nibble():
    q = np.array([[-8, 7], [1, -1], [0, 3], [-2, 5]], np.int8)  # [K=4, N=2]
    p = pack(q, 4, 4)
    assert p.shape == (2, 1, 2)
    assert p[0, 0, 0] == ((-8 + 8) | ((1 + 8) << 4)) and p[1, 0, 1] == ((3 + 8) | ((5 + 8) << 4))


def test_the_same_outputs_as_dequantize_linear_in_onnxruntime(tmp_path):
    src, calib = _model(tmp_path)
    dq = tmp_path / "dq.onnx"
    compile_model(src, dq, "trt-int4-weights{float=fp32 method=rtn}", calib_data=str(calib), progress=False)
    g = load_model(dq)
    assert [n.op for n in g.nodes].count("MatMul") == 2
    diags = DiagnosticEngine()
    run_pipeline(g, "matmul-nbits", PassContext(diagnostics=diags))
    ops = [n.op for n in g.nodes]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops and "DequantizeLinear" not in ops
    assert any(d.code == "QC301" and "2 MatMul(s)" in d.message for d in diags)
    x = {"x": np.random.default_rng(1).standard_normal((3, 8, 64)).astype(np.float32)}
    a, b = run(load_model(dq), x), run(g, x)
    name = g.outputs[0].name
    np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-4 * np.abs(a[name]).max())


def test_ort_int4_weights_pipeline(tmp_path):
    """The named pipeline: packed weights (a quarter of the float bytes and less), onnxruntime runs it, the result
    is trt-int4-weights{float=fp32}'s with the same rounding."""
    src, calib = _model(tmp_path, k=128)
    out, ref = tmp_path / "o.onnx", tmp_path / "r.onnx"
    compile_model(src, out, "ort-int4-weights", calib_data=str(calib), progress=False)
    compile_model(src, ref, "trt-int4-weights{float=fp32}", calib_data=str(calib), progress=False)
    g = load_model(out)
    assert [n.op for sub in iter_graphs(g) for n in sub.nodes].count("MatMulNBits") == 2
    m = onnx.load(str(out))
    assert any(o.domain == "com.microsoft" for o in m.opset_import)
    onnx.checker.check_model(m)
    x = {"x": np.random.default_rng(2).standard_normal((2, 8, 128)).astype(np.float32)}
    a, b = run(load_model(ref), x), run(g, x)
    name = g.outputs[0].name
    np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-4 * np.abs(a[name]).max())


def test_nothing_to_convert_is_said(tmp_path):
    src, _ = _model(tmp_path)
    g = load_model(src)
    diags = DiagnosticEngine()
    run_pipeline(g, "matmul-nbits", PassContext(diagnostics=diags))
    assert any(d.code == "QC301" and "no MatMul" in d.message for d in diags)
    assert not any(n.op == "MatMulNBits" for n in g.nodes)
