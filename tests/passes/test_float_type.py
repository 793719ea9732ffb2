"""float-type: float parts written in fp16/bf16 with measured fp32 islands, fp16 models brought to fp32, Casts only
where needed, outputs checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompiler.api import compile_model
from qcompiler.diagnostics import DiagnosticEngine
from qcompiler.ir import load_model
from qcompiler.ir.dtypes import float_kind
from qcompiler.passes.float_type import FloatTypeReport
from qcompiler.quant.floattype import emulated
from qcompiler.quant.lint import lint_model
from qcompiler.quant.numerics import sqnr_db
from qcompiler.testing import run

from ..builders import G


def _block(b: G, big: float = 1.0):
    """conv -> relu -> reshape to tokens -> LayerNorm -> MatMul -> Softmax -> MatMul: float parts of every kind."""
    x = b.input("x", ["N", 3, 8, 8])
    c = b.relu(b.conv(x, 3, 16))
    t = b.node("Transpose", [b.node("Reshape", [c, b.init(np.array([0, 16, -1], np.int64))])], perm=[0, 2, 1])
    t = b.node("Mul", [t, b.init(np.float32(big))])
    ln = b.node("LayerNormalization", [t, b.init(np.ones(16, np.float32)), b.init(np.zeros(16, np.float32))],
                axis=-1, epsilon=1e-5)
    q = b.matmul(ln, 16, 16)
    att = b.node("Softmax", [b.node("MatMul", [q, b.node("Transpose", [q], perm=[0, 2, 1])])], axis=-1)
    b.output(b.node("MatMul", [att, ln]))


def _model(tmp_path, big: float = 1.0, opset: int = 17):
    b = G(opset, seed=3)
    _block(b, big)
    src = tmp_path / "m.onnx"
    onnx.save(b.model(), src)
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    return src, calib


def _compile(src, out, pipeline, calib):
    diags = DiagnosticEngine()
    res = compile_model(src, out, pipeline, calib_data=str(calib), diagnostics=diags, progress=False)
    return res, diags


def _types(path):
    g = load_model(path)
    return g, {t.name: float_kind(t.dtype) for t in g.tensors().values()}


def test_fp16_float_parts_casts_only_at_the_boundaries(tmp_path):
    src, calib = _model(tmp_path)
    out = tmp_path / "q.onnx"
    res, diags = _compile(src, out, "trt-int8", calib)
    g, kinds = _types(out)
    assert int(g.opset) >= 19  # fp16 DequantizeLinear scales
    onnx.checker.check_model(str(out), full_check=True)
    assert lint_model(out).n_errors == 0
    # every float computation writes fp16; the graph interface keeps float32
    for n in g.nodes:
        if n.op not in ("QuantizeLinear", "Cast", "Shape") and n.outputs and kinds.get(n.outputs[0].name):
            assert kinds[n.outputs[0].name] == "fp16", (n.op, n.name)
    assert kinds["x"] == "fp32" and kinds[g.outputs[0].name] == "fp32"
    casts = [n for n in g.nodes if n.op == "Cast"]
    assert len(casts) == 1 and casts[0].outputs[0] is g.outputs[0]  # the output's Cast only: the input goes to a Q
    for n in g.nodes:  # DQ feeding fp16 ops write fp16; the Q of the float32 input reads it with a float32 scale
        if n.op == "DequantizeLinear":
            assert float_kind(n.inputs[1].dtype) == "fp16"
        if n.op == "QuantizeLinear":
            assert float_kind(n.inputs[1].dtype) == float_kind(n.inputs[0].dtype)
            dq = n.outputs[0].outputs[0]
            assert np.array_equal(np.asarray(n.inputs[1].values, np.float32),
                                  np.asarray(dq.inputs[1].values, np.float32))  # one scale, two storage types
    rep = res.context.state.get(FloatTypeReport)
    assert rep.target == "fp16" and not rep.islands and rep.float_weight_share == 1.0
    # judged against FP32, before and after the rewrite: fp16 loses next to nothing
    assert rep.health_before_db and all(rep.health_db[k] > rep.health_before_db[k] - 0.5 for k in rep.health_db)
    assert not [d for d in diags if d.code == "QC305" and "against FP32" in d.message]
    # outputs: within fp16 rounding of float=fp32 (both runs in onnxruntime; a value rounded to fp16 may cross an
    # int8 rounding boundary, so element-wise the difference can reach one int8 step: judged as SQNR)
    ref = tmp_path / "ref.onnx"
    _compile(src, ref, "trt-int8{float=fp32}", calib)
    x = {"x": np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    a, b = run(load_model(ref), x), run(load_model(out), x)
    name = g.outputs[0].name
    assert sqnr_db(a[name], b[name]) > 30


def test_float_fp32_is_the_model_as_it_was(tmp_path):
    src, calib = _model(tmp_path)
    out = tmp_path / "q.onnx"
    _compile(src, out, "trt-int8{float=fp32}", calib)
    g, kinds = _types(out)
    assert set(k for k in kinds.values() if k) == {"fp32"} and not [n for n in g.nodes if n.op == "Cast"]


def test_islands_are_measured_and_said(tmp_path):
    """Activations scaled by 300: the LayerNormalization squares them past fp16's range (90000 > 16384) and its
    input stays within it; the island is the LayerNormalization alone, with its reason."""
    src, calib = _model(tmp_path, big=300.0)
    out = tmp_path / "q.onnx"
    res, diags = _compile(src, out, "trt-int8", calib)
    rep = res.context.state.get(FloatTypeReport)
    ops = {i.op for i in rep.islands}
    assert "LayerNormalization" in ops and all("squares" in i.reason or "reaches" in i.reason for i in rep.islands)
    assert any(d.code == "QC305" and "keeps" in d.message and "fp32" in d.message for d in diags)
    import json

    recorded = json.loads((tmp_path / "q.onnx.recipe.json").read_text())["float_type"]  # `qcompiler report` reads it
    assert recorded["type"] == "fp16" and {i["op"] for i in recorded["islands"]} == ops
    g, kinds = _types(out)
    ln = next(n for n in g.nodes if n.op == "LayerNormalization")
    assert kinds[ln.outputs[0].name] == "fp32" and kinds[ln.inputs[0].name] == "fp32"
    assert all(rep.health_db[k] > rep.health_before_db[k] - 0.5 for k in rep.health_db)
    onnx.checker.check_model(str(out), full_check=True)
    assert lint_model(out).n_errors == 0


def test_a_constant_fp16_cannot_hold_keeps_its_node_fp32(tmp_path):
    """An additive mask of finfo(float32).min (-3.4e38) would be -inf in fp16 (0 * -inf = NaN downstream)."""
    b = G(17)
    x = b.input("x", ["N", 16])
    keep = b.node("Sigmoid", [b.gemm(x, 16, 16)])
    masked = b.node("Mul", [b.node("Sub", [b.init(np.float32(1.0)), keep]),
                            b.init(np.float32(np.finfo(np.float32).min))])
    b.output(b.node("Softmax", [b.node("Add", [b.gemm(x, 16, 16), masked])], axis=-1))
    src = tmp_path / "m.onnx"
    onnx.save(b.model(), src)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    res, _ = _compile(src, tmp_path / "q.onnx", "trt-int8", calib)
    rep = res.context.state.get(FloatTypeReport)
    mul = [i for i in rep.islands if i.op == "Mul"]
    assert mul and "overflows fp16" in mul[0].reason
    y = run(load_model(tmp_path / "q.onnx"), {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(
        np.float32)})
    assert all(np.isfinite(v).all() for v in y.values())


def test_keep_io_false_makes_the_interface_fp16(tmp_path):
    src, calib = _model(tmp_path)
    out = tmp_path / "q.onnx"
    _compile(src, out, "trt-int8{keep-io=false}", calib)
    g, kinds = _types(out)
    assert kinds["x"] == "fp16" and kinds[g.outputs[0].name] == "fp16"
    assert not [n for n in g.nodes if n.op == "Cast"]
    y = run(g, {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float16)})
    assert next(iter(y.values())).dtype == np.float16


def test_an_fp16_model_goes_through_every_pipeline(tmp_path):
    """An fp16 conversion (onnxconverter-common) with fp16 inputs and outputs: brought to float32 for the passes,
    float32 calibration data converted with a remark, fp16 written back; interface types kept."""
    float16 = pytest.importorskip("onnxconverter_common.float16")
    src, calib = _model(tmp_path)
    m16 = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=False)
    src16 = tmp_path / "m16.onnx"
    onnx.save(m16, src16)
    for pipeline in ("trt-int8", "trt-int8{float=fp32}", "trt-fp8", "trt-int4-weights", "ort-int8"):
        out = tmp_path / f"{pipeline.split('{')[0]}-{len(pipeline)}.onnx"
        _, diags = _compile(src16, out, pipeline, calib)
        assert any(d.code == "QC402" and "converted" in d.message for d in diags)
        g, kinds = _types(out)
        assert kinds["x"] == "fp16" and kinds[g.outputs[0].name] == "fp16", pipeline
        onnx.checker.check_model(str(out), full_check=True)
        if pipeline.startswith("trt"):
            assert lint_model(out).n_errors == 0, pipeline
        x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float16)}
        if pipeline != "trt-fp8":
            assert all(np.isfinite(v).all() for v in run(g, x).values())


def test_bf16_needs_opset_22_and_is_checked_by_emulation(tmp_path):
    src, calib = _model(tmp_path)
    out = tmp_path / "q.onnx"
    res, _ = _compile(src, out, "trt-int8{float=bf16}", calib)
    g, kinds = _types(out)
    assert int(g.opset) >= 22 and "bf16" in kinds.values()
    rep = res.context.state.get(FloatTypeReport)
    assert rep.target == "bf16" and min(rep.health_db.values()) > 25
    e = emulated(g)  # runs on onnxruntime's CPU kernels
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert all(np.isfinite(v).all() for v in run(e, x).values())


def test_deterministic(tmp_path):
    src, calib = _model(tmp_path, big=300.0)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    _compile(src, a, "trt-int8", calib)
    _compile(src, b, "trt-int8", calib)
    assert a.read_bytes() == b.read_bytes()


def test_nodes_whose_output_type_is_an_attribute_keep_it(tmp_path):
    """ConstantOfShape writes the type of its ``value`` attribute (float32 here; SLANet's decoder builds its state
    so): the fp16 graph reads it through a Cast and onnxruntime loads and runs it."""
    b = G(17)
    x = b.input("x", ["N", 16])
    h = b.gemm(x, 16, 16)
    zeros = b.node("ConstantOfShape", [b.node("Shape", [h])],
                   value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.5]))
    b.output(b.gemm(b.node("Add", [h, zeros]), 16, 8))
    src = tmp_path / "m.onnx"
    onnx.save(b.model(), src)
    calib = tmp_path / "c.npz"
    feeds = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    np.savez(calib, x=feeds)
    _compile(src, tmp_path / "q.onnx", "trt-int8", calib)
    g, types = _types(tmp_path / "q.onnx")
    cos = next(n for n in g.nodes if n.op == "ConstantOfShape")
    assert types[cos.outputs[0].name] == "fp32"
    assert any(n.op == "Cast" and n.inputs[0] is cos.outputs[0] for n in g.nodes)
    y = run(g, {"x": feeds[:4]})
    y0 = run(load_model(src), {"x": feeds[:4]})
    assert sqnr_db(next(iter(y0.values())), next(iter(y.values()))) > 25


def test_a_rewrite_that_loses_against_fp32_is_a_warning(tmp_path):
    """Without islands (a limit far above fp16's range) a square of activations in the thousands overflows fp16
    in the retyped graph: the outputs lose against FP32, and the warning says so."""
    from qcompiler.pm.pipeline import PassSpec, PipelineSpec, expand, print_pipeline

    b = G(17, seed=1)
    x = b.input("x", ["N", 16])
    h = b.node("Mul", [b.gemm(x, 16, 16), b.init(np.float32(3000.0))])
    sq = b.node("Mul", [b.node("Mul", [h, h]), b.init(np.float32(1e-6))])
    b.output(b.gemm(b.node("Add", [sq, b.gemm(x, 16, 16)]), 16, 8))
    src, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(b.model(), src)
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    text = print_pipeline(list(expand(PipelineSpec((PassSpec("trt-int8"),)))))
    res, diags = _compile(src, tmp_path / "q.onnx", text.replace("float-type", "float-type{limit=1e30}"), calib)
    rep = res.context.state.get(FloatTypeReport)
    assert not rep.islands
    lost = [d for d in diags if d.code == "QC305" and "against FP32" in d.message]
    worst = min(rep.health_db.values())
    assert lost and not worst > min(rep.health_before_db.values()) - 1.0, rep.health_db  # (NaN: inf reached it)
    res, diags = _compile(src, tmp_path / "d.onnx", "trt-int8", calib)  # the default limit: an island, no loss
    rep = res.context.state.get(FloatTypeReport)
    assert rep.islands and not [d for d in diags if d.code == "QC305" and "against FP32" in d.message]
