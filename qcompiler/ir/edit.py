"""Small, safe graph edits shared by passes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph import iter_graphs


class Namer:
    """Deterministic unique names for new tensors and nodes (``base``, ``base_1``, ``base_2``...)."""

    def __init__(self, graph: gs.Graph):
        self.used: set[str] = set()
        for g in iter_graphs(graph):
            self.used.update(g.tensors().keys())
            self.used.update(n.name for n in g.nodes if n.name)
            self.used.update(t.name for t in g.inputs)

    def __call__(self, base: str) -> str:
        base = base or "t"
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def namer(graph: gs.Graph) -> Namer:
    return Namer(graph)


def make_constant(names: Namer, base: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(names(base), np.ascontiguousarray(values))


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> int:
    """Point every consumer of ``old`` (and graph outputs) at ``new``.  Returns the number of uses changed.

    When ``old`` is a graph output, the output keeps its name: ``new`` takes it over (and ``old`` is
    renamed) so the model's interface does not change.
    """
    count = 0
    for node in list(old.outputs):
        for i, inp in enumerate(node.inputs):
            if inp is old:
                node.inputs[i] = new
                count += 1
    for i, out in enumerate(graph.outputs):
        if out is old:
            name = old.name
            old.name = name + "__replaced"
            new.name = name
            if isinstance(new, gs.Variable):
                new.dtype = new.dtype or old.dtype
                new.shape = new.shape if new.shape is not None else old.shape
            graph.outputs[i] = new
            count += 1
    return count


def bypass_node(graph: gs.Graph, node: gs.Node, input_index: int = 0) -> None:
    """Remove a single-output node by wiring its consumers to its ``input_index``-th input."""
    src = node.inputs[input_index]
    out = node.outputs[0]
    if any(o is out for o in graph.outputs) and any(i is src for i in graph.inputs):
        # an output that is a direct copy of an input must keep its own tensor: leave it
        return
    replace_all_uses(graph, out, src)
    node.inputs.clear()
    node.outputs.clear()


def detach_node(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def set_input_constant(node: gs.Node, index: int, names: Namer, base: str, values: np.ndarray) -> gs.Constant:
    c = make_constant(names, base, values)
    if index < len(node.inputs):
        node.inputs[index] = c
    else:
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(c)
    return c


def is_sorted(graph: gs.Graph) -> bool:
    """True if every node's inputs are produced by earlier nodes (or are inputs/constants/outer)."""
    produced_by_node = {id(o) for n in graph.nodes for o in n.outputs}
    seen: set[int] = set()
    for n in graph.nodes:
        for i in n.inputs:
            if id(i) in produced_by_node and id(i) not in seen:
                return False
        for o in n.outputs:
            seen.add(id(o))
    return True


def ensure_sorted(graph: gs.Graph) -> bool:
    """Toposort only when needed (onnx-graphsurgeon's sort reorders even sorted graphs).
    Returns True if the order changed."""
    if is_sorted(graph):
        return False
    graph.toposort()
    return True


def constant(name: str, values: np.ndarray) -> gs.Constant:
    """A gs.Constant; fp8/int4 arrays (ml_dtypes) are wrapped as ONNX protos so every exporter version
    writes them with their true element type."""
    arr = np.asarray(values)
    if not arr.flags["C_CONTIGUOUS"]:  # (np.ascontiguousarray would also turn a scalar into shape [1])
        arr = np.ascontiguousarray(arr)
    if arr.dtype.kind == "V" or arr.dtype.name.startswith(("float8", "int4", "uint4", "float4")):
        import onnx
        from onnx_graphsurgeon.ir.tensor import LazyValues

        return gs.Constant(name, LazyValues(onnx.numpy_helper.from_array(arr, name)))
    return gs.Constant(name, arr)
