"""insert-qdq end to end: valid, lint-clean, runs in onnxruntime, matches the ONNX reference, deterministic."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.version_converter
import pytest
from onnx.reference import ReferenceEvaluator

from qcompiler.api import compile_model
from qcompiler.diagnostics import DiagnosticEngine, QCompilerError
from qcompiler.ir import load_model
from qcompiler.ir.query import op_histogram
from qcompiler.quant.lint import lint_model
from qcompiler.testing import random_feeds, run

from ..builders import G, qdq_model

DIGITS = ["resnet", "resnet-bottleneck", "mobilenetv2", "conv1x1", "transformer"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, zoo):
    """trt-int8 output of every digits zoo model (compiled once per test module), float parts float32 (the Q/DQ math
    is what these tests check; tests/passes/test_float_type.py checks fp16 float parts)."""
    out = {}
    d = tmp_path_factory.mktemp("int8")
    for name in DIGITS:
        src = zoo.onnx_path(name)
        calib = zoo.calibration_npz(name, 128)
        dst = d / f"{name}.onnx"
        compile_model(str(src), str(dst), "trt-int8{float=fp32}", calib_data=str(calib))
        out[name] = (src, dst, calib)
    return out


@pytest.mark.parametrize("name", DIGITS)
def test_valid_lint_clean_and_accurate(compiled, digits, name):
    src, dst, _ = compiled[name]
    onnx.checker.check_model(onnx.load(dst), full_check=True)
    lint = lint_model(dst)
    assert lint.n_errors == 0 and lint.n_warnings == 0, [d.render() for d in lint.findings]
    m = onnx.load(dst)
    assert m.ir_version <= 10 and m.opset_import[0].version >= 13
    hist = op_histogram(load_model(dst))
    assert hist.get("QuantizeLinear", 0) > 0 and hist.get("DequantizeLinear", 0) > hist["QuantizeLinear"]
    fp32, int8 = digits.evaluate(str(src)), digits.evaluate(str(dst))
    assert int8 >= fp32 - 0.5, (fp32, int8)


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_qdq_numerics_match_onnx_reference(compiled, name):
    """Every emitted Q/DQ pair and weight DQ gives, in onnxruntime (basic level), exactly what the ONNX
    reference implementation gives on the same input; end to end the two runtimes differ only by
    rounding flips, far below the quantization noise."""

    from qcompiler.ir import copy_graph
    from qcompiler.ir.query import const_value

    _, dst, _ = compiled[name]
    g = load_model(dst)
    feeds = random_feeds(g, batch=2, seed=3)
    h = copy_graph(g)
    ts = h.tensors()
    qs = [n for n in g.nodes if n.op == "QuantizeLinear"]
    h.outputs = [ts[q.inputs[0].name] for q in qs]
    inputs = run(h, feeds)
    for q in qs:
        dq = q.outputs[0].outputs[0]
        scale, zp = const_value(q.inputs[1]), const_value(q.inputs[2])
        model = qdq_model(scale, zp)
        x = inputs[q.inputs[0].name]
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        a = ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x})[0]
        b = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_array_equal(a, b, err_msg=dq.name)
    m19 = onnx.version_converter.convert_version(onnx.load(dst), 19)
    ref_out = ReferenceEvaluator(m19).run(None, feeds)[0]
    ort_out = run(g, feeds, opt_level="basic")["logits"]
    assert float(np.max(np.abs(ort_out - ref_out))) <= 0.01 * float(np.abs(ref_out).max())


def test_byte_identical_when_run_twice(compiled, tmp_path):
    src, dst, calib = compiled["mobilenetv2"]
    again = tmp_path / "again.onnx"
    compile_model(str(src), str(again), "trt-int8{float=fp32}", calib_data=str(calib))
    assert again.read_bytes() == dst.read_bytes()
    rec = tmp_path / "again.onnx.recipe.json"
    assert rec.exists() and '"recipe"' in rec.read_text()


def test_fp8_pipeline(zoo, tmp_path):
    src = zoo.onnx_path("conv1x1")
    dst = tmp_path / "fp8.onnx"
    diags = DiagnosticEngine()
    compile_model(str(src), str(dst), "trt-fp8", calib_data=str(zoo.calibration_npz("conv1x1", 64)), diagnostics=diags)
    m = onnx.load(dst)
    assert m.opset_import[0].version == 19
    assert any(d.code == "QC305" for d in diags)  # upgraded with a remark
    types = {i.data_type for i in m.graph.initializer}
    assert onnx.TensorProto.FLOAT8E4M3FN in types
    lint = lint_model(dst, fp8=True)
    assert lint.n_errors == 0, [d.render() for d in lint.findings]
    out = run(load_model(dst), random_feeds(load_model(dst), batch=2), opt_level="basic")
    assert np.isfinite(out["logits"]).all()


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_ort_int8_pipeline_runs_with_integer_kernels(zoo, tmp_path, name):
    import onnxruntime as ort

    src = zoo.onnx_path(name)
    dst = tmp_path / "ort.onnx"
    compile_model(str(src), str(dst), "ort-int8", calib_data=str(zoo.calibration_npz(name, 64)))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(dst), so)
    opt = onnx.load(tmp_path / "opt.onnx").graph
    ops = [n.op_type for n in opt.node]
    assert "QLinearConv" in ops, ops
    # residual Adds run as QLinearAdd: onnxruntime fuses DQ->Add->Q only with scalar (rank-0) scales
    assert "QLinearAdd" in ops and "Add" not in ops, sorted(ops)
    # Relu / ReLU6 (Clip) are absorbed into the conv's output quantization: no float activation and no
    # requantization left between the integer kernels (only the graph input Q and the output DQ)
    assert not {"Relu", "Clip", "Conv"} & set(ops), sorted(ops)
    assert ops.count("QuantizeLinear") <= 1 and ops.count("DequantizeLinear") <= 1, sorted(ops)


def test_per_tensor_scales_are_scalars(compiled):
    """Per-tensor scales and zero points are rank 0 (the ONNX form; onnxruntime's QDQ fusions and
    TensorRT both read it), never shape [1]."""
    for name, (_, path, _) in compiled.items():
        g = onnx.load(path).graph
        params = {n.input[k] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  and not any(a.name == "axis" for a in n.attribute) for k in (1, 2) if len(n.input) > k}
        dims = {tuple(i.dims) for i in g.initializer if i.name in params}
        assert dims <= {()}, (name, dims)


def test_existing_qdq_refused_then_requantized(compiled, tmp_path):
    src, dst, calib = compiled["resnet"]
    with pytest.raises(QCompilerError) as info:
        compile_model(str(dst), str(tmp_path / "x.onnx"), "calibrate,insert-qdq", calib_data=str(calib))
    assert info.value.code == "QC503"
    assert not (tmp_path / "x.onnx").exists()
    out = tmp_path / "re.onnx"
    compile_model(str(dst), str(out), "strip-qdq,calibrate,insert-qdq,cleanup", calib_data=str(calib))
    assert lint_model(out).n_errors == 0


def test_weights_qdq_mode(zoo, tmp_path):
    dst = tmp_path / "qdq.onnx"
    compile_model(str(zoo.onnx_path("resnet")), str(dst), "trt-int8{weights=qdq}",
                  calib_data=str(zoo.calibration_npz("resnet", 32)))
    g = load_model(dst)
    hist = op_histogram(g)
    assert hist["QuantizeLinear"] == hist["DequantizeLinear"]  # every weight has its own Q
    assert lint_model(dst).n_errors == 0


def test_old_opset_is_upgraded(tmp_path):
    b = G(opset=11)
    x = b.input("x", [1, 16, 8, 8])
    b.output(b.relu(b.conv(b.relu(b.conv(x, 16, 16)), 16, 16)))
    src = tmp_path / "op11.onnx"
    onnx.save(b.model(ir=6), src)
    dst = tmp_path / "q.onnx"
    diags = DiagnosticEngine()
    compile_model(str(src), str(dst), "calibrate,insert-qdq", allow_random_calibration=True, diagnostics=diags)
    assert onnx.load(dst).opset_import[0].version == 13
    assert any(d.code == "QC305" and "opset 11 to 13" in d.message for d in diags)
    assert lint_model(dst).n_errors == 0


def test_w4_and_fractional_weights(zoo, tmp_path):
    for dtype in ("s4", "s7.7"):
        rp = tmp_path / f"{dtype}.yaml"
        rp.write_text(f"global:\n  weight: {{dtype: '{dtype}', qscheme: per_channel_symmetric}}\n")
        dst = tmp_path / f"{dtype}.onnx"
        compile_model(str(zoo.onnx_path("resnet")), str(dst), "trt-int8", config=str(rp),
                      calib_data=str(zoo.calibration_npz("resnet", 32)))
        m = onnx.load(dst)
        ints = [onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8
                and len(t.dims) == 4]
        top = 7 if dtype == "s4" else 102
        assert ints and max(int(np.abs(a).max()) for a in ints) <= top
        assert lint_model(dst).n_errors == 0


def test_blocked_int4_matmul_weights(zoo, tmp_path):
    rp = tmp_path / "int4.yaml"
    rp.write_text("op_types:\n  MatMul: {weight: {dtype: s4, block_size: 32}}\n")
    dst = tmp_path / "int4.onnx"
    diags = DiagnosticEngine()
    compile_model(str(zoo.onnx_path("transformer")), str(dst), "trt-int8", config=str(rp),
                  calib_data=str(zoo.calibration_npz("transformer", 64)), diagnostics=diags)
    m = onnx.load(dst)
    assert m.opset_import[0].version == 21
    assert any("blocked int4" in d.message for d in diags)
    int4 = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4 and all(len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2 for t in int4)  # packed
    blocked = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and
               any(a.name == "block_size" and a.i == 32 for a in n.attribute)]
    weights = {t.name for t in int4} & {n.input[0] for n in blocked}
    assert len(blocked) == 8 and len(weights) == 8  # qkv, proj, fc1, fc2 of both encoder layers
    assert lint_model(dst).n_errors == 0
    out = run(load_model(dst), random_feeds(load_model(dst), batch=2), opt_level="basic")
    assert np.isfinite(out["logits"]).all()


def test_ort_int8_maxpool_shares_its_input_scale(tmp_path):
    """onnxruntime runs a MaxPool on int8 data only when the scale before and after it is the same; the
    onnxruntime target groups them (exact: max commutes with a monotonic quantizer)."""
    import onnxruntime as ort

    b = G()
    x = b.input("input", ["N", 3, 16, 16])
    y = b.relu(b.conv(x, 3, 16))
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b.output(b.relu(b.conv(y, 16, 16)))
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(b.model(), src)
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    compile_model(str(src), str(dst), "ort-int8", calib_data=str(calib))
    g = onnx.load(dst).graph
    init = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    pool = next(n for n in g.node if n.op_type == "MaxPool")
    dq_in = prod[pool.input[0]]
    q_out = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    assert dq_in.op_type == "DequantizeLinear"
    assert init[dq_in.input[1]] == init[q_out.input[1]] and init[dq_in.input[2]] == init[q_out.input[2]]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(dst), so)
    assert "MaxPool" not in {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}


@pytest.mark.parametrize("case, fragment", [
    ("no-layers", "the model has no Conv, ConvTranspose, Gemm or MatMul layer"),
    ("recipe-float", "stay float: the recipe says float (3 layers)"),
    ("small", "has no fast quantized kernel"),
])
def test_quantizing_nothing_is_an_error_that_says_why(case, fragment, tmp_path):
    """A pipeline with insert-qdq that quantizes nothing fails (exit 1, nothing written) unless allow-empty=true."""
    from qcompiler.cli import main

    b = G()
    x = b.input("x", [1, 16, 8, 8] if case != "small" else [1, 4])
    if case == "no-layers":
        b.output(b.relu(x))
    elif case == "small":
        b.output(b.gemm(x, 4, 4))
    else:
        b.output(b.conv(b.relu(b.conv(b.conv(x, 16, 16), 16, 16)), 16, 16))
    src = tmp_path / "m.onnx"
    onnx.save(b.model(), src)
    recipe = tmp_path / "float.yaml"
    recipe.write_text("global: float\n")
    extra = ["--config", str(recipe)] if case == "recipe-float" else []
    out = tmp_path / "q.onnx"
    with pytest.raises(QCompilerError, match=re.escape(fragment)) as exc:
        compile_model(src, out, "calibrate,insert-qdq", allow_random_calibration=True,
                      config=str(recipe) if extra else None)
    assert exc.value.diagnostic.code == "QC506" and "allow-empty=true" in exc.value.diagnostic.hint
    assert not out.exists()
    assert main(["compile", str(src), "-o", str(out), "--pipeline", "calibrate,insert-qdq",
                 "--allow-random-calibration", "-q"] + extra) == 1
    assert main(["compile", str(src), "-o", str(out), "--pipeline", "calibrate,insert-qdq{allow-empty=true}",
                 "--allow-random-calibration", "-q"] + extra) == 0 and out.exists()


def test_a_weight_holding_nan_is_an_error_naming_it(tmp_path):
    """A NaN weight would give a NaN scale (lint L5 in the output): the compile stops and names the weight."""
    b = G()
    x = b.input("x", [1, 16, 8, 8])
    w = b.rand(16, 16, 3, 3)
    w[3, 0, 1, 1] = np.nan
    b.output(b.node("Conv", [b.relu(b.conv(x, 16, 16)), b.init(w, name="w_bad")], kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1], name="conv_bad"))
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(b.model(), src)
    with pytest.raises(QCompilerError) as exc:
        compile_model(src, out, "calibrate,insert-qdq", allow_random_calibration=True)
    d = exc.value.diagnostic
    assert d.code == "QC507" and d.node == "conv_bad" and "'w_bad'" in d.message and not out.exists()


def _branch(tag: str, seed: int):
    """A body: Conv(x) -> Relu -> Conv, weights local to the body."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1, w2 = (numpy_helper.from_array((0.2 * rng.standard_normal((16, 16, 3, 3))).astype(np.float32), f"{tag}_w{k}")
              for k in (1, 2))
    nodes = [helper.make_node("Conv", ["x", f"{tag}_w1"], [f"{tag}_c1"], name=f"{tag}_conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [f"{tag}_c1"], [f"{tag}_r1"], name=f"{tag}_relu"),
             helper.make_node("Conv", [f"{tag}_r1", f"{tag}_w2"], [f"{tag}_y"], name=f"{tag}_conv2", pads=[1, 1, 1, 1])]
    return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_y", TensorProto.FLOAT, None)],
                             [w1, w2])


def test_if_bodies_are_quantized_and_a_branch_no_sample_took_stays_float(tmp_path):
    """The else branch runs on every calibration sample: its two convs are quantized inside it.  The then branch
    never runs: its first conv reads the graph input (calibrated) and is quantized; its second conv's input was
    never computed, so it stays float with a warning naming it."""
    from onnx import TensorProto, helper, numpy_helper

    from qcompiler.diagnostics import Severity
    from qcompiler.ir.graph import iter_graphs

    F = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
         helper.make_node("Greater", ["m", "big"], ["cond"], name="gt"),
         helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=_branch("then", 1),
                          else_branch=_branch("else", 2))],
        "m", [helper.make_tensor_value_info("x", F, ["N", 16, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["N", 16, 8, 8])],
        [numpy_helper.from_array(np.array(100.0, np.float32), "big")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src, out, calib = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "c.npz"
    onnx.save(m, src)
    x = np.random.default_rng(0).standard_normal((16, 16, 8, 8)).astype(np.float32)
    np.savez(calib, x=x)
    diags = DiagnosticEngine()
    compile_model(src, out, "trt-int8", calib_data=str(calib), diagnostics=diags)
    q = load_model(out)
    bodies = {b.name: b for b in iter_graphs(q) if b is not q}

    def quantized(body, conv):
        n = next(n for n in bodies[body].nodes if n.name == conv)
        return [i.inputs[0].op if i.inputs else None for i in n.inputs[:2]] == ["DequantizeLinear"] * 2

    assert quantized("else", "else_conv1") and quantized("else", "else_conv2") and quantized("then", "then_conv1")
    assert not quantized("then", "then_conv2")
    warn = [d for d in diags if d.severity == Severity.WARNING and d.code == "QC504"]
    assert len(warn) == 1 and warn[0].node == "then_conv2" and "never computed" in warn[0].message
    assert lint_model(out).n_errors == 0
    ref = run(load_model(src), {"x": x[:4]})["y"]
    got = run(q, {"x": x[:4]})["y"]
    assert 10 * np.log10((ref ** 2).mean() / ((ref - got) ** 2).mean()) > 25


@pytest.mark.parametrize("ratio, shared", [(16.0, False), (0.0, True)])
def test_concat_of_disparate_ranges_does_not_force_one_scale(tmp_path, ratio, shared):
    """Concat([relu(conv(x)) * 100, small]) -> conv, where ``small`` = relu(conv(x)) also feeds a conv of its own:
    with the shared scale of P7, that conv would read ``small`` on a grid sized for the 100x branch.  By default
    each member keeps its own scale (a remark says why); concat-ratio=0 forces the shared scale."""
    from qcompiler.ir.query import const_value

    b = G(seed=2)
    x = b.input("x", [1, 16, 8, 8])
    big = b.node("Mul", [b.relu(b.conv(x, 16, 16)), b.init(np.float32(100.0), name="k")])
    small = b.relu(b.conv(x, 16, 16))
    cat = b.node("Concat", [big, small], axis=1, name="cat")
    b.output(b.conv(cat, 32, 16))
    b.output(b.conv(small, 16, 16))
    src, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(b.model(), src)
    diags = DiagnosticEngine()
    compile_model(src, out, f"calibrate,insert-qdq{{concat-ratio={ratio}}}", allow_random_calibration=True,
                  diagnostics=diags)
    g = load_model(out)
    q_small = next(n for n in g.nodes if n.op == "QuantizeLinear" and n.inputs[0].name == small)
    q_cat = next(n for n in g.nodes if n.op == "QuantizeLinear" and n.inputs[0].name == cat)
    s_small, s_cat = float(const_value(q_small.inputs[1])), float(const_value(q_cat.inputs[1]))
    assert (s_small == s_cat) == shared
    if not shared:
        assert s_cat / s_small > 20
        assert any(d.code == "QC504" and "keep their own scales" in d.message for d in diags)
