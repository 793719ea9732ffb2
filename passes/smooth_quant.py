"""smooth-quant: move activation outliers into the weights of MatMul/Gemm (Xiao et al. 2023).

Transformers have a few activation channels (input features of a linear layer) far larger than the
rest, which ruins per-tensor activation quantization.  For a linear layer ``Y = X W`` (W: [K, N]) and a
per-input-channel factor ``s_j > 0``::

    Y = (X diag(1/s)) (diag(s) W),     s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

moves difficulty from X to W (which is quantized per output channel, so it absorbs it well).  The
division by ``s`` is folded into the producer of X, which must be able to scale its output per channel:
a LayerNormalization (``gamma' = gamma/s, beta' = beta/s``) or a Mul/Add-free affine producer.  Every
consumer of X must be a MatMul/Gemm with a constant weight (they all take ``diag(s) W``; ``max|W_j|`` is
over all of them).  The rewrite is exact in FP32; it runs before ``calibrate`` and needs calibration data
for ``max|X_j|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calib import CollectOptions, ObserverConfig, collect
from qcompiler.diagnostics import CalibrationError
from qcompiler.ir.edit import Namer
from qcompiler.ir.query import const_value, is_graph_output, subgraph_referenced_names
from qcompiler.pm import Pass, PassResult, option

from ._layers import Layer


class SmoothQuant(Pass):
    """SmoothQuant: migrate activation outliers of MatMul/Gemm inputs into their weights (exact in FP32)."""

    name = "smooth-quant"
    invalidates = frozenset({"calibrated"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        alpha: float = option(0.5, "migration strength: 0 keeps activations, 1 moves everything into weights",
                              min=0.0, max=1.0)
        max_samples: int = option(128, "calibration samples used to measure max |X_j|", min=1)

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        protected = subgraph_referenced_names(graph)
        sites = []
        for ln in graph.nodes:
            if ln.op != "LayerNormalization" or not ln.outputs:
                continue
            x = ln.outputs[0]
            if is_graph_output(graph, x) or x.name in protected or not x.outputs:
                continue
            users = list(x.outputs)
            bad = [u for u in users if u.op not in ("MatMul", "Gemm") or u.inputs[0] is not x
                   or Layer.refusal(u) is not None]
            if bad:
                ctx.remark("QC302", f"smooth-quant skipped {ln.name}: its output feeds {bad[0].name} ({bad[0].op}), "
                                    "which cannot take the per-channel factor", node=ln.name)
                continue
            if const_value(ln.inputs[1]) is None or (len(ln.inputs) > 2 and ln.inputs[2].name and
                                                     const_value(ln.inputs[2]) is None):
                ctx.remark("QC302", f"smooth-quant skipped {ln.name}: its scale/bias are not constants", node=ln.name)
                continue
            sites.append((ln, users))
        if not sites:
            lns = sum(1 for n in graph.nodes if n.op == "LayerNormalization")
            ctx.warning("QC302", "smooth-quant found no site to smooth: " +
                        (f"none of the {lns} LayerNormalization outputs feeds only MatMul/Gemm layers (-v says why "
                         "for each)" if lns else "the model has no LayerNormalization"))
            return PassResult(False, {"sites": 0})
        if ctx.calib_data is None:
            raise CalibrationError("smooth-quant needs calibration data (max |X| per channel)", code="QC401",
                                   hint="pass --calib-data")
        data = ctx.calib_data.limited(self.options.max_samples)
        stats = collect(graph, {ln.outputs[0].name: ObserverConfig("min_max", axis=-1) for ln, _ in sites}, data,
                        diagnostics=ctx.diagnostics, options=CollectOptions(threads=ctx.threads,
                                                                              progress=ctx.progress_mode()))
        names = Namer(graph)
        done = 0
        alpha = self.options.alpha
        for ln, users in sites:
            st = stats[ln.outputs[0].name]
            xmax = np.maximum(np.abs(np.asarray(st.min)), np.abs(np.asarray(st.max))).reshape(-1)
            layers = [Layer.of(u) for u in users]
            wmax = np.max(np.stack([lay.in_ranges() for lay in layers]), axis=0).astype(np.float64)
            if xmax.size != wmax.size:
                ctx.remark("QC302", f"smooth-quant skipped {ln.name}: {xmax.size} activation channels vs "
                                    f"{wmax.size} weight rows", node=ln.name)
                continue
            s = np.ones_like(xmax)
            ok = (xmax > 1e-12) & (wmax > 1e-12)
            s[ok] = xmax[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
            s = np.clip(s, 1e-5, 1e5)
            gamma = const_value(ln.inputs[1]).astype(np.float64)
            ln.inputs[1] = gs.Constant(names(ln.name + "_scale_smoothed"), (gamma / s).astype(np.float32))
            if len(ln.inputs) > 2 and ln.inputs[2].name:
                beta = const_value(ln.inputs[2]).astype(np.float64)
                ln.inputs[2] = gs.Constant(names(ln.name + "_bias_smoothed"), (beta / s).astype(np.float32))
            for lay in layers:
                lay.scale_in(s)
                lay.commit(graph, names, bias=False)
            done += 1
            ctx.remark("QC301", f"smooth-quant rescaled {ln.name} -> {', '.join(u.name for u in users)} "
                                f"(activation range {xmax.max() / max(xmax.min(), 1e-12):.1f}x -> "
                                f"{(xmax / s).max() / max((xmax / s).min(), 1e-12):.1f}x across channels)",
                       node=ln.name)
        if done:
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(done > 0, {"sites": done})
