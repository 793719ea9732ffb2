"""cle: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization through Weight Equalization").

For two layers joined by positively homogeneous ops (Relu, LeakyRelu, PRelu, MaxPool, AveragePool,
none; see passes/_pairs.py) let ``r1_i`` be the range (max |w|) of output channel i of the first
layer and ``r2_i`` the range of input channel i of the second.  Scaling channel i by ``s_i > 0``::

    W1'[out i] = W1[out i] / s_i,   b1'_i = b1_i / s_i,   W2'[in i] = W2[in i] * s_i
    s_i = sqrt(r1_i / r2_i)   =>   r1'_i = r2'_i = sqrt(r1_i * r2_i)

leaves the model's function unchanged (``f(x / s) = f(x) / s``) and makes the per-channel ranges of
both layers as equal as they can be, which is what per-tensor weight quantization needs.  Chains
(Conv -> depthwise Conv -> Conv) are swept repeatedly until no scale moves by more than
``tolerance`` or ``max-iters`` sweeps ran.  Which channel is which for each op: passes/_layers.py.

ReLU6 / Clip(0, M) (``clip=``):

* ``rescale`` (default, exact): Clip(x, 0, M) is rewritten to ``Min(Relu(x), M_c)`` with a
  per-channel bound, and ``M_c`` is divided by ``s_c`` with the channel.
* ``barrier``: a Clip stops equalization there.
* ``relu``: Clip(x, 0, M) becomes Relu, as AIMET does. This CHANGES the model (values above M are
  no longer clipped); each replacement is reported as a QC303 remark.

A pair whose intermediate tensor has another consumer (a residual branch, a graph output) is skipped
with a remark.  Per-layer figures (max/min channel-range ratio and per-tensor int8 weight SQNR,
before and after) are left in ``ctx.state`` as a ``CLEReport`` (fact ``cle-report``).  BatchNorm statistics
recorded by fold-bn (``bn-stats``) are rescaled with the channels they describe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import Namer
from qcompiler.pm import Pass, PassResult, option
from qcompiler.pm.state import State
from qcompiler.quant.numerics import int8_per_tensor_sqnr
from qcompiler.quant.state import BatchNormStats, BNRecord
from qcompiler.quant.floattype import in_fp32

from ._layers import Layer, range_spread
from ._pairs import (chain_clip_bounds, channel_const_shape, clip_bounds, convert_clip, find_pairs,
                     per_channel_operand, per_channel_values)


@dataclass
class CLEReport(State):
    """Per equalized layer: channel-range spread (max/min) before and after, and with measure=true the
    per-tensor int8 weight SQNR before and after."""

    fact = "cle-report"
    layers: list[dict]


class CLE(Pass["CLE.Options"]):
    """Cross-layer equalization of per-channel weight ranges (exact in FP32)."""

    name = "cle"
    provides = frozenset({"cle-report"})
    invalidates = frozenset({"calibrated"})
    uses = frozenset({"bn-stats"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        max_iters: int = option(100, "maximum number of sweeps over all layer pairs (chains need several)", min=1)
        tolerance: float = option(1e-3, "stop when no channel scale moves by more than this (|log s|)", min=0.0)
        clip: str = option("rescale", "how Clip/ReLU6 between layers is treated: rescale (exact per-channel "
                                      "bound), barrier (stop), relu (replace by Relu: changes the model)",
                           choices=("rescale", "barrier", "relu"))
        measure: bool = option(False, "also record per-tensor int8 weight SQNR before/after of every equalized "
                                      "layer in the CLE report (range spreads are always recorded)")

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        pairs, skipped = find_pairs(graph, clip=self.options.clip)
        for node, why in skipped:
            ctx.remark("QC302", f"cle: {node.name} starts no pair: {why}", node=node.name)
        if not pairs:
            if skipped:  # there were layers to start from, and every one was refused
                ctx.warning("QC302", f"cle found no layer pair to equalize ({len(skipped)} layer(s) refused, e.g. "
                                     f"{skipped[0][0].name}: {skipped[0][1]}); -v lists them")
            ctx.state.put(CLEReport([]))
            return PassResult(False, {"pairs": 0})
        names = Namer(graph)
        layers: dict[int, Layer] = {}
        for p in pairs:
            for n in (p.l1, p.l2):
                if id(n) not in layers:
                    layers[id(n)] = Layer.of(n, with_matmul_bias=True, graph=graph)  # find_pairs checked it
        measure = self.options.measure
        sqnr_before = {k: int8_per_tensor_sqnr(lay.W) for k, lay in layers.items()} if measure else {}
        clips = sum(1 for p in pairs for op in p.ops
                    if op.op == "Clip" and clip_bounds(op) != (0.0, np.inf))

        # per-channel bounds of Min/Max ops in the chains (Clips contribute their upper bound)
        bounds: dict[int, np.ndarray] = {}
        for p in pairs:
            ch = layers[id(p.l1)].out_channels
            last = layers[id(p.l1)].kind.is_dense
            for op in p.ops:
                if op.op == "Clip":
                    lo, hi = chain_clip_bounds(op)
                    if hi != np.inf and self.options.clip == "rescale":
                        bounds[id(op)] = np.full(ch, hi)
                elif op.op in ("Min", "Max"):
                    idx = per_channel_operand(op, ch, p.channel_rank, last)
                    assert idx is not None  # the chain takes Min/Max with a per-channel constant operand only
                    bounds[id(op)] = per_channel_values(op, idx, ch)

        # Sweep on the small per-channel max matrices M[o, i]; the weights are scaled once at the end:
        # W'[o, i] = W[o, i] * a[o] * b[i]  =>  out range o = a[o] max_i M[o,i] b[i], in range i likewise.
        mats = {k: lay.absmax_matrix() for k, lay in layers.items()}
        spread_before = {k: range_spread(m.max(axis=1)) for k, m in mats.items()}
        a = {k: np.ones(lay.out_channels) for k, lay in layers.items()}
        b = {k: np.ones(lay.in_channels) for k, lay in layers.items()}
        sweeps = 0
        first_worst = 0.0
        for sweeps in range(1, self.options.max_iters + 1):
            worst = 0.0
            for p in pairs:
                k1, k2 = id(p.l1), id(p.l2)
                r1 = a[k1] * np.max(mats[k1] * b[k1][None, :], axis=1)
                r2 = b[k2] * np.max(mats[k2] * a[k2][:, None], axis=0)
                s = np.ones_like(r1)
                ok = (r1 > 1e-30) & (r2 > 1e-30)
                s[ok] = np.sqrt(r1[ok] / r2[ok])
                a[k1] = a[k1] / s
                b[k2] = b[k2] * s
                for op in p.ops:
                    if id(op) in bounds:
                        bounds[id(op)] = bounds[id(op)] / s
                worst = max(worst, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
            if sweeps == 1:
                first_worst = worst
            if worst <= self.options.tolerance:
                break
        else:
            ctx.remark("QC302", f"cle stopped after max-iters={self.options.max_iters} sweeps before converging "
                                f"(largest last step |log s| = {worst:.2g}); the result is exact but less equalized")
        if first_worst <= self.options.tolerance and clips == 0 and self.options.clip != "relu":
            # already equalized (e.g. a second run): leave the graph exactly as it is
            ctx.state.put(CLEReport([]))
            return PassResult(False, {"pairs": len(pairs), "sweeps": 1})
        bn_stats = ctx.state.get(BatchNormStats)
        for k, lay in layers.items():
            lay.scale_both(a[k], b[k])
            out_t = lay.bias_node.outputs[0] if lay.bias_node is not None else lay.node.outputs[0]
            st = bn_stats.get(out_t.name) if bn_stats is not None else None
            if st is not None:  # keep fold-bn's statistics true for absorb-bias / bias-correct
                bn_stats = bn_stats.with_record(out_t.name, BNRecord(st.layer, st.mean * a[k], st.std * a[k]))
        if bn_stats is not None:
            ctx.state.put(bn_stats)

        # write back: weights, then the chain ops (Clip -> Relu + Min with per-channel bounds)
        for lay in layers.values():
            lay.commit(graph, names)
        rewritten = 0
        for p in pairs:
            ch = layers[id(p.l1)].out_channels
            for op in list(p.ops):
                if op.op == "Clip":
                    lo, hi = chain_clip_bounds(op)
                    if hi != np.inf and self.options.clip == "relu":
                        ctx.remark("QC303", f"cle replaced {op.name} (Clip [{lo:g}, {hi:g}]) by Relu: values above "
                                   f"{hi:g} are no longer clipped (clip=relu changes the model)", node=op.name)
                    new = convert_clip(graph, op, ch, p.channel_rank, names,
                                       "relu" if (hi == np.inf or self.options.clip == "relu") else "rescale")
                    rewritten += 1
                    if id(op) in bounds:
                        mn = next(n for n in new if n.op == "Min")
                        self._set_bound(mn, 1, bounds[id(op)], p.channel_rank, names)
                elif id(op) in bounds:
                    idx = per_channel_operand(op, ch, p.channel_rank, layers[id(p.l1)].kind.is_dense)
                    assert idx is not None
                    self._set_bound(op, idx, bounds[id(op)], p.channel_rank, names)

        report = []
        for key, lay in layers.items():
            row = {"layer": lay.node.name, "spread_before": spread_before[key],
                   "spread_after": range_spread(a[key] * np.max(mats[key] * b[key][None, :], axis=1))}
            if measure:
                row.update(sqnr_before=sqnr_before[key], sqnr_after=int8_per_tensor_sqnr(lay.W))
            report.append(row)
        ctx.state.put(CLEReport(report))
        for p in pairs:
            ctx.remark("QC301", f"cle equalized {p.l1.name} -> {p.l2.name}", node=p.l2.name)
        graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(True, {"pairs": len(pairs), "sweeps": sweeps, "clips_rewritten": rewritten})

    @staticmethod
    def _set_bound(node: gs.Node, idx: int, values: np.ndarray, r: int, names: Namer) -> None:
        dtype = node.outputs[0].dtype if node.outputs[0].dtype is not None else np.float32
        node.inputs[idx] = gs.Constant(names(node.name + "_bound"),
                                       values.reshape(channel_const_shape(values.size, r)).astype(dtype))
