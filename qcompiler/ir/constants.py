"""One representation of constants: whatever form an exporter chose, a constant is an initializer.

Exporters write constants as initializers, as ``Constant`` nodes (tf2onnx, Paddle, torch for small values),
behind ``Identity`` nodes (torch de-duplicating identical initializers), or as initializers that are also
listed as graph inputs (old exporters; onnx-graphsurgeon already reads those as initializers).  On import,
:func:`normalize_constants` rewrites the graph and every subgraph so that

* a ``Constant`` node (``value``, ``value_float(s)``, ``value_int(s)``) becomes an initializer named as its
  output, and
* an ``Identity`` whose input is a constant is bypassed: its consumers read the constant,

* a ``Loop``-carried value that the body passes through unchanged and that starts as a constant is that
  constant: the body reads it as its own initializer and the loop no longer carries it (Paddle exports a
  decoder's weights into a ``Loop`` this way, so its MatMuls would otherwise see no constant weight),

except where the tensor is a graph output (the model's interface never changes).  Every pass then sees the
same graph whatever the form: a Conv weight in a Constant node folds, equalizes and quantizes like an
initializer (tests/ir/test_constants.py runs every pass on each form).  String and sparse constants stay nodes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

_VALUE_ATTRS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                "value_ints": np.int64}


def _constant_value(node: gs.Node) -> object | None:
    """What a Constant node holds, as gs.Constant values (a LazyValues or an array), or None (strings, sparse)."""
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        return attrs["value"]._values
    for key, dtype in _VALUE_ATTRS.items():
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    return None


def _is_output(graph: gs.Graph, t: gs.Tensor) -> bool:
    return any(o is t for o in graph.outputs)


def _redirect(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every consumer of ``old`` reads ``new`` (graphsurgeon's lists take item assignment only)."""
    for user in list(old.outputs):
        for k, i in enumerate(user.inputs):
            if i is old:
                user.inputs[k] = new


def _normalize(graph: gs.Graph, counts: dict[str, int]) -> None:
    for node in list(graph.nodes):
        for value in node.attrs.values():
            subs = [value] if isinstance(value, gs.Graph) else \
                [v for v in value if isinstance(v, gs.Graph)] if isinstance(value, (list, tuple)) else []
            for sg in subs:
                _normalize(sg, counts)
        if node.op == "Constant" and len(node.outputs) == 1 and not node.inputs:
            out = node.outputs[0]
            values = _constant_value(node)
            if values is None or _is_output(graph, out):
                continue
            _redirect(out, gs.Constant(out.name, values))
            node.outputs.clear()
            counts["constant_nodes"] += 1
        elif node.op == "Identity" and len(node.inputs) == 1 and len(node.outputs) == 1 \
                and isinstance(node.inputs[0], gs.Constant) and not _is_output(graph, node.outputs[0]):
            _redirect(node.outputs[0], node.inputs[0])
            node.inputs.clear()
            node.outputs.clear()
            counts["identities"] += 1
    if counts["constant_nodes"] or counts["identities"]:
        graph.nodes = [n for n in graph.nodes if n.outputs]
    for node in graph.nodes:
        if node.op == "Loop":
            counts["loop_invariants"] += _loop_invariants(graph, node)


def _loop_invariants(graph: gs.Graph, loop: gs.Node) -> int:
    """Loop-carried constants (module docstring) become initializers of the body; returns how many.  Carried
    value ``k`` is Loop input ``2 + k``, body input ``2 + k``, body output ``1 + k`` and Loop output ``k``."""
    body = loop.attrs.get("body")
    if not isinstance(body, gs.Graph):
        return 0
    carried = min(len(loop.inputs) - 2, len(body.inputs) - 2, len(body.outputs) - 1)
    done = 0
    for k in reversed(range(carried)):
        init, b_in, b_out = loop.inputs[2 + k], body.inputs[2 + k], body.outputs[1 + k]
        final = loop.outputs[k] if k < len(loop.outputs) else None
        if not isinstance(init, gs.Constant) or b_out is not b_in or isinstance(b_in, gs.Constant) or \
                (final is not None and _is_output(graph, final)):
            continue
        _redirect(b_in, gs.Constant(b_in.name, init._values))
        if final is not None:
            _redirect(final, init)
            del loop.outputs[k]
        del body.outputs[1 + k]
        del body.inputs[2 + k]
        del loop.inputs[2 + k]
        done += 1
    return done


def normalize_constants(graph: gs.Graph) -> dict[str, int]:
    """Constant nodes become initializers, Identity over constants is bypassed and loop-carried constants become
    body initializers, in the graph and every subgraph.  Returns how many of each were rewritten."""
    counts = {"constant_nodes": 0, "identities": 0, "loop_invariants": 0}
    _normalize(graph, counts)
    return counts
