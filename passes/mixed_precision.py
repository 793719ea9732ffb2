"""mixed-precision: leave the most sensitive quantized layers in float until the output SQNR meets a target.

After ``insert-qdq``: each quantized layer's sensitivity is measured as the model's output SQNR with only
that layer quantized (qcompiler/quant/sensitivity.py).  Layers are then returned to float, most sensitive first,
until the whole model's output SQNR (vs the FP32 graph, on the calibration data) reaches
``target-sqnr`` or ``max-float`` layers are float.  Each decision is a remark naming the layer and its
sensitivity.  A layer returned to float loses its input Q/DQ edge and gets its FP32 weight back.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.diagnostics import CalibrationError
from qcompiler.pm import Pass, PassResult, option
from qcompiler.pm.state import State
from qcompiler.quant.state import FP32Reference
from qcompiler.quant.floattype import in_fp32


@dataclass
class MixedPrecisionReport(State):
    """Layers mixed-precision returned to float, the output SQNR reached, and each layer's sensitivity."""

    fact = "mixed-precision-report"
    float_layers: list[str]
    sqnr: float
    sensitivity: dict[str, float]


class MixedPrecision(Pass["MixedPrecision.Options"]):
    """Keep the most sensitive layers in float until the output SQNR reaches a target."""

    name = "mixed-precision"
    requires = frozenset({"quantized", "fp32-reference"})
    provides = frozenset({"mixed-precision-report"})

    @dataclass(frozen=True)
    class Options:
        target_sqnr: float = option(35.0, "output SQNR (dB) vs FP32 to reach", min=0.0)
        max_float: int = option(8, "at most this many layers go back to float", min=0)
        max_samples: int = option(128, "calibration samples used to measure", min=1)

    @in_fp32  # a compiled fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        from qcompiler.ir.opset import replace_graph_contents
        from qcompiler.quant.sensitivity import float_layers, layer_sensitivity, quantized_layers, streamed_sqnr

        if ctx.calib_data is None:
            raise CalibrationError("mixed-precision needs calibration data", code="QC401", hint="pass --calib-data")
        ref = ctx.state.require(FP32Reference, self.name).graph
        data = ctx.calib_data.limited(self.options.max_samples)
        out = ref.outputs[0].name
        ref_names = {n.name for n in ref.nodes}
        layers = [n for n in quantized_layers(graph) if n.name in ref_names]
        current = streamed_sqnr(ref, graph, [out], data)["sqnr"][out]
        if current >= self.options.target_sqnr or not layers:
            ctx.remark("QC604", f"mixed-precision: output SQNR {current:.1f} dB already meets "
                                f"{self.options.target_sqnr:g}")
            ctx.state.put(MixedPrecisionReport([], current, {}))
            return PassResult(False, {"float_layers": 0})
        sens = layer_sensitivity(graph, ref, data, layers=layers, progress=ctx.progress_mode(),
                                 executor=ctx.executor, diagnostics=ctx.diagnostics)
        order = sorted(sens, key=lambda k: sens[k])
        floated: list[str] = []
        best = graph
        for name in order[: self.options.max_float]:
            floated.append(name)
            cand = float_layers(graph, ref, set(floated))
            current = streamed_sqnr(ref, cand, [out], data)["sqnr"][out]
            best = cand
            ctx.remark("QC504", f"mixed-precision keeps {name} in float (only-this-layer output SQNR "
                                f"{sens[name]:.1f} dB); model output SQNR now {current:.1f} dB", node=name)
            if current >= self.options.target_sqnr:
                break
        else:
            if current < self.options.target_sqnr:
                ctx.warning("QC604", f"mixed-precision reached max-float={self.options.max_float} with output SQNR "
                                     f"{current:.1f} dB < target {self.options.target_sqnr:g}")
        replace_graph_contents(graph, best)
        ctx.state.put(MixedPrecisionReport(floated, current, sens))
        return PassResult(True, {"float_layers": len(floated)})
