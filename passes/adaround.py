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

from qcompiler.bridge.results import FinetuneResult  # noqa: F401 - the state class of 'finetune-report'
from qcompiler.diagnostics import CalibrationError
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.state import FP32Reference
from qcompiler.quant.floattype import in_fp32


def _inputs(ctx, who: str, max_samples: int):
    """(the FP32 reference graph, calibration batches kept for training)."""
    from qcompiler.bridge.finetune import collect_inputs

    ref = ctx.state.require(FP32Reference, who).graph
    if ctx.calib_data is None:
        raise CalibrationError("fine-tuning needs calibration data", code="QC401", hint="pass --calib-data")
    return ref, collect_inputs(ctx.calib_data, ref, max_samples, ctx.diagnostics)


class AdaRound(Pass["AdaRound.Options"]):
    """AdaRound: learned up/down rounding of quantized weights, layer by layer (torch bridge)."""

    name = "adaround"
    requires = frozenset({"quantized", "fp32-reference"})
    provides = frozenset({"finetune-report"})

    @dataclass(frozen=True)
    class Options:
        iters: int = option(500, "optimisation steps per layer", min=1)
        lr: float = option(1e-2, "Adam learning rate of the rounding variables", min=0.0)
        reg: float = option(0.01, "weight of the rounding regulariser (lambda)", min=0.0)
        max_samples: int = option(256, "calibration samples used", min=1)

    @in_fp32  # a compiled fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        from qcompiler.bridge.finetune import adaround

        ref, batches = _inputs(ctx, self.name, self.options.max_samples)
        res = adaround(graph, ref, batches, iters=self.options.iters, lr=self.options.lr,
                       reg=self.options.reg, seed=ctx.seed, progress=ctx.progress_mode())
        ctx.remark("QC603", f"adaround: {res.layers} layers, reconstruction error {res.loss_before:.4g} -> "
                            f"{res.loss_after:.4g} ({res.seconds:.1f} s)")
        ctx.state.put(res)
        return PassResult(True, {"layers": res.layers})
