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


def _carried_weight_loop(final_is_output: bool) -> onnx.ModelProto:
    """h <- tanh(h @ W) for 3 steps, W carried through the loop unchanged (Paddle's form of a decoder's weights)
    and a counter carried that does change."""
    from onnx import helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(np.float32) * 0.5
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w_in"], ["hw"]), helper.make_node("Tanh", ["hw"], ["h_out"]),
         helper.make_node("Add", ["c_in", "one"], ["c_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("c_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    nodes = [helper.make_node("Constant", [], ["w0"], value=helper.make_tensor("wv", TensorProto.FLOAT, [4, 4],
                                                                               w.ravel().tolist())),
             helper.make_node("Loop", ["n", "t", "x", "w0", "c0"], ["h", "w_final", "c"], body=body)]
    outs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])]
    if final_is_output:
        outs.append(helper.make_tensor_value_info("w_final", TensorProto.FLOAT, [4, 4]))
    g = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outs,
                          [helper.make_tensor("n", TensorProto.INT64, [], [3]),
                           helper.make_tensor("t", TensorProto.BOOL, [], [True]),
                           helper.make_tensor("c0", TensorProto.FLOAT, [1], [0.0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_loop_carried_constants_become_body_initializers(tmp_path):
    """The weight the body passes through unchanged becomes the body's own constant (its MatMul sees a constant
    weight, which quantization needs); the counter, which changes, stays carried; outputs are identical."""
    m = _carried_weight_loop(final_is_output=False)
    g = import_model(m)
    loop = next(n for n in g.nodes if n.op == "Loop")
    body = loop.attrs["body"]
    assert [i.name for i in loop.inputs] == ["n", "t", "x", "c0"] and len(body.inputs) == 4
    mm = next(n for n in body.nodes if n.op == "MatMul")
    assert isinstance(mm.inputs[1], gs.Constant) and tuple(mm.inputs[1].shape) == (4, 4)
    save_model(g, tmp_path / "m.onnx")
    x = {"x": np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)}
    assert_outputs_close(import_model(m, normalize=False), load_model(tmp_path / "m.onnx"), x, rtol=0, atol=0)


def test_a_loop_carried_constant_read_as_a_graph_output_stays_carried():
    g = import_model(_carried_weight_loop(final_is_output=True))
    loop = next(n for n in g.nodes if n.op == "Loop")
    assert len(loop.inputs) == 5 and not isinstance(loop.attrs["body"].nodes[0].inputs[1], gs.Constant)
