"""fold-constants: evaluate constant subgraphs once and store the results as initializers.

Uses onnx-graphsurgeon's ``fold_constants`` (which evaluates with onnxruntime), so every op
onnxruntime knows can be folded.  It never folds QuantizeLinear/DequantizeLinear: weight Q/DQ
chains must stay visible to TensorRT.  ``Shape`` of tensors with static shapes is folded too
(``fold-shapes``).  Folded results larger than ``size-limit`` bytes stay computed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.ir.edit import ensure_sorted
from qcompiler.ir.tensordata import read_external

from qcompiler.pm import Pass, PassResult, option


class FoldConstants(Pass["FoldConstants.Options"]):
    """Fold constant subgraphs (and static Shape ops) into initializers."""

    name = "fold-constants"
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        fold_shapes: bool = option(True, "fold Shape/Size of tensors whose shape is static")
        size_limit: int = option(64 * 2**20, "largest folded tensor in bytes (bigger results stay computed)", min=0)

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        before_nodes = len(graph.nodes)
        before_consts = sum(1 for t in graph.tensors().values() if isinstance(t, gs.Constant))
        ensure_sorted(graph)
        _read_folded_external(graph)
        graph.fold_constants(fold_shapes=self.options.fold_shapes, error_ok=True,
                             size_threshold=self.options.size_limit, flatten_subgraphs=False)
        graph.cleanup(remove_unused_graph_inputs=False)
        ensure_sorted(graph)
        after_consts = sum(1 for t in graph.tensors().values() if isinstance(t, gs.Constant))
        removed = before_nodes - len(graph.nodes)
        stats = {}
        if removed:
            stats["nodes_folded"] = removed
        return PassResult(removed != 0 or after_consts != before_consts, stats)


#: never folded (graphsurgeon leaves them too): weight Q/DQ must stay visible to TensorRT
_KEEP = {"QuantizeLinear", "DequantizeLinear"}


def _read_folded_external(graph: gs.Graph) -> None:
    """Read into memory the external constants that feed a foldable node (all inputs constant, propagated), and
    only those: graphsurgeon evaluates on an exported copy where a data file cannot be found, so a Transpose of
    an external weight would silently stay unfolded.  Weights that only feed layers stay on disk."""
    constant = {id(t) for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    for node in graph.nodes:  # topological order
        if node.op in _KEEP or not node.inputs or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        if all(id(i) in constant for i in node.inputs if i.name):
            for i in node.inputs:
                read_external(i)
            constant |= {id(o) for o in node.outputs}
