"""merge-conv1x1: a Conv directly followed by a 1x1 Conv (or a 1x1 Conv followed by a Conv) becomes one Conv.

kxk then 1x1 (the 1x1 has stride 1, no padding, group 1)::

    y = W2 * (W1 * x + b1) + b2          W2: [C2, C1, 1...], W1: [C1, Cin/g, k...]
      = (W2 . W1) * x + (W2 b1 + b2)
    W'[c2, ci, k] = sum_c1 W2[c2, c1] * W1dense[c1, ci, k],    b' = W2 b1 + b2

The merged conv keeps the first conv's stride, padding and dilation.  A grouped or depthwise first
conv becomes dense (``W1dense`` is block-diagonal in (c1, ci)), which can raise the work a lot: per
output pixel the original costs ``C1*Cin/g*K + C2*C1`` multiply-adds and the merged ``C2*Cin*K``.
``max-flops-growth`` bounds merged/original (default 2.0); beyond it the pair is left with a
remark saying by how much it would grow.  Merging removes one activation quantization point (and
one rounding) per pair, which is why it is worth some extra work.

1x1 then kxk (the 1x1 has stride 1, no padding, group 1)::

    W'[c2, ci, k] = sum_c1 W2dense[c2, c1, k] * W1[c1, ci],   b' = b2 + sum_{c1,k} W2dense[c2, c1, k] * b1[c1]

This is exact only when the kxk conv has no zero padding or b1 is zero (padding would otherwise see
b1 where the merged conv sees 0); other cases are refused with a remark.

In both orders the intermediate tensor must have exactly one consumer and both weights must be
constants; the pass repeats until no pair is left, so chains collapse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import Namer
from qcompiler.ir.query import const_value, is_graph_output, subgraph_referenced_names
from qcompiler.pm import Pass, PassResult, option

from qcompiler.ir.layers import LayerGeometry, LayerKind
from qcompiler.quant.floattype import in_fp32

from ._layers import conv_geometry


def _dense(W: np.ndarray, group: int) -> np.ndarray:
    """[C, Cin/g, k...] -> block-diagonal dense [C, Cin, k...]."""
    if group == 1:
        return W
    c, cin_g = W.shape[0], W.shape[1]
    cout_g = c // group
    out = np.zeros((c, cin_g * group) + W.shape[2:], dtype=W.dtype)
    for g in range(group):
        out[g * cout_g:(g + 1) * cout_g, g * cin_g:(g + 1) * cin_g] = W[g * cout_g:(g + 1) * cout_g]
    return out


def _bias(node: gs.Node, channels: int, dtype) -> np.ndarray | None:
    if len(node.inputs) > 2 and node.inputs[2].name:
        b = const_value(node.inputs[2])
        return None if b is None else b.astype(np.float64).reshape(-1)
    return np.zeros(channels, np.float64)


class MergeConv1x1(Pass["MergeConv1x1.Options"]):
    """Merge a Conv with an adjacent 1x1 Conv into a single Conv."""

    name = "merge-conv1x1"
    invalidates = frozenset({"calibrated"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        max_flops_growth: float = option(2.0, "largest allowed ratio of merged to original multiply-adds per output "
                                              "pixel (grouped/depthwise first convs become dense)", min=0.0)
        order: str = option("both", "which pairs to merge: kxk followed by 1x1, 1x1 followed by kxk, or both",
                            choices=("both", "kxk-1x1", "1x1-kxk"))

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        names = Namer(graph)
        stats: dict[str, int] = {}
        reported: set[str] = set()
        protected = subgraph_referenced_names(graph)

        def bump(k: str) -> None:
            stats[k] = stats.get(k, 0) + 1

        while True:
            merged_any = False
            for c1 in [n for n in graph.nodes if n.op == "Conv"]:
                if not c1.outputs:
                    continue
                y1 = c1.outputs[0]
                if len(y1.outputs) != 1 or is_graph_output(graph, y1) or y1.name in protected:
                    continue
                c2 = y1.outputs[0]
                if c2.op != "Conv" or c2.inputs[0] is not y1:
                    continue
                key = f"{c1.name}->{c2.name}"
                why = self._try(graph, c1, c2, names)
                if why is None:
                    ctx.remark("QC301", f"merge-conv1x1 merged {c1.name} and {c2.name}", node=c2.name)
                    bump("merged")
                    merged_any = True
                    break  # the node list changed; rescan
                if why and key not in reported:
                    reported.add(key)
                    ctx.remark("QC302", f"merge-conv1x1 skipped {c1.name} -> {c2.name}: {why}", node=c2.name)
                    bump("skipped")
            if not merged_any:
                break
        if stats.get("merged"):
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(bool(stats.get("merged")), stats)

    def _try(self, graph, c1: gs.Node, c2: gs.Node, names: Namer) -> str | None:
        W1 = const_value(c1.inputs[1])
        W2 = const_value(c2.inputs[1])
        if W1 is None or W2 is None:
            return ""  # not a candidate: silently skip (no constant weights, nothing to say)
        if W1.ndim != W2.ndim:
            return "different conv ranks"
        g1, g2 = conv_geometry(c1, W1), conv_geometry(c2, W2)
        opt = self.options.order
        first_1x1 = g1.is_1x1 and g1.unit_stride and g1.no_padding and g1.group == 1
        second_1x1 = g2.is_1x1 and g2.unit_stride and g2.no_padding and g2.group == 1
        if second_1x1 and opt in ("both", "kxk-1x1"):
            return self._merge_kxk_1x1(graph, c1, c2, W1, W2, g1, names)
        if first_1x1 and opt in ("both", "1x1-kxk"):
            return self._merge_1x1_kxk(graph, c1, c2, W1, W2, g2, names)
        if g2.is_1x1 and not second_1x1:
            return "the 1x1 conv has a stride, padding or groups"
        if g1.is_1x1 and not first_1x1:
            return "the 1x1 conv has a stride, padding or groups"
        return ""

    def _growth(self, original: float, merged: float) -> str | None:
        ratio = merged / max(original, 1.0)
        if ratio > self.options.max_flops_growth:
            return (f"the merged conv would need {ratio:.2f}x the multiply-adds "
                    f"(max-flops-growth={self.options.max_flops_growth:g})")
        return None

    def _merge_kxk_1x1(self, graph, c1, c2, W1, W2, g1, names) -> str | None:
        l1 = LayerGeometry(LayerKind.CONV, W1.shape, g1.group)
        l2 = LayerGeometry(LayerKind.CONV, W2.shape, 1)
        C1, C2, cin, cin_g = l1.out_channels, l2.out_channels, l1.in_channels, W1.shape[l1.in_axis]
        if l2.in_channels != C1:
            return "channel counts do not line up"
        K = int(np.prod(l1.kernel))
        why = self._growth(C1 * cin_g * K + C2 * C1, C2 * cin * K)
        if why:
            return why
        b1 = _bias(c1, C1, W1.dtype)
        b2 = _bias(c2, C2, W2.dtype)
        if b1 is None or b2 is None:
            return "a bias is not a constant"
        dense = _dense(W1.astype(np.float64), g1.group)
        w2 = W2.astype(np.float64).reshape(C2, C1)
        W = np.tensordot(w2, dense, axes=([1], [0])).astype(W1.dtype)
        b = (w2 @ b1 + b2).astype(W1.dtype)
        self._rewire(graph, keep=c1, drop=c2, W=W, b=b, names=names, group=1)
        return None

    def _merge_1x1_kxk(self, graph, c1, c2, W1, W2, g2, names) -> str | None:
        l1 = LayerGeometry(LayerKind.CONV, W1.shape, 1)
        l2 = LayerGeometry(LayerKind.CONV, W2.shape, g2.group)
        C1, cin, C2, c1_g = l1.out_channels, l1.in_channels, l2.out_channels, W2.shape[l2.in_axis]
        if l2.in_channels != C1:
            return "channel counts do not line up"
        K = int(np.prod(l2.kernel))
        stride = int(np.prod(g2.strides))
        why = self._growth(C1 * cin * stride + C2 * c1_g * K, C2 * cin * K)
        if why:
            return why
        b1 = _bias(c1, C1, W1.dtype)
        b2 = _bias(c2, C2, W2.dtype)
        if b1 is None or b2 is None:
            return "a bias is not a constant"
        if g2.pads_begin is None or (not g2.no_padding and np.any(b1 != 0)):
            return ("the kxk conv pads with zeros, so the 1x1 conv's non-zero bias would differ at the borders "
                    "(exact only without padding or with a zero bias)")
        w1 = W1.astype(np.float64).reshape(C1, cin)
        dense2 = _dense(W2.astype(np.float64), g2.group)  # [C2, C1, k...]
        W = np.tensordot(dense2, w1, axes=([1], [0]))  # [C2, k..., cin]
        W = np.moveaxis(W, -1, 1).astype(W1.dtype)
        b = (b2 + dense2.reshape(C2, C1, -1).sum(axis=2) @ b1).astype(W1.dtype)
        # keep the kxk conv (its stride/pads), reading x directly
        c2.inputs[0] = c1.inputs[0]
        self._set_weights(c2, W, b, names, group=1)
        c1.inputs.clear()
        c1.outputs.clear()
        return None

    def _rewire(self, graph, keep, drop, W, b, names, group) -> None:
        out = drop.outputs[0]
        self._set_weights(keep, W, b, names, group)
        keep.outputs[0] = out
        drop.inputs.clear()
        drop.outputs.clear()

    @staticmethod
    def _set_weights(node, W, b, names: Namer, group: int) -> None:
        wc = gs.Constant(names(node.name + "_merged_w"), np.ascontiguousarray(W))
        bc = gs.Constant(names(node.name + "_merged_b"), np.ascontiguousarray(b))
        node.inputs[1] = wc
        if len(node.inputs) > 2:
            node.inputs[2] = bc
        else:
            node.inputs.append(bc)
        node.attrs["group"] = group
        if "kernel_shape" in node.attrs:
            node.attrs["kernel_shape"] = list(W.shape[2:])
