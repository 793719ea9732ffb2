"""smooth-quant: move activation outliers into the weights of the layers that read them (Xiao et al. 2023).

Transformers have a few activation channels (input features of a linear layer) far larger than the rest, which
ruins per-tensor activation quantization.  For a layer ``Y = X W`` and a per-input-channel factor ``s_j > 0``::

    Y = (X diag(1/s)) (diag(s) W),     s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

moves difficulty from X to W (quantized per output channel, which absorbs it well).  A site is an activation
tensor X read by at least one MatMul/Gemm with a constant weight (``layers=all``: Conv too, channels on axis
1).  Every such layer takes ``diag(s) W`` (``max|W_j|`` is over all of them).  The division by ``s``:

* is folded into the producer when every other reader of X is shape-only (``Shape``, ``Size``) and the
  producer can scale its output per channel: a LayerNormalization (``gamma/s, beta/s``; pre-LN encoders), or a
  Conv/Gemm/MatMul(+bias) whose output is X or goes through a Relu to X (its weights and bias take 1/s);
* otherwise a ``Mul(X, 1/s)`` is inserted in front of the layers only, and the other readers (the residual Add
  of a post-LN encoder) keep reading X.  TensorRT fuses the Mul into the pointwise ops around it.

Both are exact in FP32.  ``min-ratio`` smooths only sites whose channel ranges are that uneven (largest
channel max over the median): the named pipelines run ``smooth-quant{min-ratio=8 quiet=true}``, which leaves
models without outlier channels untouched and says nothing when nothing qualifies.  Runs before
``calibrate``; it measures ``max|X_j|`` on the calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calib import CollectOptions, ObserverConfig, collect
from qcompiler.diagnostics import CalibrationError
from qcompiler.ir.edit import Namer
from qcompiler.ir.graph import copy_graph
from qcompiler.ir.query import const_value, is_graph_output, producer, subgraph_referenced_names
from qcompiler.ir.shapes import infer_shapes
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.floattype import in_fp32

from ._layers import Layer

SHAPE_ONLY = ("Shape", "Size")


@dataclass
class _Site:
    x: gs.Tensor
    layers: list[gs.Node]
    absorb: gs.Node | None  # the LayerNormalization or layer that takes 1/s, else a Mul is inserted
    axis: int  # channel axis of X (-1 for MatMul/Gemm readers, 1 for Conv)
    rank: int = 0  # of X, when known (Conv sites)


def _absorbing_layer(graph: gs.Graph, x: gs.Tensor, axis: int) -> gs.Node | None:
    """The layer whose output channels can take 1/s exactly: X is its output (after its bias Add for a MatMul),
    or Relu of it (positive factors commute with Relu), read by nothing else."""
    y, p = x, producer(x)
    if p is not None and p.op == "Relu":
        y = p.inputs[0]
        if len(y.outputs) != 1 or is_graph_output(graph, y):
            return None
        p = producer(y)
    if p is not None and p.op == "Add":  # a MatMul's bias
        m = next((q for q in map(producer, p.inputs) if q is not None and q.op == "MatMul"), None)
        if m is None or len(m.outputs[0].outputs) != 1:
            return None
        p = m
    if p is None or p.op not in ("Conv", "Gemm", "MatMul") or Layer.refusal(p) is not None:
        return None
    if (p.op == "Conv") != (axis == 1) or (p.op == "Conv" and int(p.attrs.get("group", 1)) != 1):
        return None
    return p


class SmoothQuant(Pass["SmoothQuant.Options"]):
    """SmoothQuant: migrate activation outliers of layer inputs into their weights (exact in FP32)."""

    name = "smooth-quant"
    invalidates = frozenset({"calibrated"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        alpha: float = option(0.5, "migration strength: 0 keeps activations, 1 moves everything into weights",
                              min=0.0, max=1.0)
        max_samples: int = option(128, "calibration samples used to measure max |X_j|", min=1)
        layers: str = option("matmul", "which readers take the factor: matmul (MatMul/Gemm) or all (Conv too)",
                             choices=("matmul", "all"))
        min_ratio: float = option(0.0, "smooth only sites whose largest channel max is at least this many times "
                                       "the median channel max (0: every site)", min=0.0)
        insert_mul: bool = option(True, "when the producer cannot take 1/s, insert a Mul before the layers")
        quiet: bool = option(False, "say nothing when no site qualifies (the named pipelines' automatic use)")

    def _sites(self, graph: gs.Graph, ctx) -> list[_Site]:
        protected = subgraph_referenced_names(graph)
        self._ranks: dict[str, int] = {}
        if self.options.layers == "all":  # Conv sites need the rank of what they read (inferred on a copy)
            shaped = copy_graph(graph)
            infer_shapes(shaped)
            self._ranks = {n: len(t.shape) for n, t in shaped.tensors().items() if t.shape is not None}
        kinds = ("MatMul", "Gemm") + (("Conv",) if self.options.layers == "all" else ())
        sites = []
        for x in graph.tensors().values():
            if isinstance(x, gs.Constant) or not x.outputs or x.name in protected:
                continue
            users = list(x.outputs)
            layers = [u for u in users if u.op in kinds and u.inputs[0] is x and Layer.refusal(u) is None
                      and (u.op != "Conv" or int(u.attrs.get("group", 1)) == 1)]
            if not layers:
                continue
            convs = [u for u in layers if u.op == "Conv"]
            if convs and (len(convs) != len(layers) or self._ranks.get(x.name, 0) < 3):
                continue  # readers disagree on the channel axis, or the rank is unknown
            others = [u for u in users if u not in layers and u.op not in SHAPE_ONLY]
            p = producer(x)
            absorb = None
            if not others and not is_graph_output(graph, x) and p is not None and p.op == "LayerNormalization" \
                    and const_value(p.inputs[1]) is not None and not convs \
                    and (len(p.inputs) < 3 or not p.inputs[2].name or const_value(p.inputs[2]) is not None):
                absorb = p
            if absorb is None and not others and not is_graph_output(graph, x):
                absorb = _absorbing_layer(graph, x, 1 if convs else -1)
            if absorb is None and not self.options.insert_mul:
                if not self.options.quiet:
                    ctx.remark("QC302", f"smooth-quant skipped '{x.name}': its producer cannot take the factor and "
                                        "insert-mul=false", node=p.name if p is not None else None)
                continue
            sites.append(_Site(x, layers, absorb, 1 if convs else -1, self._ranks.get(x.name, 0)))
        return sites

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        sites = self._sites(graph, ctx)
        if not sites:
            if not self.options.quiet:
                ctx.warning("QC302", "smooth-quant found no site to smooth: no activation tensor is read by a "
                                     "MatMul/Gemm" + (" or Conv" if self.options.layers == "all" else "") +
                                     " with a constant weight")
            return PassResult(False, {"sites": 0})
        if ctx.calib_data is None:
            if self.options.quiet:  # the named pipelines' automatic use, calibrating on random data
                ctx.remark("QC302", "smooth-quant skipped: no calibration data to measure the channels with")
                return PassResult(False, {"sites": 0})
            raise CalibrationError("smooth-quant needs calibration data (max |X| per channel)", code="QC401",
                                   hint="pass --calib-data")
        data = ctx.calib_data.limited(self.options.max_samples)
        try:
            stats = collect(graph, {s.x.name: ObserverConfig("min_max", axis=s.axis) for s in sites}, data,
                            diagnostics=ctx.diagnostics, options=CollectOptions(threads=ctx.threads,
                                                                                  progress=ctx.progress_mode()))
        except CalibrationError as exc:
            if exc.diagnostic.code != "QC409":
                raise
            ctx.warning("QC302", f"smooth-quant skipped every site: {exc.diagnostic.message}",
                        node=exc.diagnostic.node)
            return PassResult(False, {"sites": 0})
        names = Namer(graph)
        done = inserted = 0
        alpha = self.options.alpha
        for site in sites:
            st = stats[site.x.name]
            if st.min is None or st.non_finite is not None:
                continue
            xmax = np.maximum(np.abs(np.asarray(st.min)), np.abs(np.asarray(st.max))).reshape(-1)
            ratio = float(xmax.max() / max(float(np.median(xmax)), 1e-12))
            if ratio < self.options.min_ratio:
                continue
            layers = [Layer.of(u) for u in site.layers]
            wmax = np.max(np.stack([lay.in_ranges() for lay in layers]), axis=0).astype(np.float64)
            if xmax.size != wmax.size:
                if not self.options.quiet:
                    ctx.remark("QC302", f"smooth-quant skipped '{site.x.name}': {xmax.size} activation channels vs "
                                        f"{wmax.size} weight rows")
                continue
            s = np.ones_like(xmax)
            ok = (xmax > 1e-12) & (wmax > 1e-12)
            s[ok] = xmax[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
            s = np.clip(s, 1e-5, 1e5)
            if float(np.max(np.abs(np.log(s)))) < 1e-3:
                continue  # already smooth (a second run): nothing to move
            how = self._divide(graph, site, s, names)
            inserted += how == "mul"
            for lay in layers:
                lay.scale_in(s)
                lay.commit(graph, names, bias=False)
            done += 1
            ctx.remark("QC301", f"smooth-quant rescaled '{site.x.name}' -> {', '.join(u.name for u in site.layers)} "
                                f"({'1/s in ' + site.absorb.name if site.absorb is not None else 'inserted Mul'}; "
                                f"channel range ratio {ratio:.1f}x -> "
                                f"{(xmax / s).max() / max(float(np.median(xmax / s)), 1e-12):.1f}x)",
                       node=site.layers[0].name)
        if done:
            graph.cleanup(remove_unused_graph_inputs=False)
        elif not self.options.quiet:
            ctx.warning("QC302", f"smooth-quant smoothed none of {len(sites)} site(s) (channel range ratios below "
                                 f"min-ratio={self.options.min_ratio:g}, or shapes that do not match)")
        return PassResult(done > 0, {"sites": done, "inserted_mul": inserted})

    @staticmethod
    def _divide(graph: gs.Graph, site: _Site, s: np.ndarray, names: Namer) -> str:
        """Divide X by s: in its LayerNormalization, or with a Mul the layers read instead of X."""
        ln = site.absorb
        if ln is not None and ln.op != "LayerNormalization":
            layer = Layer.of(ln, with_matmul_bias=True, graph=graph)
            layer.scale_out(1.0 / s)
            layer.commit(graph, names)
            return "layer"
        if ln is not None:
            gamma = np.asarray(const_value(ln.inputs[1]), np.float64)
            ln.inputs[1] = gs.Constant(names(ln.name + "_scale_smoothed"), (gamma / s).astype(np.float32))
            if len(ln.inputs) > 2 and ln.inputs[2].name:
                beta = np.asarray(const_value(ln.inputs[2]), np.float64)
                ln.inputs[2] = gs.Constant(names(ln.name + "_bias_smoothed"), (beta / s).astype(np.float32))
            return "ln"
        x = site.x
        shape = (-1,) if site.axis == -1 else (-1,) + (1,) * (site.rank - 2)
        inv = gs.Constant(names(x.name + "_smooth_inv"), (1.0 / s).reshape(shape).astype(np.float32))
        out = gs.Variable(names(x.name + "_smoothed"), dtype=x.dtype, shape=x.shape)
        mul = gs.Node("Mul", names(x.name + "_smooth"), inputs=[x, inv], outputs=[out])
        for u in site.layers:
            u.inputs[0] = out
        graph.nodes.append(mul)
        graph.toposort()
        return "mul"
