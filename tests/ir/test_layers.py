"""qcompiler/ir/layers.py: the typed description of weighted layers (kind, axes, channel counts)."""

from __future__ import annotations

import pytest

from qcompiler.ir.layers import LayerGeometry, LayerKind

from ..builders import G


@pytest.mark.parametrize("kind, shape, group, trans_b, out_axis, in_axis, cout, cin, kernel", [
    (LayerKind.CONV, (8, 2, 3, 3), 2, False, 0, 1, 8, 4, (3, 3)),
    (LayerKind.CONV_TRANSPOSE, (6, 4, 2, 2), 2, False, 1, 0, 8, 6, (2, 2)),
    (LayerKind.GEMM, (5, 7), 1, True, 0, 1, 5, 7, ()),
    (LayerKind.GEMM, (7, 5), 1, False, 1, 0, 5, 7, ()),
    (LayerKind.MATMUL, (7, 5), 1, False, 1, 0, 5, 7, ()),
    (LayerKind.MATMUL, (4, 7, 5), 1, False, 2, 1, 5, 7, ()),
])
def test_axes_and_channels(kind, shape, group, trans_b, out_axis, in_axis, cout, cin, kernel):
    geo = LayerGeometry(kind, shape, group, trans_b)
    assert (geo.out_axis, geo.in_axis, geo.out_channels, geo.in_channels, geo.kernel) == \
        (out_axis, in_axis, cout, cin, kernel)
    assert geo.kind.is_conv == (kind in (LayerKind.CONV, LayerKind.CONV_TRANSPOSE))
    assert geo.kind.activation_channel_axis == (1 if geo.kind.is_conv else -1)
    assert geo.per_channel_writable == (not (kind is LayerKind.CONV_TRANSPOSE and group > 1))


def test_of_reads_attributes_and_the_weight_shape_without_loading_values():
    b = G()
    x = b.input("x", [2, 7])
    y = b.gemm(x, 7, 5, trans_b=True)
    b.output(b.node("Relu", [y]))
    g = b.graph()
    geo = LayerGeometry.of(g.nodes[0])
    assert geo == LayerGeometry(LayerKind.GEMM, (5, 7), 1, True)
    assert LayerGeometry.of(g.nodes[1]) is None  # Relu
    assert LayerKind.of("Relu") is None and LayerKind.of("ConvTranspose") is LayerKind.CONV_TRANSPOSE
