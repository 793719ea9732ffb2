"""A purpose-built interpreter: an onnx-graphsurgeon graph as a torch.nn.Module.

Why not onnx2torch / onnx2pytorch: they fail on Identity-routed or shared initializers and on opsets
>= 18, and neither can train Q/DQ parameters (onnx2pytorch models Q/DQ as non-differentiable integer
casts with weights as buffers).  Here:

* nodes run in graph order through an explicit op table (qcompiler/bridge/ops.py); an op outside it is
  an error naming the op and the node before anything runs;
* float initializers are parameters keyed by initializer name (frozen unless a method trains them);
* every activation Q->DQ pair becomes a :class:`FakeQuant` (learnable scale/offset), every weight
  DQ(int8 constant) a :class:`WeightFakeQuant` holding a float master weight (the FP32 model's weight
  when given, else the dequantized one) and its rounding rule;
* :meth:`GraphModule.write_back` puts learned scales, zero points and integer weights back into the
  same ONNX graph.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import BridgeError
from ..ir.graph import iter_graphs
from ..ir.query import const_value
from .ops import OPS

SUPPORTED = sorted(set(OPS) | {"QuantizeLinear", "DequantizeLinear"})


def _torch():
    try:
        import torch
    except ImportError:
        raise BridgeError("the torch bridge needs torch", code="QC601",
                          hint="pip install torch==2.13.0 && pip install 'qcompiler[torch]'") from None
    return torch


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"


def check_supported(graph: gs.Graph) -> None:
    if len(list(iter_graphs(graph))) > 1:
        n = next(n for n in graph.nodes if any(isinstance(v, gs.Graph) for v in n.attrs.values()) or
                 any(isinstance(v, (list, tuple)) and any(isinstance(x, gs.Graph) for x in v)
                     for v in n.attrs.values()))
        raise BridgeError(f"the torch bridge does not run subgraphs ({n.op})", node=n.name, code="QC602",
                          hint="fine-tuning needs a graph without If/Loop/Scan")
    for n in graph.nodes:
        if n.op not in OPS and n.op not in ("QuantizeLinear", "DequantizeLinear"):
            raise BridgeError(f"operator {n.op} is not supported by the torch bridge", node=n.name, code="QC602",
                              hint="supported: " + ", ".join(SUPPORTED))
        if n.domain not in ("", "ai.onnx", None):
            raise BridgeError(f"operator {n.domain}::{n.op} is not supported by the torch bridge", node=n.name,
                              code="QC602")


def _zp_value(node: gs.Node) -> tuple[np.ndarray, np.dtype]:
    if len(node.inputs) > 2 and node.inputs[2].name:
        zp = const_value(node.inputs[2])
        return np.asarray(zp), np.asarray(zp).dtype
    return np.zeros((), np.uint8), np.dtype(np.uint8)


def GraphModule(graph: gs.Graph, *, reference: gs.Graph | None = None) -> Any:
    """The graph as a torch.nn.Module (qcompiler/bridge/graph_module.py; torch is imported here, on first use:
    it is optional)."""
    _torch()  # a clear error when torch is missing
    from .graph_module import TorchGraphModule

    return TorchGraphModule(graph, reference=reference)


def _consistent(w: np.ndarray, deq: np.ndarray, scale, axis: int | None, block) -> bool:
    """``w`` is the float weight ``deq`` was quantized from: they differ by at most half a step."""
    s = np.asarray(scale, np.float64)
    if block:
        step = np.repeat(s, block, axis=0)[: w.shape[0]]
    elif axis is not None and s.size > 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        step = s.reshape(shape)
    else:
        step = s.reshape(())
    return bool(np.all(np.abs(w.astype(np.float64) - deq.astype(np.float64)) <= 0.5 * step * (1 + 1e-3) + 1e-12))


def _cast_zp(zp: np.ndarray, dtype: np.dtype, qmin: int, qmax: int) -> np.ndarray:
    if "float8" in np.dtype(dtype).name:
        import ml_dtypes

        return np.zeros(np.shape(zp), ml_dtypes.float8_e4m3fn)
    return np.clip(np.rint(zp), qmin, qmax).astype(dtype)
