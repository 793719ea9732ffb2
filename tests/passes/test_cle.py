"""cle: exact, equalizes ranges, handles triplets/Gemm/MatMul/ReLU6, skips what it must, idempotent."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.diagnostics import Severity
from qcompiler.ir import copy_graph, load_model
from qcompiler.ir.query import const_value, op_histogram
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close

from ..builders import G
from qcompiler.passes.cle import CLEReport

TOL = dict(rtol=1e-4, atol=1e-6)


def _unbalance(b: G, w_name: str, factor: float = 50.0) -> None:
    """Make per-output-channel ranges of an initializer very different (what CLE should fix)."""
    for t in b.inits:
        if t.name == w_name:
            import onnx

            arr = onnx.numpy_helper.to_array(t).copy()
            scales = np.geomspace(1.0 / factor, factor, arr.shape[0]).astype(np.float32)
            arr = arr * scales.reshape((-1,) + (1,) * (arr.ndim - 1))
            t.CopyFrom(onnx.numpy_helper.from_array(arr, w_name))


def _run(g, pipeline="cle"):
    ref = copy_graph(g)
    ctx = PassContext()
    res = run_pipeline(g, pipeline, ctx, verify_each=True)
    return ref, ctx, res


def _spread(w: np.ndarray) -> float:
    r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return float(r.max() / r.min())


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "none", "PRelu"])
def test_conv_pair_equalized_and_exact(act):
    b = G()
    x = b.input("x", [2, 4, 8, 8])
    c1 = b.conv(x, 4, 8, k=3)
    _unbalance(b, b.inits[-2].name)
    if act == "Relu":
        h = b.relu(c1)
    elif act == "LeakyRelu":
        h = b.node("LeakyRelu", [c1], alpha=0.1)
    elif act == "PRelu":
        h = b.node("PRelu", [c1, b.init(np.full((8, 1, 1), 0.2, np.float32), "slope")])
    else:
        h = c1
    y = b.conv(h, 8, 6, k=3)
    b.output(y)
    g = b.graph()
    w_before = const_value(next(n for n in g.nodes if n.op == "Conv").inputs[1]).copy()
    ref, ctx, res = _run(g)
    assert res.records[0].stats["pairs"] == 1
    w_after = const_value(next(n for n in g.nodes if n.op == "Conv").inputs[1])
    assert _spread(w_after) < _spread(w_before) / 5
    assert_outputs_close(ref, g, **TOL)
    report = ctx.state.require(CLEReport).layers
    assert report[0]["spread_after"] < report[0]["spread_before"]
    assert not run_pipeline(g, "cle", PassContext()).records[0].modified


def test_triplet_conv_depthwise_conv_converges():
    b = G()
    x = b.input("x", [2, 8, 8, 8])
    c1 = b.conv(x, 8, 16, k=1)
    _unbalance(b, b.inits[-2].name)
    c2 = b.conv(b.relu(c1), 16, 16, k=3, group=16)
    c3 = b.conv(b.relu(c2), 16, 8, k=1)
    b.output(c3)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats["pairs"] == 2
    assert res.records[0].stats["sweeps"] > 1
    assert_outputs_close(ref, g, **TOL)


def test_relu6_is_rescaled_exactly():
    b = G()
    x = b.input("x", [2, 4, 8, 8])
    c1 = b.conv(x, 4, 8, k=3, wscale=2.0)
    _unbalance(b, b.inits[-2].name)
    y = b.conv(b.relu6(c1), 8, 4, k=1)
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g)
    assert res.records[0].stats["clips_rewritten"] == 1
    assert "Clip" not in op_histogram(g) and "Min" in op_histogram(g)
    bound = next(const_value(n.inputs[1]) for n in g.nodes if n.op == "Min")
    assert bound.shape == (8, 1, 1) and not np.allclose(bound, 6.0)
    assert_outputs_close(ref, g, **TOL)
    assert not any(d.code == "QC303" for d in ctx.diagnostics)


def test_relu6_barrier_and_relu_mode():
    def build():
        b = G()
        x = b.input("x", [2, 4, 8, 8])
        c1 = b.conv(x, 4, 8, k=3)
        b.output(b.conv(b.relu6(c1), 8, 4, k=1))
        return b.graph()
    g = build()
    _, ctx, res = _run(g, "cle{clip=barrier}")
    assert not res.records[0].modified
    assert any("clip=barrier" in d.message for d in ctx.diagnostics)
    g = build()
    _, ctx, res = _run(g, "cle{clip=relu}")
    assert res.records[0].modified
    assert any(d.code == "QC303" and "changes the model" in d.message for d in ctx.diagnostics)


@pytest.mark.parametrize("trans_b", [True, False])
def test_gemm_pair(trans_b):
    b = G()
    x = b.input("x", [3, 12])
    h = b.relu(b.gemm(x, 12, 10, trans_b=trans_b))
    _unbalance(b, b.inits[-2].name) if trans_b else None
    y = b.gemm(h, 10, 5, trans_b=trans_b)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats["pairs"] == 1
    assert_outputs_close(ref, g, **TOL)


def test_matmul_with_bias_add_pair():
    b = G()
    x = b.input("x", [2, 5, 12])
    h = b.add(b.matmul(x, 12, 10), b.init(b.rand(10), "bias"))
    y = b.matmul(b.relu(h), 10, 4)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats["pairs"] == 1
    assert_outputs_close(ref, g, **TOL)


def test_skips_branching_intermediate_with_remark():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    h = b.relu(b.conv(x, 4, 4))
    y = b.add(b.conv(h, 4, 4), h)
    b.output(y)
    g = b.graph()
    _, ctx, res = _run(g)
    assert not res.records[0].modified
    assert any("has 2 consumers" in d.message for d in ctx.diagnostics)
    warn = [d.message for d in ctx.diagnostics if d.severity == Severity.WARNING]
    assert len(warn) == 1 and warn[0].startswith("cle found no layer pair to equalize (2 layer(s) refused")


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet", "resnet-bottleneck", "conv1x1", "decoder"])
def test_zoo_exact(zoo_model, name):
    g = load_model(zoo_model(name))
    ref, ctx, res = _run(g, "fold-bn,merge-conv1x1,cle,cleanup")
    assert res.records[2].stats["pairs"] > 0
    assert_outputs_close(ref, g, **TOL)


@pytest.mark.parametrize("name,factor", [("mobilenetv2", 1.4), ("mobilenetv2-full", 5.0)])
def test_mobilenetv2_ranges_shrink(zoo_model, name, factor):
    """Digits-trained model (mild spreads) and the MobileNetV2 architecture with pretrained-like BatchNorm
    statistics (spreads of hundreds): the median max/min channel-range ratio shrinks."""
    g = load_model(zoo_model(name))
    ctx = PassContext()
    run_pipeline(g, "fold-bn,cle", ctx)
    rep = ctx.state.require(CLEReport).layers
    before = np.median([r["spread_before"] for r in rep])
    after = np.median([r["spread_after"] for r in rep])
    assert after < before / factor
