"""A compact, deterministic text form of a graph (IR dumps, golden tests, ``qcompiler inspect --text``).

    graph main (opset 17)
      in  %input: float32[N,3,32,32]
      %conv0_out = Conv(%input, @w0: float32[16,3,3,3], @b0: float32[16]) {group=1, pads=[1,1,1,1]}  # conv0
      out %logits: float32[N,10]

Weights are shown by name, dtype and shape (``@name``); ``with_values`` adds a short checksum so
that two dumps differ when a weight changes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _dtype(dtype) -> str:
    if dtype is None:
        return "?"
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _attr(value) -> str:
    if isinstance(value, gs.Constant):
        return f"<tensor {_dtype(value.dtype)}{_shape(value.shape)}>"
    if isinstance(value, gs.Graph):
        return f"<graph {value.name}>"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return repr(value.decode(errors="replace"))
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _operand(t: gs.Tensor, with_values: bool) -> str:
    if not t.name:
        return "_"
    if isinstance(t, gs.Constant):
        s = f"@{t.name}: {_dtype(t.dtype)}{_shape(t.shape)}"
        if with_values:
            v = np.ascontiguousarray(t.values)
            s += "#" + hashlib.sha1(v.tobytes()).hexdigest()[:8]
        return s
    return f"%{t.name}"


def graph_to_text(graph: gs.Graph, *, with_values: bool = False, indent: str = "") -> str:
    lines = [f"{indent}graph {graph.name or 'main'} (opset {graph.opset})"]
    for t in graph.inputs:
        lines.append(f"{indent}  in  %{t.name}: {_dtype(t.dtype)}{_shape(t.shape)}")
    for n in graph.nodes:
        outs = ", ".join(f"%{o.name}" for o in n.outputs)
        args = ", ".join(_operand(i, with_values) for i in n.inputs)
        op = n.op if not n.domain or n.domain == "ai.onnx" else f"{n.domain}::{n.op}"
        attrs = ""
        if n.attrs:
            attrs = " {" + ", ".join(f"{k}={_attr(v)}" for k, v in sorted(n.attrs.items())) + "}"
        lines.append(f"{indent}  {outs} = {op}({args}){attrs}  # {n.name}")
        for k, v in sorted(n.attrs.items()):
            subs = [v] if isinstance(v, gs.Graph) else [s for s in v if isinstance(s, gs.Graph)] \
                if isinstance(v, (list, tuple)) else []
            for sg in subs:
                lines.append(graph_to_text(sg, with_values=with_values, indent=indent + "    "))
    for t in graph.outputs:
        lines.append(f"{indent}  out %{t.name}: {_dtype(t.dtype)}{_shape(t.shape)}")
    return "\n".join(lines)
