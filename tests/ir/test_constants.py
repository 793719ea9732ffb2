"""qcompiler/ir/constants.py: on import, Constant nodes become initializers and Identity over a constant goes,
in the graph and in subgraphs; graph outputs and string constants stay; the file is read as is on request."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from qcompiler.ir import import_model, save_model
from qcompiler.ir.constants import normalize_constants
from qcompiler.ir.io import load_model
from qcompiler.testing import assert_outputs_close
from qcompiler.zoo import exotic, forms

from ..builders import G


def test_constant_nodes_and_identity_chains_become_initializers():
    b = G()
    x = b.input("x", [2, 3])
    w = b.node("Identity", [b.node("Identity", [b.const_node(b.rand(3, 4))])])
    k = b.node("Constant", [], value_floats=[1.0, 2.0, 3.0, 4.0])
    b.output(b.node("Add", [b.node("MatMul", [x, w]), k]))
    raw = import_model(b.model(), normalize=False)
    assert [n.op for n in raw.nodes] == ["Constant", "Identity", "Identity", "Constant", "MatMul", "Add"]
    g = import_model(b.model())
    assert [n.op for n in g.nodes] == ["MatMul", "Add"]
    mm, add = g.nodes
    assert isinstance(mm.inputs[1], gs.Constant) and tuple(mm.inputs[1].shape) == (3, 4)
    assert isinstance(add.inputs[1], gs.Constant) and add.inputs[1].values.dtype == np.float32
    assert_outputs_close(raw, g, rtol=0, atol=0)


def test_graph_outputs_and_string_constants_stay():
    b = G()
    b.input("x", [2])
    c = b.const_node(np.arange(2, dtype=np.float32))
    b.output(c)
    b.output(b.node("Identity", [b.init(np.ones(2, np.float32))]))
    b.output(b.node("Constant", [], value_strings=["a"]), dtype=TensorProto.STRING)
    g = import_model(b.model(infer_outputs=False))
    assert [n.op for n in g.nodes] == ["Constant", "Identity", "Constant"]
    assert normalize_constants(g) == {"constant_nodes": 0, "identities": 0, "loop_invariants": 0}


def test_subgraphs_are_normalized_and_still_valid(tmp_path):
    m = forms.rewrite(exotic.build("if-subgraph"), "constant-nodes")
    g = import_model(m)
    branch = next(n for n in g.nodes if n.op == "If")
    for sub in (branch.attrs["then_branch"], branch.attrs["else_branch"]):
        assert [n.op for n in sub.nodes] == ["Conv"] and isinstance(sub.nodes[0].inputs[1], gs.Constant)
    save_model(g, tmp_path / "m.onnx")
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    assert_outputs_close(import_model(m, normalize=False), load_model(tmp_path / "m.onnx"), x, rtol=1e-6,
                         atol=1e-6)


def test_inspect_reports_the_file_as_it_is(tmp_path):
    from qcompiler.inspection import inspect_model

    b = G()
    x = b.input("x", [2, 3])
    b.output(b.node("MatMul", [x, b.const_node(b.rand(3, 4))]))
    onnx.save(b.model(), tmp_path / "m.onnx")
    assert inspect_model(tmp_path / "m.onnx").ops == {"Constant": 1, "MatMul": 1}
