"""gptq: second-order weight rounding for every quantized Conv, ConvTranspose, Gemm and MatMul.

The math and the driver: qcompiler/quant/gptq.py (also behind ``qcompiler finetune --method gptq``).

After ``insert-qdq``.  One streaming pass over the calibration data through the FP32 graph gathers each layer's
input Hessian ``H = 2 X^T X`` (im2col patches for convolutions; several passes when the Hessians would not fit
in memory together), then each layer's integer weights are re-rounded by GPTQ on the grid the plan gave them,
or on a new one: ``bits`` and ``block-size`` re-quantize the weights (per output channel, or per block of
``block-size`` inputs for MatMul/Gemm, opset 21).  Each layer's objective ``||(W - Q) X||^2`` is reported against
round-to-nearest (a QC603 remark per layer); a layer where GPTQ does not beat it keeps round-to-nearest.
Deterministic (float64, no randomness); numpy on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.diagnostics import CalibrationError
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.gptq import GPTQReport, run_gptq
from qcompiler.quant.state import FP32Reference, QuantizationRecord
from qcompiler.quant.floattype import in_fp32

__all__ = ["GPTQ", "GPTQReport"]


class GPTQ(Pass["GPTQ.Options"]):
    """GPTQ: re-round quantized weights with second-order (Hessian) error compensation."""

    name = "gptq"
    requires = frozenset({"quantized", "fp32-reference", "qdq-plan"})
    provides = frozenset({"gptq-report"})

    @dataclass(frozen=True)
    class Options:
        bits: int = option(0, "weight bits (0: the grid insert-qdq chose; else re-quantize per channel, or per block "
                              "with block-size)", min=0, max=8)
        block_size: int = option(0, "quantize MatMul/Gemm weights in blocks of this many inputs (0: per channel)",
                                 min=0)
        act_order: bool = option(True, "quantize columns by decreasing Hessian diagonal (act-order)")
        damp: float = option(0.01, "dampening added to the Hessian diagonal, relative to its mean", min=0.0)
        block: int = option(128, "columns per lazy batch update", min=1)
        max_samples: int = option(128, "calibration samples for the Hessians", min=1)
        inputs: str = option("quantized", "the layers' inputs GPTQ sees: quantized (through the model's Q/DQ; one "
                                          "data pass), sequential (layer by layer, each after the layers before it "
                                          "are re-rounded, aiming at the FP32 output: slower, best), or fp32 (the "
                                          "original GPTQ)", choices=("quantized", "sequential", "fp32"))
        fallback_db: float = option(0.0, "a layer with fewer than 8 weight bits whose output SQNR after GPTQ (its "
                                         "own objective: output energy over error on the calibration data) stays "
                                         "below this many dB gets 8-bit weights on the same granularity (0: off)",
                                    min=0.0)

    @in_fp32  # a compiled fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        if ctx.calib_data is None:
            raise CalibrationError("gptq needs calibration data (the layers' input Hessians)", code="QC401",
                                   hint="pass --calib-data")
        ref = ctx.state.require(FP32Reference, self.name).graph
        record = ctx.state.require(QuantizationRecord, self.name)
        o = self.options
        rep = run_gptq(graph, ref, record, ctx.calib_data, bits=o.bits, block_size=o.block_size,
                       act_order=o.act_order, damp=o.damp, block=o.block, max_samples=o.max_samples,
                       threads=ctx.threads, progress=ctx.progress_mode(), diagnostics=ctx.diagnostics,
                       inputs=o.inputs, executor=ctx.executor, fallback_db=o.fallback_db)
        ctx.state.put(rep)
        er = sum(a for a, _ in rep.layers.values())
        eg = sum(b for _, b in rep.layers.values())
        ctx.remark("QC603", f"gptq: {len(rep.layers)} layers, summed objective {er:.4g} -> {eg:.4g} in "
                            f"{rep.seconds:.1f} s" + (f"; {len(rep.wider)} layer(s) below {o.fallback_db:g} dB "
                                                      f"got 8-bit weights" if rep.wider else ""))
        return PassResult(True, {"layers": len(rep.layers)})
