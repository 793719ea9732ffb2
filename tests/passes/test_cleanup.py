"""cleanup: Identity/Dropout bypass, duplicate initializers merged, dead nodes removed, order and names."""

from __future__ import annotations

import numpy as np

from qcompiler.ir import copy_graph
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close

from ..builders import G

TOL = {"rtol": 1e-6, "atol": 1e-7}


def _run(g, pipeline="cleanup"):
    ref = copy_graph(g)
    res = run_pipeline(g, pipeline, PassContext(), verify_each=True)
    return ref, res.records[0]


def test_identity_nodes_are_bypassed():
    """(Identity over a constant is gone at import already: tests/ir/test_constants.py.)"""
    b = G()
    x = b.input("x", [1, 3, 6, 6])
    y = b.node("Conv", [b.node("Identity", [x]), b.init(b.rand(4, 3, 3, 3))], pads=[1, 1, 1, 1])
    b.output(b.node("Identity", [b.relu(b.node("Identity", [y]))]))
    g = b.graph()
    ref, rec = _run(g)
    assert rec.modified and rec.stats["identity_removed"] == 3
    assert [n.op for n in g.nodes] == ["Conv", "Relu"]
    assert g.nodes[0].inputs[0] is g.inputs[0]
    assert g.outputs[0].name == ref.outputs[0].name  # the interface keeps its names
    assert_outputs_close(ref, g, **TOL)


def test_identity_from_input_to_output_is_kept():
    b = G()
    x = b.input("x", [2, 3])
    b.output(b.node("Identity", [x]))
    g = b.graph()
    _, rec = _run(g)
    assert [n.op for n in g.nodes] == ["Identity"] and not rec.modified


def test_inference_dropout_removed_training_dropout_kept():
    b = G(13)
    x = b.input("x", [2, 8])
    y = b.node("Dropout", [x])
    z, mask = b.node("Dropout", [b.relu(y)], n_out=2)
    b.output(z)
    b.output(mask, dtype=9)  # the mask is used: that Dropout stays
    g = b.graph()
    _, rec = _run(g)
    assert rec.stats["dropout_removed"] == 1
    assert [n.op for n in g.nodes] == ["Relu", "Dropout"]


def test_duplicate_initializers_are_merged_small_ones_are_not():
    b = G()
    x = b.input("x", [1, 4, 5, 5])
    w = b.rand(4, 4, 1, 1)
    a = b.node("Conv", [x, b.init(w), b.init(np.zeros(4, np.float32))])
    c = b.node("Conv", [x, b.init(w.copy()), b.init(np.zeros(4, np.float32))])
    b.output(b.add(a, c))
    g = b.graph()
    ref, rec = _run(g)
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert rec.stats["initializers_merged"] == 1  # the 64-byte weight; the 16-byte biases stay apart
    assert convs[0].inputs[1] is convs[1].inputs[1]
    assert convs[0].inputs[2] is not convs[1].inputs[2]
    assert_outputs_close(ref, g, **TOL)
    g2 = b.graph()
    run_pipeline(g2, "cleanup{dedupe=false}", PassContext())
    assert len({id(n.inputs[1]) for n in g2.nodes if n.op == "Conv"}) == 2


def test_dead_nodes_removed_unsorted_graph_sorted_and_names_given():
    b = G()
    x = b.input("x", [2, 3])
    y = b.relu(x)
    b.node("Neg", [x])  # dead
    b.output(y)
    m = b.model()
    m.graph.node[0].name = ""  # unnamed
    m.graph.node.reverse()  # Neg, Relu is still sorted; make it unsorted with a chain
    from qcompiler.ir import import_model

    g = import_model(m)
    ref, rec = _run(g)
    assert [n.op for n in g.nodes] == ["Relu"] and rec.stats["nodes_removed"] == 1
    assert all(n.name for n in g.nodes)
    b = G()
    x = b.input("x", [2, 3])
    b.output(b.node("Neg", [b.relu(x)]))
    m = b.model()
    m.graph.node.reverse()  # Neg before the Relu it reads
    g = import_model(m)
    ref_order = [n.op for n in g.nodes]
    _run(g)
    assert ref_order == ["Neg", "Relu"] and [n.op for n in g.nodes] == ["Relu", "Neg"]


def test_second_run_changes_nothing():
    b = G()
    x = b.input("x", [1, 3, 6, 6])
    b.output(b.relu(b.node("Identity", [b.conv(x, 3, 4)])))
    g = b.graph()
    assert _run(g)[1].modified
    assert not _run(g)[1].modified
