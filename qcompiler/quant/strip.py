"""Q/DQ back to float, defined once: the whole model (``strip-qdq``, ``insert-qdq{requantize=true}``:
activation Q->DQ pairs are bypassed, pre-quantized weights become float constants again), or chosen tensors and
layers (the guard's float remedy, the report's and mixed precision's what-ifs: :func:`unquantize`,
:func:`float_inputs`)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..ir.edit import Namer, replace_all_uses
from ..ir.graph import iter_graphs
from ..ir.query import const_value, producer, require_const
from .qspec import dequantize_linear


def dequantized_constant(dq: gs.Node) -> np.ndarray | None:
    """The float value of ``DequantizeLinear(constant)`` (per-tensor, per-axis or blocked), or None when
    its input is not a constant."""
    q = const_value(dq.inputs[0])
    if q is None:
        return None
    zp = const_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
    return dequantize_linear(q, require_const(dq.inputs[1], "scale"), zp, int(dq.attrs.get("axis", 1)),
                             dq.attrs.get("block_size"))


def strip_qdq(graph: gs.Graph) -> dict[str, int]:
    names = Namer(graph)
    counts = {"pairs": 0, "weights": 0}
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        if not dq.outputs:
            continue
        src = dq.inputs[0]
        prod = producer(src)
        if prod is not None and prod.op == "QuantizeLinear":
            replace_all_uses(graph, dq.outputs[0], prod.inputs[0])
            dq.inputs.clear()
            dq.outputs.clear()
            counts["pairs"] += 1
            continue
        w = dequantized_constant(dq)
        if w is None:
            continue
        c = gs.Constant(names(src.name + "_float"), w)
        replace_all_uses(graph, dq.outputs[0], c)
        dq.inputs.clear()
        dq.outputs.clear()
        counts["weights"] += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    return counts


def float_inputs(node: gs.Node, ref_node: gs.Node | None, *, activations: bool = True) -> None:
    """``node`` reads float inputs again, in place: an input behind Q -> DQ reads the Q's input (with
    ``activations``), one behind DQ(constant) the reference node's constant at that input (its FP32 weight) or,
    without one, the dequantized value."""
    for k, t in enumerate(node.inputs):
        dq = producer(t)
        if dq is None or dq.op != "DequantizeLinear":
            continue
        q = producer(dq.inputs[0])
        if q is not None and q.op == "QuantizeLinear":
            if activations:
                node.inputs[k] = q.inputs[0]
            continue
        w = const_value(ref_node.inputs[k]) if ref_node is not None and k < len(ref_node.inputs) else None
        if w is None:
            w = dequantized_constant(dq)
        if w is not None:
            node.inputs[k] = gs.Constant(t.name + "__float", np.asarray(w))


def unquantize(graph: gs.Graph, reference: gs.Graph, tensors: set[str], layers: set[str]) -> None:
    """Return ``tensors`` to float in the quantized ``graph`` (every consumer reads the float tensor again) and
    give ``layers`` their FP32 weights (and biases) back, in every graph of the model.  In place."""
    ref_nodes = {n.name: n for g in iter_graphs(reference) for n in g.nodes}
    for g in iter_graphs(graph):
        for q in [n for n in g.nodes if n.op == "QuantizeLinear" and n.inputs[0].name in tensors]:
            x = q.inputs[0]
            for dq in [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
                replace_all_uses(g, dq.outputs[0], x)
        for n in g.nodes:
            if n.name in layers:
                float_inputs(n, ref_nodes.get(n.name), activations=False)
    graph.cleanup(remove_unused_graph_inputs=False)
