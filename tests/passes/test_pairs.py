"""passes/_pairs.py: layer pairs joined by positively homogeneous ops, the reasons a layer starts none, Clip
bounds, per-channel operands, and the exact ReLU6 rewrite."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir import copy_graph
from qcompiler.ir.edit import Namer
from qcompiler.passes._pairs import (channel_const_shape, clip_bounds, convert_clip, find_pairs, per_channel_operand,
                                     per_channel_values)
from qcompiler.testing import assert_outputs_close

from ..builders import G


def _chain(*between):
    """conv -> <between ops> -> conv; ``between`` are functions (builder, tensor) -> tensor."""
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    t = b.conv(x, 4, 8)
    for f in between:
        t = f(b, t)
    b.output(b.conv(t, 8, 4))
    return b.graph()


@pytest.mark.parametrize("between, ops", [
    ((), []),
    ((lambda b, t: b.relu(t),), ["Relu"]),
    ((lambda b, t: b.node("LeakyRelu", [t], alpha=0.1), lambda b, t: b.node("MaxPool", [t], kernel_shape=[2, 2])),
     ["LeakyRelu", "MaxPool"]),
    ((lambda b, t: b.relu6(t),), ["Clip"]),
    ((lambda b, t: b.node("Min", [t, b.init(np.full((8, 1, 1), 3.0, np.float32))]),), ["Min"]),
])
def test_pairs_through_homogeneous_ops(between, ops):
    g = _chain(*between)
    pairs, skipped = find_pairs(g)
    assert len(pairs) == 1 and [o.op for o in pairs[0].ops] == ops
    assert pairs[0].l1.op == pairs[0].l2.op == "Conv"
    assert pairs[0].only_relu == all(o in ("Relu",) for o in ops)
    assert [n.op for n, _ in skipped] == ["Conv"]  # the last conv feeds the graph output


@pytest.mark.parametrize("between, clip, reason", [
    ((lambda b, t: b.node("Sigmoid", [t]),), "rescale", "Sigmoid), which is not positively homogeneous"),
    ((lambda b, t: b.relu6(t),), "barrier", "is a Clip [0, 6] (clip=barrier)"),
    ((lambda b, t: b.node("Add", [t, b.init(b.rand(8, 1, 1))]),), "rescale", "not positively homogeneous"),
])
def test_chain_breakers_are_named(between, clip, reason):
    pairs, skipped = find_pairs(_chain(*between), clip=clip)
    assert not pairs and reason in skipped[0][1]


def test_branching_and_bias_mode():
    b = G()
    x = b.input("x", [1, 4, 6, 6])
    t = b.relu(b.conv(x, 4, 8))
    b.output(b.add(b.conv(t, 8, 8), t))  # t has two consumers
    pairs, skipped = find_pairs(b.graph())
    assert not pairs and "has 2 consumers" in skipped[0][1]
    pairs, skipped = find_pairs(_chain(lambda b, t: b.node("LeakyRelu", [t])), for_bias=True)
    assert not pairs and "is not a Relu" in skipped[0][1]


def test_clip_bounds_all_spellings():
    b = G(10)
    x = b.input("x", [2, 3])
    old = b.node("Clip", [x], min=0.0, max=6.0)  # opset < 11: attributes
    b.output(old)
    assert clip_bounds(b.graph().nodes[0]) == (0.0, 6.0)
    b = G()
    x = b.input("x", [2, 3])
    b.output(b.node("Clip", [x, b.init(np.float32(-1.0))]))
    assert clip_bounds(b.graph().nodes[0]) == (-1.0, np.inf)
    b = G()
    x = b.input("x", [2, 3])
    b.output(b.node("Clip", [x, b.init(np.float32(0.0)), b.node("Abs", [x])]))
    assert clip_bounds(b.graph().nodes[-1]) is None  # a run-time bound


def test_per_channel_operands():
    b = G()
    x = b.input("x", [1, 8, 4, 4])
    b.output(b.node("Max", [x, b.init(np.arange(8, dtype=np.float32).reshape(8, 1, 1))]))
    g = b.graph()
    n = g.nodes[0]
    assert per_channel_operand(n, 8, 4, last_axis=False) == 1
    np.testing.assert_array_equal(per_channel_values(n, 1, 8), np.arange(8))
    assert per_channel_operand(n, 8, 4, last_axis=True) is None  # wrong axis for a dense layer
    assert per_channel_operand(n, 4, 4, last_axis=False) is None
    assert channel_const_shape(8, 4) == (8, 1, 1) and channel_const_shape(8, 2) == (8,)


@pytest.mark.parametrize("mode, exact", [("rescale", True), ("relu", False)])
def test_convert_clip(mode, exact):
    g = _chain(lambda b, t: b.relu6(t))
    ref = copy_graph(g)
    clip = next(n for n in g.nodes if n.op == "Clip")
    new = convert_clip(g, clip, 8, 4, Namer(g), mode)
    assert [n.op for n in new] == (["Relu", "Min"] if mode == "rescale" else ["Relu"])
    g.cleanup()
    x = {"x": (np.random.default_rng(0).standard_normal((1, 4, 6, 6)) * 20).astype(np.float32)}
    if exact:
        assert_outputs_close(ref, g, x, rtol=1e-6, atol=1e-6)
    else:
        with pytest.raises(AssertionError):
            assert_outputs_close(ref, g, x, rtol=1e-6, atol=1e-6)
