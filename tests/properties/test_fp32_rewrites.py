"""Property tests: seeded random conv graphs through every FP32-preserving pass stay numerically equal.

Graphs mix kxk convs (random groups, strides, pads, dilations, bias or not), BatchNormalization,
Relu / ReLU6 / LeakyRelu / none, 1x1 convs (merge-conv1x1 targets), residual Adds in both input
orders (fold-residual targets) and Gemm heads.  Tolerance: 1e-4 of the output range.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompiler.ir import copy_graph
from qcompiler.pm import PassContext, default_registry, run_pipeline
from qcompiler.testing import assert_outputs_close, random_feeds

from ..builders import G

FP32_PASSES = sorted(n for n, c in default_registry().passes().items() if c.fp32_preserving)


@st.composite
def conv_graphs(draw):
    seed = draw(st.integers(0, 2**16))
    b = G(seed=seed)
    c = draw(st.sampled_from([4, 8]))
    hw = draw(st.integers(6, 10))
    x = b.input("x", [2, c, hw, hw])
    cur, ch = x, c
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv1x1", "residual", "depthwise"]))
        if kind == "residual":
            k = draw(st.sampled_from([1, 3, 5]))
            dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
            group = draw(st.sampled_from([g for g in (1, 2, 4) if ch % g == 0]))
            conv = b.conv(cur, ch, ch, k=k, dilation=dil, group=group, bias=draw(st.booleans()))
            cur = b.add(conv, cur) if draw(st.booleans()) else b.add(cur, conv)
        else:
            cout = draw(st.sampled_from([4, 8, 12])) if kind != "depthwise" else ch
            if kind == "conv1x1":
                k, stride, group, dil = 1, 1, 1, 1
            elif kind == "depthwise":
                k, stride, group, dil = 3, draw(st.sampled_from([1, 2])), ch, 1
            else:
                k = draw(st.sampled_from([1, 3, 5]))
                stride = draw(st.sampled_from([1, 2]))
                dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
                group = draw(st.sampled_from([g for g in (1, 2, 4) if ch % g == 0 and cout % g == 0]))
            cur = b.conv(cur, ch, cout, k=k, stride=stride, group=group, dilation=dil, bias=draw(st.booleans()))
            ch = cout
            if draw(st.booleans()):
                cur = b.bn(cur, ch)
        act = draw(st.sampled_from(["relu", "relu6", "leaky", "none"]))
        if act == "relu":
            cur = b.relu(cur)
        elif act == "relu6":
            cur = b.relu6(cur)
        elif act == "leaky":
            cur = b.node("LeakyRelu", [cur], alpha=0.05)
    if draw(st.booleans()):
        cur = b.node("GlobalAveragePool", [cur])
        cur = b.node("Flatten", [cur])
        cur = b.gemm(cur, ch, 5, trans_b=draw(st.booleans()))
        if draw(st.booleans()):
            cur = b.bn(cur, 5)
    b.output(cur)
    return b.graph()


@pytest.mark.parametrize("name", FP32_PASSES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=conv_graphs())
def test_each_pass_preserves_outputs(name, g):
    ref = copy_graph(g)
    ctx = PassContext()
    feeds = random_feeds(g, batch=2, seed=1)
    if name in ("absorb-bias", "smooth-quant", "awq"):
        from qcompiler.calib import as_data_source

        ctx.calib_data = as_data_source(feeds)
    run_pipeline(g, name, ctx, verify_each=True)
    assert_outputs_close(ref, g, feeds, rtol=1e-4, atol=1e-5)
    again = run_pipeline(g, name, ctx, verify_each=True)
    if name != "awq":  # awq searches its scales again on the rescaled weights; it stays exact (above)
        assert not again.records[0].modified, again.records[0].stats
    assert_outputs_close(ref, g, feeds, rtol=1e-4, atol=1e-5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=conv_graphs())
def test_full_prep_pipeline_reaches_a_fixpoint(g):
    ref = copy_graph(g)
    pipe = "repeat{max-steps=4}(fold-bn,merge-conv1x1{max-flops-growth=100},fold-residual,cle,cleanup)"
    ctx = PassContext()
    run_pipeline(g, pipe, ctx, verify_each=True)
    feeds = random_feeds(g, batch=2, seed=2)
    assert_outputs_close(ref, g, feeds, rtol=1e-4, atol=1e-5)
    assert not any("max-steps" in d.message for d in ctx.diagnostics)
