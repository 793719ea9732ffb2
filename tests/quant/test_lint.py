"""lint-trt flags each deliberately broken graph with the right rule, and passes a clean one."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.cli import main
from qcompiler.ir import import_model
from qcompiler.quant.lint import lint_graph

from ..builders import G


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def base(**kw):
    """x -> Q/DQ -> Conv(DQ(int8 W, axis 0), float bias) -> Relu -> y, with switches to break it."""
    b = G(kw.get("opset", 13))
    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, (16, 16, 3, 3)).astype(np.int8)
    b.input("x", [1, 16, 8, 8])
    for name, value in (("s_x", np.float32(0.05)), ("z_x", kw.get("zp_x", np.int8(0))), ("w_q", kw.get("wq", wq)),
                        ("w_s", kw.get("w_scale", np.full(16, 0.01, np.float32))), ("w_z", np.zeros(16, np.int8)),
                        ("bias", np.zeros(16, np.float32))):
        b.init(value, name=name)
    q_inputs = ["x", "s_x", "z_x"] if not kw.get("no_zp") else ["x", "s_x"]
    b.node("QuantizeLinear", q_inputs, outputs=["xq"], name="q_x")
    b.node("DequantizeLinear", ["xq"] + q_inputs[1:], outputs=["xd"], name="dq_x")
    w_axis = {} if kw.get("no_axis") else {"axis": kw.get("w_axis", 0)}
    b.node("DequantizeLinear", ["w_q", "w_s", "w_z"], outputs=["w"], name="dq_w", **w_axis)
    w_in = "w"
    if kw.get("cast"):
        w_in = b.node("Cast", ["w"], outputs=["w_c"], to=TensorProto.FLOAT, name="cast_w")
    b_in = "bias"
    if kw.get("int32_bias"):
        b.init(np.zeros(16, np.int32), name="b_q")
        b.init(np.full(16, 1e-4, np.float32), name="b_s")
        b_in = b.node("DequantizeLinear", ["b_q", "b_s"], outputs=["b_dq"], name="dq_b", axis=0)
    b.node("Conv", ["xd", w_in, b_in], outputs=["c"], name="conv", pads=[1, 1, 1, 1])
    b.node("Relu", ["c"], outputs=["y"], name="relu")
    b.output("y", shape=[1, 16, 8, 8])
    if kw.get("dangling_q"):
        b.node("QuantizeLinear", ["y", "s_x", "z_x"], outputs=["yq"], name="q_dangling")
    return b.model(ir=kw.get("ir", 7), infer_outputs=False)


def rules(m, fp8=False, severity="error"):
    res = lint_graph(import_model(m), fp8=fp8)
    from qcompiler.diagnostics import Severity

    sev = Severity.ERROR if severity == "error" else Severity.WARNING
    return {d.rule for d in res.findings if d.severity == sev}


def test_clean_graph_passes():
    res = lint_graph(import_model(base()))
    assert res.n_errors == 0 and res.n_warnings == 0, [d.render() for d in res.findings]


@pytest.mark.parametrize("kw,rule", [
    ({"zp_x": np.uint8(0)}, "L3"),                                   # uint8 zero point (R2)
    ({"no_zp": True}, "L3"),                                          # missing zero point (R4)
    ({"zp_x": np.int8(3)}, "L4"),                                     # non-zero zero point (R3)
    ({"w_axis": 1}, "L8"),                                            # wrong weight axis (R9)
    ({"no_axis": True}, "L6"),                                        # per-channel without axis (R7)
    ({"int32_bias": True}, "L10"),                                    # quantized bias (R11)
    ({"w_scale": np.concatenate([np.zeros(1), np.full(15, 0.01)]).astype(np.float32)}, "L5"),  # zero scale
    ({"w_scale": np.full(16, -0.01, np.float32)}, "L5"),              # negative scale
    ({"cast": True}, "L9"),                                           # Cast between DQ and weight (R10)
    ({"dangling_q": True}, "L11"),                                    # Q without DQ
    ({"ir": 14}, "L2"),                                               # IR too new
    ({"w_scale": np.full(8, 0.01, np.float32)}, "L6"),                # wrong number of scales
])
def test_broken_graphs_are_flagged(kw, rule):
    m = base(**kw)
    found = rules(m) | rules(m, severity="warning")
    assert rule in found, found


def test_fp8_below_opset_19():
    m = base()
    for t in m.graph.initializer:
        if t.name == "z_x":
            t.CopyFrom(numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn), "z_x"))
    assert "L2" in rules(m)


def test_per_channel_activation():
    m = base()
    for t in m.graph.initializer:
        if t.name == "s_x":
            t.CopyFrom(_t("s_x", np.full(16, 0.05, np.float32)))
        if t.name == "z_x":
            t.CopyFrom(_t("z_x", np.zeros(16, np.int8)))
    for n in m.graph.node:
        if n.name in ("q_x", "dq_x"):
            n.attribute.append(helper.make_attribute("axis", 1))
    assert "L7" in rules(m)


def test_integer_operator_style_ops():
    m = base()
    m.graph.node.append(helper.make_node("DynamicQuantizeLinear", ["y"], ["a", "b", "c"], name="dql"))
    assert "L1" in rules(m)


def test_weights_with_minus_128_warn():
    wq = np.full((16, 16, 3, 3), -128, np.int8)
    assert "L13" in rules(base(wq=wq), severity="warning")


def _residual(both: bool):
    rng = np.random.default_rng(1)
    b = G(13)
    b.input("x", [1, 16, 8, 8])
    for name, value in (("s", np.float32(0.05)), ("z", np.int8(0)),
                        ("wq", rng.integers(-127, 128, (16, 16, 3, 3)).astype(np.int8)),
                        ("ws", np.full(16, 0.01, np.float32)), ("wz", np.zeros(16, np.int8))):
        b.init(value, name=name)
    b.node("QuantizeLinear", ["x", "s", "z"], outputs=["xq"], name="qx")
    b.node("DequantizeLinear", ["xq", "s", "z"], outputs=["xd"], name="dqx")
    b.node("DequantizeLinear", ["wq", "ws", "wz"], outputs=["w"], name="dqw", axis=0)
    branch = b.node("Conv", ["xd", "w"], outputs=["c"], name="conv", pads=[1, 1, 1, 1])
    if both:
        b.node("QuantizeLinear", ["c", "s", "z"], outputs=["cq"], name="qc")
        branch = b.node("DequantizeLinear", ["cq", "s", "z"], outputs=["cd"], name="dqc")
    b.node("Add", [branch, "xd"], outputs=["a"], name="add")
    b.node("Relu", ["a"], outputs=["r"], name="relu")
    b.node("QuantizeLinear", ["r", "s", "z"], outputs=["rq"], name="qr")
    b.node("DequantizeLinear", ["rq", "s", "z"], outputs=["rd"], name="dqr")
    b.node("DequantizeLinear", ["wq", "ws", "wz"], outputs=["w2"], name="dqw2", axis=0)
    b.node("Conv", ["rd", "w2"], outputs=["y"], name="conv2", pads=[1, 1, 1, 1])
    b.output("y", shape=[1, 16, 8, 8])
    return b.model(ir=7, infer_outputs=False)


def test_residual_with_both_inputs_quantized_warns():
    assert "L17" in rules(_residual(both=True), severity="warning")
    assert "L17" not in rules(_residual(both=False), severity="warning")


def test_qdq_on_graph_output_warns():
    m = base()
    m.graph.node.extend([helper.make_node("QuantizeLinear", ["y", "s_x", "z_x"], ["yq2"], name="qo"),
                         helper.make_node("DequantizeLinear", ["yq2", "s_x", "z_x"], ["yout"], name="dqo")])
    m.graph.output.append(helper.make_tensor_value_info("yout", TensorProto.FLOAT, [1, 16, 8, 8]))
    assert "L20" in rules(m, severity="warning")


def test_cli_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(base(), good)
    onnx.save(base(zp_x=np.uint8(0)), bad)
    assert main(["lint-trt", str(good)]) == 0
    assert main(["lint-trt", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "L3" in out and "q_x" in out and "hint:" in out
    assert main(["lint-trt", str(bad), "--format", "json"]) == 1
    onnx.save(base(wq=np.full((16, 16, 3, 3), -128, np.int8)), tmp_path / "warn.onnx")
    assert main(["lint-trt", str(tmp_path / "warn.onnx")]) == 0
    assert main(["lint-trt", str(tmp_path / "warn.onnx"), "--Werror"]) == 1


@pytest.mark.parametrize("producer,expect_l9", [("Transpose", False), ("Relu", True)])
def test_weight_q_over_a_folded_transpose_is_accepted(producer, expect_l9):
    """ModelOpt's MatMul weights are DQ(Q(Transpose(W))): TensorRT folds the Transpose of a constant.
    Any other op over the weight before the Q is not folded into the layer's weights: L9."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)  # stored [N, K]; MatMul wants [K, N]
    b = G(13)
    b.input("x", [2, 4])
    for name, value in (("w", w if producer == "Transpose" else w.T.copy()), ("s_x", np.float32(0.05)),
                        ("z_x", np.int8(0)), ("w_s", np.full(8, 0.01, np.float32)), ("w_z", np.zeros(8, np.int8))):
        b.init(value, name=name)
    b.node("QuantizeLinear", ["x", "s_x", "z_x"], outputs=["xq"], name="q_x")
    b.node("DequantizeLinear", ["xq", "s_x", "z_x"], outputs=["xd"], name="dq_x")
    b.node(producer, ["w"], outputs=["wt"], name="prep", **({"perm": [1, 0]} if producer == "Transpose" else {}))
    b.node("QuantizeLinear", ["wt", "w_s", "w_z"], outputs=["wq"], name="q_w", axis=1)
    b.node("DequantizeLinear", ["wq", "w_s", "w_z"], outputs=["wd"], name="dq_w", axis=1)
    b.node("MatMul", ["xd", "wd"], outputs=["y"], name="mm")
    b.output("y", shape=[2, 8])
    m = b.model(ir=7, infer_outputs=False)
    assert ("L9" in rules(m)) == expect_l9


@pytest.mark.parametrize("op", ["Conv", "Gemm", "MatMul-per-channel"])
def test_weight_quantized_from_a_runtime_tensor_is_an_error(op):
    """A layer's weight must be a constant behind its Q/DQ: a graph input (or any run-time value) is not weights."""
    b = G(13)
    b.input("x", [1, 16, 8, 8] if op == "Conv" else [2, 16])
    shape = [16, 16, 3, 3] if op == "Conv" else [16, 16]
    b.input("w_in", shape)
    s = b.init(np.float32(0.05), name="s")
    z = b.init(np.int8(0), name="z")
    xd = b.dq(b.q("x", s, z), s, z)
    if op == "MatMul-per-channel":
        ws, wz = b.init(np.full(16, 0.01, np.float32), name="ws"), b.init(np.zeros(16, np.int8), name="wz")
        wd = b.dq(b.q("w_in", ws, wz, axis=1), ws, wz, axis=1)
        b.output(b.node("MatMul", [xd, wd], name="mm"))
    else:
        wd = b.dq(b.q("w_in", s, z), s, z)
        attrs = {"pads": [1, 1, 1, 1]} if op == "Conv" else {"transB": 1}
        b.output(b.node(op, [xd, wd], name="layer", **attrs))
    res = lint_graph(import_model(b.model()))
    l9 = [d for d in res.findings if d.rule == "L9"]
    assert l9 and "quantized from the run-time tensor 'w_in'" in l9[0].message and l9[0].node in ("layer", "mm")


def test_attention_matmul_of_two_activations_is_fine():
    b = G(13)
    b.input("a", [2, 8, 16])
    b.input("c", [2, 16, 8])
    da = b.qdq("a", np.float32(0.05), np.int8(0))
    dc = b.qdq("c", np.float32(0.05), np.int8(0))
    b.output(b.node("MatMul", [da, dc]))
    assert "L9" not in rules(b.model(ir=7))


def _typed(**kw):
    """x (fp32) -> Q/DQ -> Conv(DQ(int8 W)) -> Add(bias) -> y: scales and constants in the types ``kw`` says."""
    b = G(19)
    f16 = np.float16
    b.input("x", [1, 16, 8, 8])
    b.init(np.float32(0.0625), name="s_x")  # exact in fp16 too: Q and DQ keep one scale
    b.init(np.int8(0), name="z_x")
    b.init(np.asarray(0.0625, kw.get("dq_scale", f16)), name="s_xd")
    b.init(np.ones((16, 16, 3, 3), np.int8), name="w_q")
    b.init(np.full(16, 0.01, f16), name="w_s")
    b.init(np.zeros(16, np.int8), name="w_z")
    b.init(kw.get("bias", np.zeros((1, 16, 1, 1), f16)), name="bias")
    b.node("QuantizeLinear", ["x", "s_x", "z_x"], outputs=["xq"], name="q_x")
    b.node("DequantizeLinear", ["xq", "s_xd", "z_x"], outputs=["xd"], name="dq_x")
    b.node("DequantizeLinear", ["w_q", "w_s", "w_z"], outputs=["w"], name="dq_w", axis=0)
    b.node("Conv", ["xd", "w"], outputs=["c"], name="conv", pads=[1, 1, 1, 1])
    y = b.node("Add", ["c", "bias"], outputs=["y16"], name="add")
    if kw.get("cast_pair"):
        y = b.node("Cast", [b.node("Cast", [y], to=TensorProto.FLOAT, name="up")], to=TensorProto.FLOAT16,
                   name="down")
    b.node("Cast", [y], outputs=["y"], to=TensorProto.FLOAT, name="out")
    b.output("y", shape=[1, 16, 8, 8])
    return b.model(ir=9, infer_outputs=False)


def test_strongly_typed_graph_is_clean():
    assert not rules(_typed()) and not rules(_typed(), severity="warning")


@pytest.mark.parametrize("kw, rule, severity", [
    ({"dq_scale": np.float32}, "L24", "error"),  # the DQ writes fp32, the Conv computes in fp16
    ({"bias": np.zeros((1, 16, 1, 1), np.float32)}, "L23", "error"),  # Add(fp16, fp32)
    ({"bias": np.full((1, 16, 1, 1), np.inf, np.float16)}, "L25", "error"),  # an fp16 constant that overflowed
    ({"cast_pair": True}, "L26", "warning"),  # fp16 -> fp32 -> fp16
])
def test_strong_typing_findings(kw, rule, severity):
    assert rule in rules(_typed(**kw), severity=severity)
