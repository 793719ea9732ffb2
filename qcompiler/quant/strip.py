"""Remove existing Q/DQ from a model (``insert-qdq{requantize=true}``): activations Q->DQ pairs are
bypassed, pre-quantized weights (DQ of a constant) become float constants again."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..ir.edit import Namer, replace_all_uses
from ..ir.query import const_value


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, block: int | None) -> np.ndarray:
    qf = q.astype(np.float64)
    s = np.asarray(scale, np.float64)
    z = np.zeros_like(s) if zp is None else np.asarray(zp).astype(np.float64)
    if block:
        s = np.repeat(s, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        z = np.repeat(z, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    elif s.ndim == 1 and s.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((qf - z) * s).astype(np.float32)


def strip_qdq(graph: gs.Graph) -> dict[str, int]:
    names = Namer(graph)
    counts = {"pairs": 0, "weights": 0}
    for dq in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        if not dq.outputs:
            continue
        src = dq.inputs[0]
        prod = src.inputs[0] if src.inputs else None
        if prod is not None and prod.op == "QuantizeLinear":
            replace_all_uses(graph, dq.outputs[0], prod.inputs[0])
            dq.inputs.clear()
            dq.outputs.clear()
            counts["pairs"] += 1
            continue
        q = const_value(src)
        if q is None:
            continue
        scale = const_value(dq.inputs[1])
        zp = const_value(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2].name else None
        axis = int(dq.attrs.get("axis", 1))
        if axis < 0:
            axis += q.ndim
        w = _dequantize(q, scale, zp, axis, dq.attrs.get("block_size"))
        c = gs.Constant(names(src.name + "_float"), w)
        replace_all_uses(graph, dq.outputs[0], c)
        dq.inputs.clear()
        dq.outputs.clear()
        counts["weights"] += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    return counts
