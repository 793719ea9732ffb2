"""cleanup: dead nodes, Identity/Dropout removal, duplicate initializers, names, topological order.

* ``Identity`` nodes are bypassed (their consumers read the input directly), so weights routed
  through Identity by an exporter become plain initializers again.  An Identity whose output is a
  graph output fed straight from a graph input is kept (the model interface must not change).
* ``Dropout`` with an unused mask output is an identity at inference and is bypassed too.
* Initializers with identical dtype, shape and bytes are merged into one (``dedupe``); the merged
  tensor keeps the name that comes first in graph order.
* Nodes whose outputs reach no graph output are removed (onnx-graphsurgeon ``cleanup``), then the
  graph is sorted topologically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import bypass_node, ensure_sorted, replace_all_uses
from qcompiler.ir.graph import name_unnamed_nodes
from qcompiler.ir.tensordata import external_ref
from qcompiler.ir.query import is_graph_input, is_graph_output, subgraph_referenced_names
from qcompiler.pm import Pass, PassResult, option


class Cleanup(Pass["Cleanup.Options"]):
    """Remove dead nodes, Identity and inference Dropout, merge duplicate initializers, toposort."""

    name = "cleanup"
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        remove_identity: bool = option(True, "bypass Identity nodes (and Dropout without a used mask)")
        dedupe: bool = option(True, "merge initializers with identical dtype, shape and values")
        dedupe_min_bytes: int = option(64, "only merge initializers at least this large (small ones are "
                                           "often biases that later passes rewrite per layer)", min=0)

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        stats = {"identity_removed": 0, "dropout_removed": 0, "initializers_merged": 0, "nodes_removed": 0,
                 "nodes_named": 0}
        before_order = [id(n) for n in graph.nodes]
        before_nodes = len(graph.nodes)

        if self.options.remove_identity:
            for node in list(graph.nodes):
                if node.op == "Identity" and len(node.inputs) == 1 and len(node.outputs) == 1:
                    out = node.outputs[0]
                    src = node.inputs[0]
                    if is_graph_output(graph, out) and (is_graph_input(graph, src) or is_graph_output(graph, src)
                                                        or isinstance(src, gs.Constant)):
                        continue
                    bypass_node(graph, node)
                    stats["identity_removed"] += 1
                elif node.op == "Dropout" and node.inputs:
                    mask_used = len(node.outputs) > 1 and (node.outputs[1].outputs or
                                                           is_graph_output(graph, node.outputs[1]))
                    training = len(node.inputs) > 2 and node.inputs[2].name
                    if mask_used or training:
                        continue
                    out = node.outputs[0]
                    src = node.inputs[0]
                    if is_graph_output(graph, out) and is_graph_input(graph, src):
                        continue
                    bypass_node(graph, node)
                    stats["dropout_removed"] += 1

        if self.options.dedupe:
            stats["initializers_merged"] = self._dedupe(graph)

        graph.cleanup(remove_unused_graph_inputs=False)
        stats["nodes_removed"] = before_nodes - len(graph.nodes) - stats["identity_removed"] - stats["dropout_removed"]
        ensure_sorted(graph)
        stats["nodes_named"] = name_unnamed_nodes(graph)
        reordered = [id(n) for n in graph.nodes] != before_order
        modified = reordered or any(v for v in stats.values())
        return PassResult(modified, {k: v for k, v in stats.items() if v})

    def _dedupe(self, graph: gs.Graph) -> int:
        protected = subgraph_referenced_names(graph)
        seen: dict[tuple, gs.Constant] = {}
        merged = 0
        for g in [graph]:
            for t in list(g.tensors().values()):
                if not isinstance(t, gs.Constant) or t.name in protected or is_graph_output(g, t):
                    continue
                if not t.outputs:
                    continue
                if external_ref(t) is not None:  # unread external data: not worth reading just to compare
                    continue
                arr = np.ascontiguousarray(t.values)
                if arr.nbytes < self.options.dedupe_min_bytes:
                    continue
                key = (str(arr.dtype), arr.shape, hashlib.sha1(arr.tobytes()).hexdigest())
                first = seen.get(key)
                if first is None:
                    seen[key] = t
                    continue
                if not np.array_equal(np.ascontiguousarray(first.values), arr):
                    continue
                replace_all_uses(g, t, first)
                merged += 1
        return merged
