"""absorb-bias: high-bias absorption (Nagel et al. 2019), usually after ``cle``.

For layers L1 -> Relu -> L2, when the pre-activation ``h_i`` of channel i is known to satisfy
``h_i >= c_i >= 0``, then ``relu(h_i) = relu(h_i - c_i) + c_i``, so ``c_i`` can move from L1's bias into
L2's bias::

    b1'_i = b1_i - c_i,      b2'_o = b2_o + sum_{i, taps} W2[o, i, taps] * c_i

which shrinks the range of L1's output (what per-tensor activation quantization cares about) without
changing the model, as long as the bound holds.  Where ``c_i`` comes from (``source``):

* ``data`` (``auto`` when calibration data is given): the per-channel minimum of ``h`` over the
  calibration data, measured with onnxruntime.  The rewrite is exact on that data and on any input
  whose pre-activations stay above the observed minima.
* ``bn``: BatchNormalization statistics recorded by ``fold-bn`` (``h ~ N(beta, gamma^2)``),
  ``c = beta - n-sigma * |gamma|``, as in the paper.  Statistical: exact only where inputs stay within
  n-sigma.

L2 must not pad with zeros (its padded border would not see ``c_i``), so 3x3 convs with padding are
skipped unless ``allow-border-error=true``; ConvTranspose L2s are skipped.  Each skip is a remark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calib import CollectOptions, ObserverConfig, collect
from qcompiler.diagnostics import CalibrationError
from qcompiler.ir.edit import Namer
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.state import BatchNormStats
from qcompiler.quant.floattype import in_fp32

from ._layers import Layer, LayerKind, conv_geometry, input_response
from ._pairs import find_pairs


class AbsorbBias(Pass["AbsorbBias.Options"]):
    """High-bias absorption: move provably-positive pre-activation offsets into the next layer's bias."""

    name = "absorb-bias"
    invalidates = frozenset({"calibrated"})
    uses = frozenset({"bn-stats"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        source: str = option("auto", "where the lower bounds come from: data (calibration data), bn (fold-bn's "
                                     "statistics), auto (data if given, else bn)", choices=("auto", "data", "bn"))
        n_sigma: float = option(3.0, "bn source: c = beta - n_sigma * |gamma|", min=0.0)
        allow_border_error: bool = option(False, "also absorb into padded convs (inexact at the zero-padded border)")
        max_samples: int = option(256, "data source: samples to measure the minima on", min=1)

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        pairs, _ = find_pairs(graph, for_bias=True)
        pairs = [p for p in pairs if not p.no_activation]
        if not pairs:
            return PassResult(False, {"pairs": 0})
        source = self.options.source
        if source == "auto":
            source = "data" if ctx.calib_data is not None else "bn"
        layers: dict[int, Layer] = {}
        candidates = []
        for p in pairs:
            l1 = layers.setdefault(id(p.l1), Layer.of(p.l1, with_matmul_bias=True, graph=graph))
            l2 = layers.setdefault(id(p.l2), Layer.of(p.l2, with_matmul_bias=True, graph=graph))
            if l2.kind is LayerKind.CONV:
                geo = conv_geometry(p.l2, l2.W)
                if not geo.no_padding and not self.options.allow_border_error:
                    ctx.remark("QC302", f"absorb-bias skipped {p.l1.name} -> {p.l2.name}: {p.l2.name} pads with zeros "
                                        "(allow-border-error=true absorbs anyway, inexactly at the border)",
                               node=p.l2.name)
                    continue
            if l2.kind is LayerKind.CONV_TRANSPOSE:
                continue
            candidates.append(p)
        if not candidates:
            return PassResult(False, {"pairs": 0})

        bounds = self._bounds(graph, ctx, candidates, layers, source)
        names = Namer(graph)
        changed = 0
        touched: set[int] = set()
        for p in candidates:
            c = bounds.get(id(p.l1))
            if c is None:
                continue
            c = np.maximum(c, 0.0)
            if not np.any(c > 0):
                continue
            l1, l2 = layers[id(p.l1)], layers[id(p.l2)]
            l1.add_bias(-c)
            l2.add_bias(input_response(l2.node, l2.geometry, l2.W, c))
            touched |= {id(p.l1), id(p.l2)}
            changed += 1
            ctx.remark("QC301", f"absorb-bias moved {int(np.count_nonzero(c))} channel offsets from {p.l1.name} "
                                f"into {p.l2.name} (source={source})", node=p.l1.name)
        for k in touched:
            layers[k].commit(graph, names)
        if changed:
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(changed > 0, {"pairs": changed, "source": source})

    def _bounds(self, graph, ctx, pairs, layers, source) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        if source == "bn":
            recorded = ctx.state.get(BatchNormStats) or BatchNormStats()
            for p in pairs:
                l1 = layers[id(p.l1)]
                t = (l1.bias_node.outputs[0] if l1.bias_node is not None else p.l1.outputs[0]).name
                st = recorded.get(t)
                if st is None:
                    ctx.remark("QC302", f"absorb-bias: no BatchNormalization statistics for {p.l1.name} (run fold-bn "
                                        "in the same pipeline, or give calibration data)", node=p.l1.name)
                    continue
                out[id(p.l1)] = st.mean - self.options.n_sigma * st.std
            return out
        if ctx.calib_data is None:
            raise CalibrationError("absorb-bias{source=data} needs calibration data", code="QC401",
                                   hint="pass --calib-data, or use source=bn after fold-bn")
        requests = {}
        for p in pairs:
            l1 = layers[id(p.l1)]
            t = l1.bias_node.outputs[0] if l1.bias_node is not None else p.l1.outputs[0]
            axis = l1.kind.activation_channel_axis
            requests[t.name] = (id(p.l1), ObserverConfig("min_max", axis=axis))

        data = ctx.calib_data.limited(self.options.max_samples)
        stats = collect(graph, {k: v[1] for k, v in requests.items()}, data, diagnostics=ctx.diagnostics,
                        options=CollectOptions(threads=ctx.threads, progress=ctx.progress_mode()))
        for name, (key, _) in requests.items():
            out[key] = np.asarray(stats[name].min, dtype=np.float64).reshape(-1)
        return out
