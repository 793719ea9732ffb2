"""fold-bn: exactness on every producer kind, refusals with reasons, zoo models, idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.diagnostics import Severity
from qcompiler.ir import copy_graph, load_model
from qcompiler.ir.query import op_histogram
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close

from ..builders import G

TOL = dict(rtol=1e-4, atol=1e-6)


def _run(g, pipeline="fold-bn", **kw):
    ref = copy_graph(g)
    ctx = PassContext()
    res = run_pipeline(g, pipeline, ctx, verify_each=True, **kw)
    return ref, ctx, res


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn(dims, group, bias):
    b = G()
    shape = [2, 8] + [6] * dims
    x = b.input("x", shape)
    y = b.bn(b.conv(x, 8, 8, k=3, group=group, bias=bias, dims=dims), 8)
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g)
    assert res.records[0].stats == {"folded": 1}
    assert "BatchNormalization" not in op_histogram(g)
    assert_outputs_close(ref, g, **TOL)
    again = run_pipeline(g, "fold-bn", PassContext())
    assert not again.records[0].modified


@pytest.mark.parametrize("group", [1, 2])
def test_convtranspose_bn(group):
    b = G()
    x = b.input("x", [2, 4, 5, 5])
    y = b.bn(b.convt(x, 4, 6, group=group), 6)
    b.output(y)
    g = b.graph()
    ref, ctx, _ = _run(g)
    assert "BatchNormalization" not in op_histogram(g)
    assert_outputs_close(ref, g, **TOL)


@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gemm_bn(trans_b, bias, beta):
    b = G()
    x = b.input("x", [3, 10])
    y = b.bn(b.gemm(x, 10, 7, trans_b=trans_b, bias=bias, alpha=0.7, beta=beta), 7)
    b.output(y)
    g = b.graph()
    ref, ctx, _ = _run(g)
    assert op_histogram(g) == {"Gemm": 1}
    assert_outputs_close(ref, g, **TOL)


def test_matmul_bn_rank2_gets_bias_add():
    b = G()
    x = b.input("x", [3, 10])
    y = b.bn(b.matmul(x, 10, 5), 5)
    b.output(y)
    g = b.graph()
    ref, _, _ = _run(g, "infer-shapes,fold-bn")
    assert op_histogram(g) == {"Add": 1, "MatMul": 1}
    assert_outputs_close(ref, g, **TOL)


def test_matmul_bn_rank3_is_not_folded_but_rewritten():
    b = G()
    x = b.input("x", [2, 5, 10])
    y = b.bn(b.matmul(x, 10, 5), 5)  # BN channel axis 1 (=5 tokens), not the MatMul's output axis
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g, "infer-shapes,fold-bn")
    assert res.records[1].stats == {"skipped.no_producer": 1, "mul_add": 1}
    assert any("rank 3" in d.message for d in ctx.diagnostics)
    assert_outputs_close(ref, g, **TOL)


def test_shared_weight_refused_with_reason_then_copied_by_option():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    w = b.init(b.rand(4, 4, 3, 3))
    c1 = b.node("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c2 = b.node("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.add(b.bn(c1, 4), c2)
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g)
    assert res.records[0].stats == {"skipped.shared_weight": 1, "mul_add": 1}
    assert any("is shared with another node" in d.message for d in ctx.diagnostics)
    # folding nothing is not silent: a warning (shown without -v) sums it up
    warn = [d for d in ctx.diagnostics if d.severity == Severity.WARNING]
    assert len(warn) == 1 and "folded none of the 1 BatchNormalization" in warn[0].message
    assert "1 mul add, 1 shared weight" in warn[0].message
    assert_outputs_close(ref, g, **TOL)

    g2 = b.graph()
    ref2, ctx2, res2 = _run(g2, "fold-bn{copy-shared=true}")
    assert res2.records[0].stats == {"folded": 1}
    assert not [d for d in ctx2.diagnostics if d.severity == Severity.WARNING]
    assert_outputs_close(ref2, g2, **TOL)


def test_extra_consumer_of_conv_output():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    c = b.conv(x, 4, 4)
    y = b.add(b.bn(c, 4), c)
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g, "fold-bn{unfoldable=keep}")
    assert not res.records[0].modified
    assert "BatchNormalization" in op_histogram(g)
    assert any("other consumers" in d.message for d in ctx.diagnostics)


def test_non_constant_statistics_left_alone():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    scale = b.input("scale", [4])
    c = b.conv(x, 4, 4)
    bias, mean, var = b.init(b.rand(4)), b.init(b.rand(4)), b.init(np.ones(4, np.float32))
    y = b.node("BatchNormalization", [c, scale, bias, mean, var])
    b.output(y)
    g = b.graph()
    _, ctx, res = _run(g)
    assert not res.records[0].modified
    assert any("is not a constant" in d.message and d.code == "QC302" for d in ctx.diagnostics)


def test_bn_without_producer_becomes_mul_add():
    b = G()
    x = b.input("x", [2, 3, 4, 4])
    y = b.bn(x, 3)
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g)
    assert op_histogram(g) == {"Add": 1, "Mul": 1}
    assert_outputs_close(ref, g, **TOL)


def test_records_bn_statistics():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    y = b.relu(b.bn(b.conv(x, 4, 4), 4))
    b.output(y)
    g = b.graph()
    _, ctx, _ = _run(g)
    from qcompiler.quant.state import BatchNormStats

    stats = ctx.state.require(BatchNormStats).records
    assert len(stats) == 1
    (entry,) = stats.values()
    assert len(entry.mean) == 4 and all(s > 0 for s in entry.std)


@pytest.mark.parametrize("name", ["resnet", "resnet-bottleneck", "mobilenetv2", "conv1x1", "decoder",
                                  "efficientnet-b0"])
def test_zoo_models(zoo_model, name):
    g = load_model(zoo_model(name))
    ref, _, res = _run(g, "fold-bn,cleanup")
    assert "BatchNormalization" not in op_histogram(g)
    assert res.records[0].stats["folded"] > 0
    assert_outputs_close(ref, g, **TOL)


@pytest.mark.parametrize("what", ["var", "epsilon"])
def test_non_finite_statistics_are_not_folded(what):
    """NaN in a statistic (or epsilon) would spread into the conv weight, then into its int8 scale."""
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    y = b.bn(b.conv(x, 4, 4), 4, eps=float("nan") if what == "epsilon" else 1e-5)
    b.output(y)
    g = b.graph()
    if what == "var":
        bn = next(n for n in g.nodes if n.op == "BatchNormalization")
        v = np.array(bn.inputs[4].values)
        v[1] = np.inf
        bn.inputs[4].values = v
    _, ctx, res = _run(g)
    assert res.records[0].stats == {"skipped.not_inference": 1}
    assert "BatchNormalization" in op_histogram(g)
    assert any(("NaN or Inf" if what == "var" else "epsilon=nan") in d.message for d in ctx.diagnostics)
