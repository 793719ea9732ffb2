"""Calibration inside If, Loop and Scan bodies: the observed tensors are threaded out through the enclosing
nodes' outputs, and the statistics equal what numpy computes for the same intermediates (both If branches, every
Loop iteration, every Scan step; per-channel axes shifted past the stacked iterations)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.calib import ObserverConfig, as_data_source, collect
from qcompiler.calib.collect import build_probe_graph
from qcompiler.ir import import_model
from qcompiler.ir.graph import iter_graphs

F = TensorProto.FLOAT
RNG = np.random.default_rng(3)
WA, WB, WL, WS = (RNG.standard_normal((4, 4)).astype(np.float32) for _ in range(4))


def _vi(name, shape=None, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def _model() -> onnx.ModelProto:
    """x -> If(sum(x) > 0: Relu(x Wa) | x Wb) -> Loop x3 (h = tanh(h Wl)) -> Scan over [y, y] (s += relu(e Ws))."""
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "wa"], ["a_mm"], name="a_mm"),
                                helper.make_node("Relu", ["a_mm"], ["a_relu"], name="a_relu")],
                               "then", [], [_vi("a_relu")], [numpy_helper.from_array(WA, "wa")])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "wb"], ["b_mm"], name="b_mm")],
                               "else", [], [_vi("b_mm")], [numpy_helper.from_array(WB, "wb")])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="cond_id"),
         helper.make_node("MatMul", ["h_in", "wl"], ["loop_mm"], name="loop_mm"),
         helper.make_node("Tanh", ["loop_mm"], ["h_out"], name="loop_tanh")],
        "body", [_vi("it", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("h_in")],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("h_out")], [numpy_helper.from_array(WL, "wl")])
    scan_body = helper.make_graph(
        [helper.make_node("MatMul", ["e", "ws"], ["scan_mm"], name="scan_mm"),
         helper.make_node("Relu", ["scan_mm"], ["scan_relu"], name="scan_relu"),
         helper.make_node("Add", ["s_in", "scan_relu"], ["s_out"], name="scan_add")],
        "scan_body", [_vi("s_in", ["N", 4]), _vi("e", ["N", 4])], [_vi("s_out", ["N", 4])],
        [numpy_helper.from_array(WS, "ws")])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["sum"], name="sum", keepdims=0),
        helper.make_node("Greater", ["sum", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trip", "true", "y"], ["h"], name="refine", body=body),
        helper.make_node("Unsqueeze", ["h", "ax0"], ["h1"], name="unsq"),
        helper.make_node("Concat", ["h1", "h1"], ["seq"], name="seq", axis=0),
        helper.make_node("Scan", ["h", "seq"], ["out"], name="scan", body=scan_body, num_scan_inputs=1),
    ]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(3, np.int64), "trip"),
             numpy_helper.from_array(np.array(True), "true"), numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    g = helper.make_graph(nodes, "m", [_vi("x", ["N", 4])], [_vi("out", ["N", 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _reference(x: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Every value each observed tensor takes, per sample (batch 1), in numpy."""
    vals: dict[str, list[np.ndarray]] = {k: [] for k in ("a_relu", "b_mm", "loop_mm", "scan_mm")}
    for xi in x:
        xi = xi[None].astype(np.float64)
        if xi.sum() > 0:
            y = np.maximum(xi @ WA, 0)
            vals["a_relu"].append(y)
        else:
            y = xi @ WB
            vals["b_mm"].append(y)
        h = y
        for _ in range(3):
            m = h @ WL
            vals["loop_mm"].append(m)
            h = np.tanh(m)
        for _ in range(2):  # the scan sequence is [h, h]
            vals["scan_mm"].append(h @ WS)
    return vals


def test_probe_graph_threads_subgraph_tensors_out():
    g = import_model(_model())
    requests = {t: ObserverConfig() for t in ("a_relu", "b_mm", "loop_mm", "scan_mm")}
    probe, probes = build_probe_graph(g, requests)
    by = {p.name: p for p in probes}
    assert by["a_relu"].loops == 0 and by["b_mm"].loops == 0
    assert by["loop_mm"].loops == 1 and by["scan_mm"].loops == 1
    assert {p.output for p in probes} == {t.name for t in probe.outputs}
    branch = next(n for n in probe.nodes if n.op == "If")
    # both branches grew the same number of outputs (each returns an empty tensor for the other's probe)
    assert len(branch.attrs["then_branch"].outputs) == len(branch.attrs["else_branch"].outputs) == 3
    # the model itself is untouched
    assert sum(len(sg.nodes) for sg in iter_graphs(g)) == 16


def test_statistics_inside_bodies_equal_numpy():
    x = np.random.default_rng(0).standard_normal((24, 4)).astype(np.float32)
    g = import_model(_model())
    requests = {t: ObserverConfig() for t in ("a_relu", "b_mm", "loop_mm", "scan_mm")}
    requests["loop_mm"] = ObserverConfig(axis=1)  # per channel: axis 1 of [N, 4], 2 of the stacked [3, N, 4]
    stats = collect(g, requests, as_data_source({"x": x}, batch_size=1))
    ref = _reference(x)
    assert ref["a_relu"] and ref["b_mm"]  # the data takes both branches
    for name, values in ref.items():
        v = np.concatenate(values)
        st = stats[name]
        if name == "loop_mm":
            np.testing.assert_allclose(st.min, v.min(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(st.max, v.max(0), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(float(st.min), v.min(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(float(st.max), v.max(), rtol=1e-5, atol=1e-6)
