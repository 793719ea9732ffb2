"""to-fp32: bring an fp16, bf16 or mixed model to float32 (qcompiler/quant/floattype.py, ``retype``).

A model exported in fp16, fp16 weights behind Casts, or fp16 inputs: every float tensor, constant and Cast
between float types becomes float32, so the passes that follow (folding, smoothing, calibration, placement, the
guard, GPTQ) work and compute their statistics in float32.  Graph inputs and outputs keep their declared types
(a Cast after an fp16 input, a Cast back before an fp16 output), so the model is called exactly as before.  The
named pipelines run it first and write the float type chosen by their ``float`` option at the end
(``float-type``).  A float32 model is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.ir.shapes import infer_shapes
from qcompiler.pm import Pass, PassResult
from qcompiler.quant.floattype import has_other_floats, retype


class ToFp32(Pass["ToFp32.Options"]):
    """Bring fp16/bf16 float parts (weights, activations, Casts) to float32; inputs and outputs keep their types."""

    name = "to-fp32"
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        if not has_other_floats(graph):
            return PassResult.unchanged()
        inferred = infer_shapes(graph) > 0
        res = retype(graph, "fp32", keep_io=True)
        ctx.remark("QC301", f"to-fp32: {res.nodes_retyped} node(s) and {res.constants} constant(s) brought to float32 "
                            f"for the passes; {res.casts} Cast(s) at the interface, {res.casts_removed} removed")
        return PassResult(res.changed or inferred, {"retyped": res.nodes_retyped, "constants": res.constants})
