"""fold-residual: ``y = Conv(x) + x`` becomes one Conv whose kernel has the identity added at its centre.

For a stride-1 conv whose output has the input's size and whose input and output channel counts are
equal, the identity map is itself a convolution: a kernel that is 1 at the centre tap of channel
pair (c, c) and 0 elsewhere.  With pads ``p_b`` at the start of a spatial axis and dilation ``d``,
output position ``o`` reads input ``o - p_b + j*d`` at tap ``j``, so the centre tap is ``j = p_b / d``
(it must be an integer inside the kernel).  Hence::

    W'[c, c mod (Cin/g), centre] = W[c, c mod (Cin/g), centre] + 1      (per group for grouped convs)

and the Add disappears.  Either input order of the Add is accepted.  Conditions (each refusal is a
remark): the conv reads exactly the tensor the Add adds, its output feeds only the Add, strides are
1, the output has the input's spatial size (``p_b + p_e = d*(k-1)`` per axis), Cout == Cin, and the
weight is a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import Namer
from qcompiler.ir.query import const_value, is_graph_output, producer, subgraph_referenced_names
from qcompiler.pm import Pass, PassResult

from qcompiler.ir.layers import LayerGeometry, LayerKind
from qcompiler.quant.floattype import in_fp32

from ._layers import conv_geometry


class FoldResidual(Pass["FoldResidual.Options"]):
    """Fold y = Conv(x) + x into the conv kernel (identity added at the kernel centre)."""

    name = "fold-residual"
    invalidates = frozenset({"calibrated"})
    fp32_preserving = True

    @dataclass(frozen=True)
    class Options:
        pass

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        names = Namer(graph)
        protected = subgraph_referenced_names(graph)
        stats: dict[str, int] = {}
        for add in [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2]:
            if not add.outputs:
                continue
            done = False
            reason = None
            for conv_in, other in ((0, 1), (1, 0)):
                t = add.inputs[conv_in]
                conv = producer(t)
                if conv is None or conv.op != "Conv" or conv.inputs[0] is not add.inputs[other]:
                    continue
                reason = self._check(graph, conv, t, protected)
                if reason is None:
                    self._fold(graph, conv, add, names)
                    ctx.remark("QC301", f"fold-residual folded {add.name} into {conv.name}", node=conv.name)
                    stats["folded"] = stats.get("folded", 0) + 1
                    done = True
                    break
            if not done and reason:
                ctx.remark("QC302", f"fold-residual skipped {add.name}: {reason}", node=add.name)
                stats["skipped"] = stats.get("skipped", 0) + 1
        if stats.get("folded"):
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(bool(stats.get("folded")), stats)

    @staticmethod
    def _centre(conv: gs.Node, W: np.ndarray) -> tuple[int, ...] | str:
        g = conv_geometry(conv, W)
        if not g.unit_stride:
            return f"{conv.name} has strides {list(g.strides)} (the residual needs stride 1)"
        if g.pads_begin is None or g.pads_end is None:
            return "padding depends on the input size"
        centre = []
        for k, d, pb, pe in zip(g.kernel, g.dilations, g.pads_begin, g.pads_end):
            if pb + pe != d * (k - 1):
                return f"{conv.name} changes the spatial size (pads {pb}+{pe} for kernel {k}, dilation {d})"
            if pb % d:
                return f"{conv.name}'s padding does not align with a kernel tap"
            centre.append(pb // d)
        return tuple(centre)

    def _check(self, graph, conv: gs.Node, t: gs.Tensor, protected) -> str | None:
        if len(t.outputs) != 1 or is_graph_output(graph, t) or t.name in protected:
            return f"the output of {conv.name} has other consumers"
        W = const_value(conv.inputs[1])
        if W is None:
            return f"the weight of {conv.name} is not a constant"
        geo = LayerGeometry(LayerKind.CONV, W.shape, int(conv.attrs.get("group", 1)))
        if geo.out_channels != geo.in_channels:
            return f"{conv.name} maps {geo.in_channels} channels to {geo.out_channels} (needs Cout == Cin)"
        c = self._centre(conv, W)
        if isinstance(c, str):
            return c
        return None

    def _fold(self, graph, conv: gs.Node, add: gs.Node, names: Namer) -> None:
        W = const_value(conv.inputs[1])
        assert W is not None  # _check refused layers without a constant weight
        centre = self._centre(conv, W)
        assert not isinstance(centre, str)  # and those without a centre tap
        cout = W.shape[0]
        cin_g = W.shape[1]
        new = W.copy()
        for c in range(cout):
            new[(c, c % cin_g) + centre] += 1
        conv.inputs[1] = gs.Constant(names(conv.name + "_res_w"), new)
        conv.outputs[0] = add.outputs[0]
        add.inputs.clear()
        add.outputs.clear()
