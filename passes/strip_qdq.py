"""strip-qdq: remove QuantizeLinear/DequantizeLinear from a model to quantize it again.

Activation Q->DQ pairs are bypassed (consumers read the float tensor again); pre-quantized weights
(DequantizeLinear of a constant, per tensor, per channel or blocked) become float constants holding
their dequantized values.  Use it as ``strip-qdq,calibrate,insert-qdq`` on a model that was already
quantized (insert-qdq refuses such models otherwise, QC503).  A model whose float parts are fp16 or bf16 comes
back float32 (what calibrate and insert-qdq work on; the named pipelines' ``float-type`` writes the type again).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.pm import Pass, PassResult
from qcompiler.quant.strip import strip_qdq
from qcompiler.quant.floattype import has_other_floats, retype


class StripQDQ(Pass["StripQDQ.Options"]):
    """Remove Q/DQ nodes (dequantizing stored weights) so the model can be quantized again."""

    name = "strip-qdq"
    invalidates = frozenset({"calibrated", "quantized", "fp32-reference", "qdq-plan"})

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        upcast = has_other_floats(graph)
        if upcast:
            from qcompiler.ir.shapes import infer_shapes

            infer_shapes(graph)
            retype(graph, "fp32")
        counts = strip_qdq(graph)
        changed = counts["pairs"] + counts["weights"] + upcast
        if changed:
            ctx.remark("QC503", f"stripped {counts['pairs']} activation Q/DQ pairs and {counts['weights']} quantized "
                                "weights")
        return PassResult(changed > 0, {k: v for k, v in counts.items() if v})
