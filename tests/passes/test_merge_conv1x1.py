"""merge-conv1x1: both orders, grouped first convs, bias at zero-padded borders, FLOP bound, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir import copy_graph, load_model
from qcompiler.ir.query import op_histogram
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close

from ..builders import G

TOL = dict(rtol=1e-4, atol=1e-6)


def _run(g, pipeline="merge-conv1x1"):
    ref = copy_graph(g)
    ctx = PassContext()
    res = run_pipeline(g, pipeline, ctx, verify_each=True)
    return ref, ctx, res


@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (1, 1, 0, 1)])
@pytest.mark.parametrize("bias1,bias2", [(True, True), (False, True), (True, False), (False, False)])
def test_kxk_then_1x1(k, stride, pad, dil, bias1, bias2):
    b = G()
    x = b.input("x", [2, 6, 9, 9])
    y = b.conv(b.conv(x, 6, 8, k=k, stride=stride, pad=pad, dilation=dil, bias=bias1), 8, 5, k=1, bias=bias2)
    b.output(y)
    g = b.graph()
    ref, ctx, res = _run(g)
    assert res.records[0].stats == {"merged": 1}
    assert op_histogram(g) == {"Conv": 1}
    assert_outputs_close(ref, g, **TOL)
    assert not run_pipeline(g, "merge-conv1x1", PassContext()).records[0].modified


@pytest.mark.parametrize("group", [2, 4])
def test_grouped_first_conv_becomes_dense(group):
    b = G()
    x = b.input("x", [1, 8, 7, 7])
    y = b.conv(b.conv(x, 8, 8, k=3, group=group), 8, 4, k=1)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g, "merge-conv1x1{max-flops-growth=10}")
    assert res.records[0].stats == {"merged": 1}
    conv = next(n for n in g.nodes if n.op == "Conv")
    assert conv.attrs["group"] == 1
    assert_outputs_close(ref, g, **TOL)


def test_depthwise_growth_bound_refuses_with_reason():
    b = G()
    x = b.input("x", [1, 32, 7, 7])
    y = b.conv(b.conv(x, 32, 32, k=3, group=32), 32, 16, k=1)
    b.output(y)
    g = b.graph()
    _, ctx, res = _run(g)
    assert not res.records[0].modified
    assert any("multiply-adds" in d.message and "max-flops-growth" in d.message for d in ctx.diagnostics)


@pytest.mark.parametrize("stride", [1, 2])
def test_1x1_then_kxk_exact_when_no_padding(stride):
    b = G()
    x = b.input("x", [2, 6, 9, 9])
    y = b.conv(b.conv(x, 6, 4, k=1, bias=True), 4, 5, k=3, stride=stride, pad=0)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats == {"merged": 1}
    assert_outputs_close(ref, g, **TOL)


def test_1x1_then_padded_kxk_without_bias_is_exact():
    b = G()
    x = b.input("x", [2, 6, 9, 9])
    y = b.conv(b.conv(x, 6, 4, k=1, bias=False), 4, 5, k=3, pad=1)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats == {"merged": 1}
    assert_outputs_close(ref, g, **TOL)


def test_1x1_bias_into_zero_padding_is_refused():
    b = G()
    x = b.input("x", [2, 6, 9, 9])
    y = b.conv(b.conv(x, 6, 4, k=1, bias=True), 4, 5, k=3, pad=1)
    b.output(y)
    g = b.graph()
    _, ctx, res = _run(g)
    assert not res.records[0].modified
    assert any("borders" in d.message for d in ctx.diagnostics)


def test_intermediate_with_two_consumers_is_left():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    c = b.conv(x, 4, 4)
    y = b.add(b.conv(c, 4, 4, k=1), c)
    b.output(y)
    g = b.graph()
    _, _, res = _run(g)
    assert not res.records[0].modified


def test_chain_collapses():
    b = G()
    x = b.input("x", [1, 4, 8, 8])
    y = b.conv(b.conv(b.conv(x, 4, 6, k=3), 6, 6, k=1), 6, 4, k=1)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats == {"merged": 2}
    assert op_histogram(g) == {"Conv": 1}
    assert_outputs_close(ref, g, **TOL)


def test_zoo_conv1x1_model(zoo_model, digits):
    g = load_model(zoo_model("conv1x1"))
    ref, _, res = _run(g, "fold-bn,merge-conv1x1,cleanup")
    assert res.records[1].stats["merged"] == 3
    assert_outputs_close(ref, g, **TOL)
    assert abs(digits.evaluate(g) - digits.evaluate(ref)) < 1e-9
    assert np.isfinite(res.records[1].seconds)
