"""fold-bn: fold inference BatchNormalization into the Conv / ConvTranspose / Gemm / MatMul before it.

BatchNormalization computes, per channel c (axis 1 of its input)::

    y = gamma_c * (x - mean_c) / sqrt(var_c + eps) + beta_c  =  s_c * x + t_c
    s_c = gamma_c / sqrt(var_c + eps),   t_c = beta_c - s_c * mean_c

When x is the output of a weighted layer, scaling output channel c of that layer by s_c and adding
t_c to its bias gives the same result::

    W'[out c] = s_c * W[out c]      b'_c = s_c * b_c + t_c

Output channel c is W[c] for Conv ([Cout, Cin/g, k...]); for ConvTranspose ([Cin, Cout/g, k...])
it is column c % (Cout/g) of the rows of group c // (Cout/g); for Gemm it is column c of B
(row c when transB=1; C becomes beta*s*C + t and beta 1); for MatMul with a constant 2-D B it is
column c of B, when the product is 2-D (BatchNormalization's channel axis is then the last axis),
and the bias goes into an Add after the MatMul.

Guards (each refusal is a QC302 remark naming the node and the reason): the BatchNormalization is
in inference form (one output, training_mode 0) with constant statistics; its input is produced by
the layer and read by nothing else; the layer's weight is a constant read only by it (otherwise
``copy-shared=true`` gives the layer a private copy).

A BatchNormalization with no foldable producer becomes ``Mul(x, s) + t`` with per-channel
constants (``unfoldable=mul-add``, the default) or is left alone (``unfoldable=keep``).

The statistics of every folded BatchNormalization are left in ``ctx.state`` as ``BatchNormStats``
(fact ``bn-stats``; keyed by the layer's output tensor: the post-BN mean ``beta`` and std ``|gamma|``) for
the data-free bias correction and absorb-bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import Namer, replace_all_uses
from qcompiler.ir.query import attr, const_value, is_graph_output, producer, rank, subgraph_referenced_names
from qcompiler.ir.shapes import infer_shapes
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.state import BatchNormStats, BNRecord
from qcompiler.quant.floattype import in_fp32

from ._layers import WEIGHTED_OPS, Layer, LayerKind, NotALayer, weight_exclusive


@dataclass(frozen=True)
class _Skip:
    """Why a BatchNormalization is not folded; ``kind`` names its counter (``skipped.<kind>``)."""

    kind: str  # no_producer | shared_weight
    message: str


class FoldBN(Pass["FoldBN.Options"]):
    """Fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul."""

    name = "fold-bn"
    provides = frozenset({"bn-folded", "bn-stats"})
    invalidates = frozenset({"calibrated"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        unfoldable: str = option("mul-add", "what to do with a BatchNormalization that has no foldable producer: "
                                             "rewrite it to per-channel Mul+Add, or keep it",
                                 choices=("mul-add", "keep"))
        copy_shared: bool = option(False, "when the producer's weight is shared with another node, give the "
                                          "producer its own copy (grows the model) instead of refusing")

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        names = Namer(graph)
        protected = subgraph_referenced_names(graph)
        stats: dict[str, int] = {}
        bn_stats = ctx.state.get(BatchNormStats) or BatchNormStats()

        def bump(key: str) -> None:
            stats[key] = stats.get(key, 0) + 1

        inferred = shapes_changed = False

        bns = [n for n in graph.nodes if n.op == "BatchNormalization"]
        for bn in bns:
            reason = self._check_bn(bn)
            if reason:
                ctx.remark("QC302", f"fold-bn skipped {bn.name}: {reason}", node=bn.name)
                bump("skipped.not_inference")
                continue
            s, t, gamma, beta = self._affine(bn)
            x = bn.inputs[0]
            prod = producer(x)
            found = self._foldable(graph, prod, x, bn, protected, self.options.copy_shared)
            if isinstance(found, Layer):
                assert prod is not None  # a Layer is only ever found at a producer
                if found.out_channels != s.size:
                    found = _Skip("no_producer", f"{prod.name} has {found.out_channels} output channels, the "
                                                 f"BatchNormalization {s.size}")
                else:
                    layer = found
                    layer.scale_out(s)
                    layer.add_bias(t.astype(np.float64))
                    layer.commit(graph, names)
                    out_t = layer.bias_node.outputs[0] if layer.bias_node is not None else prod.outputs[0]
                    replace_all_uses(graph, bn.outputs[0], out_t)
                    bn.inputs.clear()
                    bn.outputs.clear()
                    bn_stats = bn_stats.with_record(out_t.name, BNRecord(prod.name, beta, np.abs(gamma)))
                    ctx.remark("QC301", f"fold-bn folded {bn.name} into {prod.name}", node=prod.name)
                    bump("folded")
                    continue
            why = found.message
            bump(f"skipped.{found.kind}")
            if self.options.unfoldable == "keep":
                ctx.remark("QC302", f"fold-bn left {bn.name}: {why}", node=bn.name)
                continue
            r = rank(x)
            if r is None and not inferred:
                inferred = True
                shapes_changed = infer_shapes(graph) > 0
                r = rank(x)
            if r is None:
                ctx.remark("QC302", f"fold-bn left {bn.name}: {why}; its input rank is unknown so it cannot be "
                                    "rewritten to Mul+Add either (run infer-shapes first)", node=bn.name)
                continue
            self._to_mul_add(graph, bn, s, t, r, names)
            ctx.remark("QC302", f"fold-bn rewrote {bn.name} to Mul+Add: {why}", node=bn.name)
            bump("mul_add")
        ctx.state.put(bn_stats)
        n_bn = len(bns)
        if n_bn and not stats.get("folded"):
            kinds = ", ".join(f"{v} {k.split('.')[-1].replace('_', ' ')}" for k, v in sorted(stats.items()))
            ctx.warning("QC302", f"fold-bn folded none of the {n_bn} BatchNormalization node(s) ({kinds}); -v "
                                 "names each one and why")
        if stats.get("folded") or stats.get("mul_add"):
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(bool(stats.get("folded") or stats.get("mul_add") or shapes_changed), stats)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_bn(bn: gs.Node) -> str | None:
        if int(attr(bn, "training_mode", 0)):
            return "training_mode=1"
        if len(bn.outputs) > 1 and any(o.name and o.outputs for o in bn.outputs[1:]):
            return "its running-statistics outputs are used (training form)"
        if len(bn.inputs) != 5:
            return f"expected 5 inputs, found {len(bn.inputs)}"
        for i, what in zip(range(1, 5), ("scale", "bias", "mean", "var")):
            v = const_value(bn.inputs[i])
            if v is None:
                return f"its {what} '{bn.inputs[i].name}' is not a constant"
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                return f"its {what} '{bn.inputs[i].name}' holds NaN or Inf"
        eps = float(attr(bn, "epsilon", 1e-5))
        if not np.isfinite(eps) or eps < 0:
            return f"epsilon={eps} is not a finite non-negative number"
        return None

    @staticmethod
    def _affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (np.asarray(const_value(bn.inputs[i]), np.float64).reshape(-1) for i in range(1, 5))
        eps = float(attr(bn, "epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        t = beta - s * mean
        return s, t, gamma, beta

    @staticmethod
    def _foldable(graph, prod, x, bn, protected, copy_shared: bool) -> "Layer | _Skip":
        """The layer to fold into, or why there is none."""
        if prod is None:
            return _Skip("no_producer", f"its input '{x.name}' is not produced by a layer")
        if prod.op not in WEIGHTED_OPS:
            return _Skip("no_producer", f"its producer {prod.name} is a {prod.op}, not Conv/ConvTranspose/Gemm/MatMul")
        if len(x.outputs) != 1 or is_graph_output(graph, x) or x.name in protected:
            return _Skip("no_producer", f"the output of {prod.name} has other consumers besides {bn.name}")
        try:
            layer = Layer.of(prod)
        except NotALayer as exc:
            return _Skip("no_producer", f"{prod.name}: {exc.reason}")
        if layer.kind is LayerKind.MATMUL:
            r = rank(x)
            if r != 2:
                return _Skip("no_producer", f"the MatMul output has rank {r if r is not None else 'unknown'}; "
                                            "BatchNormalization's channel axis is then not the MatMul's output axis")
        if not copy_shared and not weight_exclusive(graph, prod, 1, protected):
            return _Skip("shared_weight", f"weight '{prod.inputs[1].name}' of {prod.name} is shared with another "
                                          "node (copy-shared=true gives the layer its own copy)")
        return layer

    @staticmethod
    def _to_mul_add(graph, bn, s, t, r, names: Namer) -> None:
        shape = (1, -1) + (1,) * max(0, r - 2)
        x, y = bn.inputs[0], bn.outputs[0]
        dtype = x.dtype if x.dtype is not None else np.float32
        sc = gs.Constant(names(bn.name + "_scale"), s.reshape(shape).astype(dtype))
        sh = gs.Constant(names(bn.name + "_shift"), t.reshape(shape).astype(dtype))
        mid = gs.Variable(names(bn.name + "_mul"), dtype=dtype, shape=x.shape)
        idx = graph.nodes.index(bn)
        mul = gs.Node("Mul", names(bn.name + "_mul"), inputs=[x, sc], outputs=[mid])
        add = gs.Node("Add", names(bn.name + "_add"), inputs=[mid, sh], outputs=[y])
        bn.inputs.clear()
        bn.outputs.clear()
        graph.nodes[idx:idx + 1] = [mul, add]
