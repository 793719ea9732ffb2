"""fold-constants: constant subgraphs become initializers (through onnxruntime), Q/DQ never folds."""

from __future__ import annotations

import numpy as np

from qcompiler.ir import copy_graph
from qcompiler.ir.query import const_value
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close

from ..builders import G


def test_constant_chain_folds_into_an_initializer():
    b = G()
    x = b.input("x", [2, 4])
    w = b.node("Transpose", [b.node("Mul", [b.init(b.rand(4, 3)), b.init(np.float32(2.0))])], perm=[1, 0])
    y = b.node("MatMul", [x, b.node("Transpose", [w], perm=[1, 0])])
    b.output(y)
    g = b.graph()
    ref = copy_graph(g)
    res = run_pipeline(g, "fold-constants", PassContext(), verify_each=True)
    assert res.records[0].modified and res.records[0].stats["nodes_folded"] == 3
    assert [n.op for n in g.nodes] == ["MatMul"]
    assert const_value(g.nodes[0].inputs[1]).shape == (4, 3)
    assert_outputs_close(ref, g, rtol=1e-6, atol=1e-7)
    assert not run_pipeline(g, "fold-constants", PassContext()).records[0].modified


def test_static_shape_ops_fold_unless_disabled():
    def build():
        b = G()
        x = b.input("x", [2, 3, 4])
        shape = b.node("Shape", [x])
        b.output(b.node("Reshape", [x, b.node("Concat", [b.node("Slice", [shape, b.init(np.array([0]), name="st"),
                                                                          b.init(np.array([1]), name="en")]),
                                                         b.init(np.array([-1]), name="m1")], axis=0)]))
        return b.graph()

    g = build()
    run_pipeline(g, "fold-constants", PassContext())
    assert [n.op for n in g.nodes] == ["Reshape"]
    np.testing.assert_array_equal(const_value(g.nodes[0].inputs[1]), [2, -1])
    g = build()
    run_pipeline(g, "fold-constants{fold-shapes=false}", PassContext())
    assert "Shape" in [n.op for n in g.nodes]


def test_quantize_dequantize_are_never_folded():
    b = G(13)
    x = b.input("x", [1, 2, 4, 4])
    w = b.qdq(b.init(b.rand(3, 2, 1, 1)), np.float32(0.01), np.int8(0))
    b.output(b.node("Conv", [x, w]))
    g = b.graph()
    run_pipeline(g, "fold-constants", PassContext())
    assert [n.op for n in g.nodes] == ["QuantizeLinear", "DequantizeLinear", "Conv"]


def test_size_limit_keeps_big_results_computed():
    b = G()
    x = b.input("x", [1, 64])
    big = b.node("Tile", [b.init(b.rand(1, 64)), b.init(np.array([64, 1]), name="reps")])
    b.output(b.node("MatMul", [x, big]))
    g = b.graph()
    run_pipeline(g, "fold-constants{size-limit=1024}", PassContext())
    assert "Tile" in [n.op for n in g.nodes]  # 16 KiB result > 1 KiB limit
    run_pipeline(g, "fold-constants", PassContext())
    assert "Tile" not in [n.op for n in g.nodes]


def test_folds_external_weights_and_leaves_layer_weights_on_disk(tmp_path, monkeypatch):
    """A Transpose of a weight kept in an external data file folds like an in-memory one (graphsurgeon's folding
    cannot open the data file itself); a weight that only feeds a layer is not read."""
    from qcompiler.ir import load_model, save_model
    from qcompiler.ir.tensordata import external_ref

    b = G()
    x = b.input("x", [2, 64])
    wt = b.node("Transpose", [b.init(b.rand(32, 64), name="wt")], perm=[1, 0])
    h = b.node("MatMul", [x, wt])
    y = b.node("Gemm", [h, b.init(b.rand(16, 32), name="w2")], transB=1)
    b.output(y)
    src = tmp_path / "m.onnx"
    save_model(b.graph(), src, external_data="always", size_threshold=0, location="weights.bin")
    monkeypatch.chdir(tmp_path.parent)  # the data file is not in the working directory
    g = load_model(src)
    ref = copy_graph(g)
    res = run_pipeline(g, "fold-constants", PassContext(), verify_each=True)
    assert res.records[0].stats == {"nodes_folded": 1}
    assert [n.op for n in g.nodes] == ["MatMul", "Gemm"]
    assert const_value(g.nodes[0].inputs[1]).shape == (64, 32)
    assert external_ref(g.nodes[1].inputs[1]) is not None  # w2 still unread
    assert_outputs_close(ref, g, rtol=1e-6, atol=1e-7)
