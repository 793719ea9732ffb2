"""awq: activation-aware scales for blocked weight-only quantization of MatMul/Gemm (Lin et al. 2024).

Weights that meet large input activations matter most.  For an activation ``X`` read by MatMul/Gemm layers with
constant weights ``W`` [K, N] and per-input-channel factors ``s_j = mean|X_j|^alpha`` (normalised to a geometric
mean of 1)::

    X W = (X diag(1/s)) (diag(s) W)

so the salient rows of ``W`` are scaled up before blocked round-to-nearest quantization and their relative
rounding error shrinks.  ``alpha`` is searched per activation over ``grid`` points in [0, 1] on the calibration
data, minimising ``||X W - (X/s) Q(diag(s) W)||^2`` summed over every layer reading X (``alpha = 0`` is plain
round-to-nearest, so the search never does worse on that sample).  The division by ``s`` goes where
smooth-quant puts its own (qcompiler/passes/smooth_quant.py): into a LayerNormalization or a layer through a
Relu when nothing else reads X, else into an inserted Mul in front of the layers.  Exact in FP32; runs before
``calibrate``/``insert-qdq`` (``trt-int4-weights{method=awq}``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.diagnostics import CalibrationError
from qcompiler.ir.edit import Namer
from qcompiler.ir.graph import copy_graph
from qcompiler.ir.query import is_graph_output, producer, subgraph_referenced_names
from qcompiler.ir.runtime import Session
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.floattype import in_fp32

from ._layers import Layer
from .smooth_quant import SHAPE_ONLY, SmoothQuant, _absorbing_layer, _Site


def _blocked_rtn(W: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Symmetric round-to-nearest of W [K, N] in blocks of ``block`` rows (the reduction axis), dequantized."""
    k = W.shape[0]
    qmax = 2 ** (bits - 1) - 1
    pad = (-k) % block
    Wp = np.pad(W, ((0, pad), (0, 0))) if pad else W
    Wb = Wp.reshape(-1, block, W.shape[1])
    s = np.maximum(np.abs(Wb).max(axis=1, keepdims=True) / qmax, 1e-12)
    return (np.clip(np.rint(Wb / s), -qmax, qmax) * s).reshape(Wp.shape)[:k]


class AWQ(Pass["AWQ.Options"]):
    """AWQ: activation-aware per-input-channel scales before blocked weight-only quantization (exact in FP32)."""

    name = "awq"
    invalidates = frozenset({"calibrated"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        bits: int = option(4, "weight bits the scales are searched for", min=2, max=8)
        block_size: int = option(128, "inputs per weight block", min=1)
        grid: int = option(20, "alpha values tried in [0, 1]", min=1)
        max_samples: int = option(64, "calibration samples", min=1)
        max_rows: int = option(2048, "activation rows (tokens, positions) kept per activation for the search",
                               min=16)

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        protected = subgraph_referenced_names(graph)
        sites: list[_Site] = []
        for x in graph.tensors().values():
            if isinstance(x, gs.Constant) or not x.outputs or x.name in protected:
                continue
            layers = [u for u in x.outputs if u.op in ("MatMul", "Gemm") and u.inputs[0] is x
                      and Layer.refusal(u) is None]
            if not layers:
                continue
            others = [u for u in x.outputs if u not in layers and u.op not in SHAPE_ONLY]
            p = producer(x)
            absorb = None
            if not others and not is_graph_output(graph, x):
                if p is not None and p.op == "LayerNormalization":
                    absorb = p
                else:
                    absorb = _absorbing_layer(graph, x, -1)
            sites.append(_Site(x, layers, absorb, -1))
        if not sites:
            ctx.warning("QC302", "awq found no MatMul/Gemm with a constant weight to scale")
            return PassResult(False, {"sites": 0})
        if ctx.calib_data is None:
            raise CalibrationError("awq needs calibration data (the activations' magnitudes)", code="QC401",
                                   hint="pass --calib-data")
        rows = self._activations(graph, sites, ctx)
        names = Namer(graph)
        o = self.options
        done = 0
        smooth = SmoothQuant()
        for site in sites:
            X = rows[site.x.name]
            if X.shape[0] == 0:
                continue
            layers = [Layer.of(u) for u in site.layers]
            mats = [lay.W.T if lay.trans_b else lay.W for lay in layers]  # [K, N]
            if any(m.shape[0] != X.shape[1] for m in mats):
                continue
            mag = np.abs(X).mean(axis=0) + 1e-12
            ref = [X @ m for m in mats]

            def err(alpha: float) -> float:
                s = mag ** alpha
                s = s / np.sqrt(s.max() * s.min())
                xs = X / s
                return sum(float(np.sum((r - xs @ _blocked_rtn(m * s[:, None], o.bits, o.block_size)) ** 2))
                           for r, m in zip(ref, mats))

            alphas = np.linspace(0.0, 1.0, o.grid + 1)
            errs = [err(float(a)) for a in alphas]
            best = int(np.argmin(errs))
            if best == 0 or errs[best] > 0.98 * errs[0]:
                continue  # round-to-nearest as is is as good (a second run finds nothing more to move)
            s = mag ** alphas[best]
            s = s / np.sqrt(s.max() * s.min())
            smooth._divide(graph, site, s, names)
            for lay in layers:
                lay.scale_in(s)
                lay.commit(graph, names, bias=False)
            done += 1
            ctx.remark("QC301", f"awq scaled '{site.x.name}' -> {', '.join(u.name for u in site.layers)}: alpha "
                                f"{alphas[best]:.2f}, blocked int{o.bits} error {errs[0]:.4g} -> {errs[best]:.4g}",
                       node=site.layers[0].name)
        if done:
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(done > 0, {"sites": done})

    def _activations(self, graph: gs.Graph, sites: list[_Site], ctx) -> dict[str, np.ndarray]:
        """Up to ``max_rows`` rows [rows, K] of each site's activation (evenly over the samples)."""
        g = copy_graph(graph)
        ts = g.tensors()
        g.outputs = [ts[s.x.name] for s in sites]
        g.cleanup(remove_unused_graph_inputs=False)
        sess = Session(g, opt_level="all", threads=ctx.threads)
        parts: dict[str, list[np.ndarray]] = {s.x.name: [] for s in sites}
        try:
            for b in ctx.calib_data.limited(self.options.max_samples).batches(graph, ctx.diagnostics):
                outs = sess.run({k: v for k, v in b.feeds.items() if k in sess.input_names})
                for s, y in zip(sites, outs):
                    parts[s.x.name].append(np.asarray(y, np.float64).reshape(-1, y.shape[-1]))
        finally:
            sess.close()
        out = {}
        for name, ps in parts.items():
            X = np.concatenate(ps) if ps else np.zeros((0, 0))
            if X.shape[0] > self.options.max_rows:
                X = X[np.linspace(0, X.shape[0] - 1, self.options.max_rows).astype(int)]
            out[name] = X
        return out
