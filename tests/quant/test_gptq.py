"""GPTQ's math: the views of each layer kind as [rows, K] (exact round trips, im2col patches that reproduce the
layer in onnxruntime), the column update against a direct least-squares solution, and GPTQ never worse than
round-to-nearest on the objective it minimises."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.ir.layers import LayerGeometry
from qcompiler.quant.gptq import from_matrix, gptq, grid_quantizer, matrix_view, patches, rtn
from qcompiler.testing import run

from ..builders import G


def _node(b, op, x, w, **attrs):
    return b.node(op, [x, b.init(w, name="w")], name="layer", **attrs)


CONVS = [
    ("Conv", (8, 4, 3, 3), {"pads": [1, 1, 1, 1]}, 1),
    ("Conv", (8, 2, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 0], "group": 2}, 2),
    ("Conv", (6, 1, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2], "group": 6}, 6),
    ("Conv", (5, 3, 4), {"strides": [2], "pads": [1, 1]}, 1),
    ("ConvTranspose", (6, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 1),
    ("ConvTranspose", (6, 2, 3, 3), {"strides": [2, 2], "pads": [0, 0, 0, 0], "group": 3}, 3),
]


@pytest.mark.parametrize("op, wshape, attrs, group", CONVS)
def test_patches_times_the_matrices_is_the_layer(op, wshape, attrs, group):
    rng = np.random.default_rng(0)
    cin = wshape[1] * group if op == "Conv" else wshape[0]
    nd = len(wshape) - 2
    xshape = (2, cin) + (7,) * nd
    b = G()
    x = b.input("x", list(xshape))
    W = rng.standard_normal(wshape).astype(np.float32)
    y = _node(b, op, x, W, **({"kernel_shape": list(wshape[2:])} | attrs))
    b.output(y)
    g = b.graph()
    xs = rng.standard_normal(xshape).astype(np.float32)
    ref = run(g, {"x": xs})[y]
    geo = LayerGeometry.of(g.nodes[0], wshape)
    mats = matrix_view(W.astype(np.float64), geo)
    assert np.array_equal(from_matrix(mats, geo), W)  # the round trip is exact
    ps = patches(xs, geo, dict(g.nodes[0].attrs))
    cout = ref.shape[1]
    got = np.concatenate([p @ m.T for p, m in zip(ps, mats)], axis=1)  # [N*positions, Cout]
    want = np.moveaxis(ref, 1, -1).reshape(-1, cout)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op, shape, trans_b", [("Gemm", (5, 7), True), ("Gemm", (7, 5), False),
                                                ("MatMul", (7, 5), False)])
def test_linear_views(op, shape, trans_b):
    W = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    b = G()
    x = b.input("x", [2, 7])
    b.output(_node(b, op, x, W.astype(np.float32), **({"transB": int(trans_b)} if op == "Gemm" else {})))
    geo = LayerGeometry.of(b.graph().nodes[0], shape)
    (m,) = matrix_view(W, geo)
    assert m.shape == (5, 7)  # [outputs, K]
    assert np.array_equal(from_matrix([m], geo), W)


def _layer(rng, rows=6, k=10, n=200):
    W = rng.standard_normal((rows, k))
    X = rng.standard_normal((n, k)) @ rng.standard_normal((k, k))  # correlated inputs: what GPTQ exploits
    return W, X


def test_one_column_update_is_the_least_squares_solution():
    """Round only column 0 (the other columns' quantizer is the identity): GPTQ's update of the remaining
    columns must be argmin ||(W - [q0, W']) X^T||^2 over W', solved directly."""
    rng = np.random.default_rng(1)
    W, X = _layer(rng)
    H = 2 * X.T @ X
    s = 0.37

    def q(col, j):
        return np.round(col / s) * s if j == 0 else col

    Q = gptq(W, H, q, damp=0.0, block=4)
    target = X @ W.T  # [n, rows]
    resid = target - np.outer(X[:, 0], Q[:, 0])
    Wrest, *_ = np.linalg.lstsq(X[:, 1:], resid, rcond=None)
    np.testing.assert_allclose(Q[:, 1:], Wrest.T, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("block", [3, 128])
def test_gptq_beats_round_to_nearest_on_its_objective(act_order, block):
    rng = np.random.default_rng(2)
    W, X = _layer(rng, rows=16, k=32, n=400)
    H = 2 * X.T @ X
    amax = np.abs(W).max(axis=1, keepdims=True)
    scale = np.repeat(amax / 7, W.shape[1], axis=1)  # per-channel s4
    q = grid_quantizer(scale, np.zeros_like(scale), -7, 7)
    Qg = gptq(W, H, q, block=block, act_order=act_order)
    Qr = rtn(W, q)
    err = lambda Q: float(np.sum((X @ (W - Q).T) ** 2))  # noqa: E731
    assert err(Qg) < 0.85 * err(Qr)
    ints = Qg / scale
    assert np.allclose(ints, np.round(ints)) and np.abs(np.round(ints)).max() <= 7  # on the grid


def test_dead_inputs_and_blocked_scales():
    """A column that never fires (diag H = 0) is dropped (zero); per-block scales (static groups of 4 columns)."""
    rng = np.random.default_rng(3)
    W, X = _layer(rng, rows=4, k=8)
    X[:, 5] = 0.0
    H = 2 * X.T @ X
    blocks = np.abs(W).reshape(4, 2, 4).max(axis=2) / 7  # [rows, K/4]
    scale = np.repeat(blocks, 4, axis=1)
    Q = gptq(W, H, grid_quantizer(scale, np.zeros_like(scale), -7, 7), act_order=True)
    assert np.all(Q[:, 5] == 0)
    assert np.allclose(Q / scale, np.round(Q / scale))
