"""adaround: learn the rounding of every quantized weight, layer by layer (Nagel et al. 2020).

Runs after ``insert-qdq`` on the calibration data, in torch (qcompiler/bridge).  For each quantized
Conv/ConvTranspose/Gemm/MatMul in topological order, each weight learns whether it rounds down or up,
minimising the layer's output error against the FP32 model (with inputs from the quantized model whose
earlier layers are already rounded) plus a regulariser that pushes decisions to 0 or 1 (beta annealed
20 -> 2).  The decisions become the stored integers.  Most useful for 4-bit weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.diagnostics import CalibrationError, QCompilerError
from qcompiler.pm import Pass, PassResult, option, register_pass


def _inputs(ctx, graph, max_samples):
    from qcompiler.bridge.finetune import collect_inputs

    if ctx.calib_data is None:
        raise CalibrationError("fine-tuning needs calibration data", code="QC401", hint="pass --calib-data")
    if ctx.reference is None:
        raise QCompilerError("fine-tuning needs the FP32 graph that insert-qdq keeps; run it after insert-qdq",
                             code="QC603")
    return collect_inputs(ctx.calib_data, ctx.reference, max_samples, ctx.diagnostics)


@register_pass
class AdaRound(Pass):
    """AdaRound: learned up/down rounding of quantized weights, layer by layer (torch bridge)."""

    name = "adaround"
    requires = frozenset({"quantized"})

    @dataclass(frozen=True)
    class Options:
        iters: int = option(500, "optimisation steps per layer", min=1)
        lr: float = option(1e-2, "Adam learning rate of the rounding variables", min=0.0)
        reg: float = option(0.01, "weight of the rounding regulariser (lambda)", min=0.0)
        max_samples: int = option(256, "calibration samples used", min=1)

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        from qcompiler.bridge.finetune import adaround

        batches = _inputs(ctx, graph, self.options.max_samples)
        res = adaround(graph, ctx.reference, batches, iters=self.options.iters, lr=self.options.lr,
                       reg=self.options.reg, seed=ctx.seed, progress=ctx.show_progress())
        ctx.remark("QC603", f"adaround: {res.layers} layers, reconstruction error {res.loss_before:.4g} -> "
                            f"{res.loss_after:.4g} ({res.seconds:.1f} s)")
        ctx.artifacts["finetune"] = res
        return PassResult(True, {"layers": res.layers})
