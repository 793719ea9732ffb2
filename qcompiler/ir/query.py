"""Read-only questions about a graph: constants, producers, consumers, attributes, shapes."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from .graph import constant_type_name, onnx_type_name


def producer(t: gs.Tensor) -> gs.Node | None:
    """The node that produces ``t`` (None for graph inputs and initializers)."""
    return t.inputs[0] if t.inputs else None


def produced_by(t: gs.Tensor | None, *ops: str) -> gs.Node | None:
    """The producer of ``t`` when it is one of ``ops`` (any op when none are given), else None."""
    node = producer(t) if t is not None else None
    return node if node is not None and (not ops or node.op in ops) else None


def dtype_name(t: gs.Tensor) -> str | None:
    """numpy-style name of a tensor's element type (None when unknown); constants are not loaded."""
    if isinstance(t, gs.Constant):
        return constant_type_name(t)
    if t.dtype is None:
        return None
    try:
        return np.dtype(t.dtype).name
    except TypeError:
        try:
            return onnx_type_name(int(t.dtype)) or str(t.dtype)
        except (TypeError, ValueError):
            return str(t.dtype)


def consumers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)


def attr(node: gs.Node, name: str, default: Any = None) -> Any:
    return node.attrs.get(name, default)


def is_graph_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(o is t for o in graph.outputs)


def is_graph_input(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(i is t for i in graph.inputs)


def const_value(t: gs.Tensor | None, *, through_identity: bool = True) -> np.ndarray | None:
    """The value of ``t`` if it is constant: an initializer, a Constant node's output, or either routed
    through Identity nodes.  Returns None for anything computed at run time."""
    seen = 0
    while t is not None and seen < 64:
        if isinstance(t, gs.Constant):
            return t.values
        node = producer(t)
        if node is None:
            return None
        if node.op == "Constant":
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in node.attrs:
                    v = node.attrs[key]
                    if isinstance(v, gs.Constant):
                        return v.values
                    if key == "value_float":
                        return np.array(v, dtype=np.float32)
                    if key == "value_floats":
                        return np.array(v, dtype=np.float32)
                    if key == "value_int":
                        return np.array(v, dtype=np.int64)
                    if key == "value_ints":
                        return np.array(v, dtype=np.int64)
            return None
        if through_identity and node.op == "Identity":
            t = node.inputs[0]
            seen += 1
            continue
        return None
    return None


def require_const(t: gs.Tensor, what: str = "tensor") -> np.ndarray:
    """The value of a tensor that must be constant here; a QCompilerError naming it when it is not."""
    v = const_value(t)
    if v is None:
        from ..diagnostics import QCompilerError

        raise QCompilerError(f"{what} '{t.name}' is not a constant", code="QC304", node=t.name,
                             hint="run fold-constants first, or report the model if it is a constant")
    return v


def const_source(t: gs.Tensor | None) -> gs.Constant | None:
    """The gs.Constant initializer behind ``t`` (through Identity), or None."""
    seen = 0
    while t is not None and seen < 64:
        if isinstance(t, gs.Constant):
            return t
        node = producer(t)
        if node is None or node.op != "Identity":
            return None
        t = node.inputs[0]
        seen += 1
    return None


def is_const(t: gs.Tensor | None) -> bool:
    return const_value(t) is not None


def is_initializer_exclusive(graph: gs.Graph, t: gs.Tensor, node: gs.Node) -> bool:
    """True when ``t`` is an initializer read only by ``node`` (once), not a graph output, and not
    referenced from a subgraph.  A rewrite may then replace its value in place."""
    if not isinstance(t, gs.Constant):
        return False
    uses = [c for c in t.outputs]
    if len(uses) != 1 or uses[0] is not node:
        return False
    if sum(1 for i in node.inputs if i is t) != 1:
        return False
    if is_graph_output(graph, t):
        return False
    return t.name not in subgraph_referenced_names(graph)


def subgraph_referenced_names(graph: gs.Graph) -> set[str]:
    """Names of outer tensors used inside If/Loop/Scan bodies (cached per call, cheap if none)."""
    names: set[str] = set()
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = [value] if isinstance(value, gs.Graph) else [v for v in value if isinstance(v, gs.Graph)] \
                if isinstance(value, (list, tuple)) else []
            for sg in subs:
                local = {t.name for n in sg.nodes for t in n.outputs} | {t.name for t in sg.inputs}
                for n in sg.nodes:
                    for i in n.inputs:
                        if i.name and i.name not in local:
                            names.add(i.name)
                names |= subgraph_referenced_names(sg)
    return names


def has_subgraphs(graph: gs.Graph) -> bool:
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                return True
            if isinstance(value, (list, tuple)) and any(isinstance(v, gs.Graph) for v in value):
                return True
    return False


def single_consumer(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
    """The only consumer of ``t``, if ``t`` has exactly one use and is not a graph output."""
    if len(t.outputs) != 1 or is_graph_output(graph, t):
        return None
    node = t.outputs[0]
    if sum(1 for i in node.inputs if i is t) != 1:
        return None
    return node


def static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of ``t`` if fully known (all dims ints), else None."""
    if isinstance(t, gs.Constant):
        return tuple(int(d) for d in t.shape)
    shape = t.shape
    if shape is None:
        return None
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def rank(t: gs.Tensor) -> int | None:
    if isinstance(t, gs.Constant):
        return len(t.shape)
    return None if t.shape is None else len(t.shape)


def op_histogram(graph: gs.Graph) -> dict[str, int]:
    hist: dict[str, int] = {}
    for n in graph.nodes:
        key = n.op if not n.domain or n.domain == "ai.onnx" else f"{n.domain}::{n.op}"
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items()))


def nodes_by_op(graph: gs.Graph, ops: Iterable[str]) -> list[gs.Node]:
    wanted = set(ops)
    return [n for n in graph.nodes if n.op in wanted]


def default_opset(graph: gs.Graph) -> int:
    return int(graph.opset) if graph.opset is not None else 13


def tensor_map(graph: gs.Graph) -> dict[str, gs.Tensor]:
    return graph.tensors()


_NONNEG_OPS = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Sqrt", "Softplus", "HardSigmoid", "ReduceL1",
               "ReduceL2", "ReduceSumSquare"}
_NONNEG_PASSTHROUGH = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Reshape",
                       "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Upsample", "DepthToSpace",
                       "SpaceToDepth", "ReduceMax", "ReduceMean", "Slice", "Split", "Gather", "Tile", "Expand"}


def known_nonnegative(t: gs.Tensor, depth: int = 0) -> bool:
    """True when every value of ``t`` is >= 0 by construction (Relu, Sigmoid, Clip(min>=0), ... and ops
    that only move or pool such values)."""
    if depth > 32:
        return False
    v = const_value(t)
    if v is not None:
        return bool(np.all(np.asarray(v) >= 0))
    node = producer(t)
    if node is None:
        return False
    if node.op in _NONNEG_OPS:
        return True
    if node.op == "Clip":
        lo = node.attrs.get("min")
        if lo is None and len(node.inputs) > 1 and node.inputs[1].name:
            c = const_value(node.inputs[1])
            lo = None if c is None else float(np.asarray(c).reshape(-1)[0])
        return lo is not None and lo >= 0 or known_nonnegative(node.inputs[0], depth + 1)
    if node.op in _NONNEG_PASSTHROUGH:
        return known_nonnegative(node.inputs[0], depth + 1)
    if node.op in ("Concat", "Max", "Add", "Mul", "Min"):
        ins = [i for i in node.inputs if i.name]
        if node.op == "Max":
            return any(known_nonnegative(i, depth + 1) for i in ins)
        return all(known_nonnegative(i, depth + 1) for i in ins)
    return False


#: ops whose first k inputs carry data and the rest parameters (Resize's roi/scales/sizes, Pad's pads, ...)
_DATA_INPUTS = {"Resize": 1, "Upsample": 1, "Pad": 1, "Slice": 1, "Reshape": 1, "Expand": 1, "Tile": 1,
                "Gather": 1, "GatherElements": 1, "Squeeze": 1, "Unsqueeze": 1, "ReduceMean": 1, "ReduceMax": 1,
                "ReduceMin": 1, "ReduceSum": 1, "TopK": 1, "Clip": 1}


def data_inputs(node: gs.Node) -> list[gs.Tensor]:
    """The inputs of ``node`` that carry data (activations), not parameters such as Resize's scales."""
    k = _DATA_INPUTS.get(node.op)
    return list(node.inputs[:k] if k is not None else node.inputs)
