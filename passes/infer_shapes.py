"""infer-shapes: record element types and shapes on every tensor (onnx shape inference).

Weights are stripped before inference, so it is cheap and works on models over 2 GB.  Symbolic
dims stay symbolic; fix them with ``qcompiler compile --input-shape NAME:1x3x224x224``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.ir.shapes import infer_shapes
from qcompiler.pm import Pass, PassResult, option


class InferShapes(Pass["InferShapes.Options"]):
    """Infer and record tensor shapes and element types."""

    name = "infer-shapes"
    provides = frozenset({"shapes-inferred"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        strict: bool = option(False, "fail (QC208) when shape inference reports an error")

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        changed = infer_shapes(graph, strict=self.options.strict)
        return PassResult(changed > 0, {"shapes_refined": changed} if changed else {})
