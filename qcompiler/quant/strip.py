"""Remove existing Q/DQ from a model (``insert-qdq{requantize=true}``): activations Q->DQ pairs are
bypassed, pre-quantized weights (DQ of a constant) become float constants again."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..ir.edit import Namer, replace_all_uses
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
