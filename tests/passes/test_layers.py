"""passes/_layers.py: a weighted layer seen per channel.  Every channel operation is checked against
onnxruntime on a one-layer graph of each kind: scaling output channel o by s[o] scales the layer's output
channel o; scaling input channel i by s[i] equals feeding x[i] * s[i]; input_response is the output change
for a per-channel input shift."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir import copy_graph
from qcompiler.ir.edit import Namer
from qcompiler.ir.layers import LayerKind
from qcompiler.passes._layers import Layer, NotALayer, input_response, weight_exclusive
from qcompiler.testing import run

from ..builders import G


def _one_layer(kind: str):
    """(graph, input name, input shape, channel axis of input and output)."""
    b = G(seed=3)
    if kind == "conv":
        x = b.input("x", [2, 6, 5, 5])
        y = b.conv(x, 6, 9, group=3)
        shape, ax = (2, 6, 5, 5), 1
    elif kind == "convtranspose":
        x = b.input("x", [2, 6, 4, 4])
        y = b.convt(x, 6, 8, group=2)
        shape, ax = (2, 6, 4, 4), 1
    elif kind == "gemm":
        x = b.input("x", [3, 7])
        y = b.gemm(x, 7, 5, trans_b=True, alpha=0.5, beta=2.0)
        shape, ax = (3, 7), -1
    elif kind == "gemm-notrans":
        x = b.input("x", [3, 7])
        y = b.gemm(x, 7, 5, trans_b=False)
        shape, ax = (3, 7), -1
    else:
        x = b.input("x", [3, 7])
        y = b.matmul(x, 7, 5)
        shape, ax = (3, 7), -1
    b.output(y)
    return b.graph(), shape, ax


KINDS = ["conv", "convtranspose", "gemm", "gemm-notrans", "matmul"]


def _bcast(v, ndim, ax):
    shape = [1] * ndim
    shape[ax] = -1
    return v.reshape(shape)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_out_scales_output_channels(kind):
    g, shape, ax = _one_layer(kind)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = run(copy_graph(g), {"x": x})
    lay = Layer.of(g.nodes[0])
    s = np.random.default_rng(1).uniform(0.5, 2.0, lay.out_channels)
    lay.scale_out(s)
    lay.commit(g, Namer(g))
    (name,) = ref
    y = run(g, {"x": x})[name]
    np.testing.assert_allclose(y, ref[name] * _bcast(s, y.ndim, ax).astype(np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_in_equals_scaling_the_input(kind):
    g, shape, ax = _one_layer(kind)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    lay = Layer.of(g.nodes[0])
    s = np.random.default_rng(2).uniform(0.5, 2.0, lay.in_channels)
    ref = run(copy_graph(g), {"x": (x * _bcast(s, x.ndim, ax)).astype(np.float32)})
    lay.scale_in(s)
    lay.commit(g, Namer(g))
    (name,) = ref
    np.testing.assert_allclose(run(g, {"x": x})[name], ref[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "gemm", "gemm-notrans", "matmul"])
def test_input_response_is_the_output_change_of_a_channel_shift(kind):
    g, shape, ax = _one_layer(kind)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    lay = Layer.of(g.nodes[0])
    c = np.random.default_rng(3).uniform(-1, 1, lay.in_channels)
    (name,) = g.outputs
    y0 = run(g, {"x": x})[name.name]
    y1 = run(g, {"x": (x + _bcast(c, x.ndim, ax)).astype(np.float32)})[name.name]
    delta = y1 - y0
    if kind == "conv":  # away from the zero-padded border every pixel sees the whole kernel
        delta = delta[:, :, 1:-1, 1:-1]
    expect = input_response(lay.node, lay.geometry, lay.W, c)
    np.testing.assert_allclose(delta, np.broadcast_to(_bcast(expect, delta.ndim, ax), delta.shape), atol=1e-4)


def test_ranges_follow_the_geometry():
    g, _, _ = _one_layer("convtranspose")
    lay = Layer.of(g.nodes[0])
    assert lay.kind is LayerKind.CONV_TRANSPOSE and (lay.in_channels, lay.out_channels) == (6, 8)
    W = lay.W  # [Cin=6, Cout/g=4, 4, 4], g=2
    out = lay.out_ranges()
    for o in range(8):
        grp, oc = divmod(o, 4)
        assert out[o] == np.abs(W[grp * 3:(grp + 1) * 3, oc]).max()
    np.testing.assert_array_equal(lay.in_ranges(), np.abs(W).reshape(6, -1).max(axis=1))
    m = lay.absmax_matrix()
    assert m.shape == (8, 6) and m[0, 5] == 0 and m[0, 0] == np.abs(W[0, 0]).max()  # zero outside the group


@pytest.mark.parametrize("build, reason", [
    (lambda b, x: b.node("Relu", [x]), "Relu is not a weighted op"),
    (lambda b, x: b.node("Conv", [x, b.node("Neg", [b.init(b.rand(4, 3, 3, 3))])]), "is not a constant"),
    (lambda b, x: b.node("Conv", [x, b.init(np.ones((4, 3, 3, 3), np.int8))]), "has dtype int8, not float"),
    (lambda b, x: b.node("Gemm", [b.node("Flatten", [x]), b.init(b.rand(5, 192))], transA=1), "transA=1"),
])
def test_refusals_say_why(build, reason):
    b = G()
    x = b.input("x", [1, 3, 8, 8])
    b.output(build(b, x))
    g = b.graph()
    node = g.nodes[-1]
    with pytest.raises(NotALayer, match=reason):
        Layer.of(node)
    assert reason in Layer.refusal(node)


def test_matmul_bias_in_a_following_add_is_part_of_the_layer():
    b = G()
    x = b.input("x", [3, 7])
    y = b.add(b.matmul(x, 7, 5), b.init(b.rand(5)))
    b.output(b.relu(y))
    g = b.graph()
    lay = Layer.of(g.nodes[0], with_matmul_bias=True, graph=g)
    assert lay.bias_node is g.nodes[1] and lay.b.shape == (5,)
    assert Layer.of(g.nodes[0]).b is None


def test_weight_exclusive_through_identity_and_shared():
    b = G()
    x = b.input("x", [1, 3, 5, 5])
    w = b.init(b.rand(3, 3, 1, 1))
    a = b.node("Conv", [x, b.node("Identity", [w])])
    c = b.node("Conv", [a, b.init(b.rand(3, 3, 1, 1))])
    d = b.node("Conv", [c, w])  # shares w with the first conv
    b.output(d)
    g = b.graph()
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert not weight_exclusive(g, convs[0], 1)
    assert weight_exclusive(g, convs[1], 1)
    assert not weight_exclusive(g, convs[2], 1)
