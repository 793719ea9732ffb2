"""lsq: learn the step sizes of every Q/DQ end to end (LSQ, Esser et al. 2020; LSQ+ offsets with plus=true).

Runs after ``insert-qdq`` on the calibration data, in torch (qcompiler/bridge), distilling the FP32
model's outputs (MSE).  ``train-weights=true`` also trains the float weights (quantization-aware
fine-tuning); the result is requantized into the stored integers.  Learned scales and zero points are
written back into the same Q/DQ nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.floattype import in_fp32

from .adaround import _inputs


class LSQ(Pass["LSQ.Options"]):
    """LSQ/LSQ+: learn quantization step sizes (and optionally weights) against the FP32 model."""

    name = "lsq"
    requires = frozenset({"quantized", "fp32-reference"})
    provides = frozenset({"finetune-report"})

    @dataclass(frozen=True)
    class Options:
        iters: int = option(300, "optimisation steps (one batch each)", min=1)
        lr: float = option(1e-3, "Adam learning rate of the step sizes", min=0.0)
        train_weights: bool = option(False, "also train the float weights (QAT-style fine-tuning)")
        weight_lr: float = option(1e-5, "learning rate of the weights when train-weights=true", min=0.0)
        plus: bool = option(False, "LSQ+: learnable offsets on affine (asymmetric) grids")
        max_samples: int = option(256, "calibration samples used", min=1)

    @in_fp32  # a compiled fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        from qcompiler.bridge.finetune import lsq

        ref, batches = _inputs(ctx, self.name, self.options.max_samples)
        res = lsq(graph, ref, batches, iters=self.options.iters, lr=self.options.lr,
                  train_weights=self.options.train_weights, plus=self.options.plus,
                  weight_lr=self.options.weight_lr, seed=ctx.seed, progress=ctx.progress_mode())
        ctx.remark("QC603", f"{res.method}: distillation loss {res.loss_before:.4g} -> {res.loss_after:.4g} "
                            f"({res.seconds:.1f} s)")
        ctx.state.put(res)
        return PassResult(True, dict(res.written))
