"""Consecutive weighted layers joined by positively homogeneous ops (for cle and absorb-bias).

``f`` is positively homogeneous per channel when ``f(x / s) = f(x) / s`` for every per-channel
``s > 0``.  Relu, LeakyRelu, PRelu (any slope shape), MaxPool, AveragePool, Identity and inference
Dropout are; ``Min(x, c)`` / ``Max(x, c)`` with a constant ``c`` are too once ``c`` is rescaled with
the channel (``min(x/s, c/s) = min(x, c)/s``).  ``Clip(x, 0, M)`` (ReLU6) is not, but it equals
``Min(Relu(x), M)``, which is: :func:`convert_clip` makes that exact rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import Namer
from qcompiler.ir.query import const_value, is_graph_output, rank, subgraph_referenced_names

from ._layers import WEIGHTED_OPS, Layer, LayerKind, NotALayer

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "Identity", "Dropout"}
RESCALABLE = {"Min", "Max"}


@dataclass
class Pair:
    l1: gs.Node
    l2: gs.Node
    ops: list[gs.Node] = field(default_factory=list)  # between l1 (or its bias Add) and l2
    channel_rank: int = 4  # rank of the intermediate tensor (for per-channel constant shapes)

    @property
    def only_relu(self) -> bool:
        return all(o.op in ("Relu", "Identity", "Dropout") for o in self.ops)

    @property
    def no_activation(self) -> bool:
        return all(o.op in ("Identity", "Dropout") for o in self.ops)


def clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """(min, max) of a Clip, or None when a bound is not a constant."""
    lo, hi = -np.inf, np.inf
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        lo = float(node.attrs.get("min", lo))
        hi = float(node.attrs.get("max", hi))
        return lo, hi
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = const_value(node.inputs[1])
        if v is None:
            return None
        lo = float(np.asarray(v).reshape(-1)[0])
    if len(node.inputs) > 2 and node.inputs[2].name:
        v = const_value(node.inputs[2])
        if v is None:
            return None
        hi = float(np.asarray(v).reshape(-1)[0])
    return lo, hi


def per_channel_operand(node: gs.Node, channels: int, r: int, last_axis: bool) -> int | None:
    """Input index of the constant operand of a Min/Max when it is a scalar or a per-channel constant
    that broadcasts along the channel axis (axis 1 for convs, the last axis for Gemm/MatMul)."""
    if len(node.inputs) != 2:
        return None
    for i in (0, 1):
        c = const_value(node.inputs[i])
        if c is None or const_value(node.inputs[1 - i]) is not None:
            continue
        if c.size == 1:
            return i
        if c.size != channels or c.ndim > r:
            return None
        axis_from_end = 0 if last_axis else r - 2
        dims = list(c.shape)
        k = len(dims) - 1 - axis_from_end
        if 0 <= k < len(dims) and dims[k] == channels:
            return i
        return None
    return None


def per_channel_values(node: gs.Node, index: int, channels: int) -> np.ndarray:
    c = np.asarray(const_value(node.inputs[index]), dtype=np.float64).reshape(-1)
    return np.full(channels, c[0]) if c.size == 1 else c.copy()


def find_pairs(graph: gs.Graph, *, clip: str = "rescale",
               for_bias: bool = False) -> tuple[list[Pair], list[tuple[gs.Node, str]]]:
    """Layer pairs (l1 -> homogeneous ops -> l2) and, for layers that start no pair, why.

    ``clip``: how Clip is treated: ``rescale`` (convertible, exact), ``relu`` (convertible, changes
    semantics), ``barrier``.  ``for_bias``: only Relu between the layers (absorb-bias)."""
    protected = subgraph_referenced_names(graph)
    pairs: list[Pair] = []
    skipped: list[tuple[gs.Node, str]] = []
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS:
            continue
        try:
            layer = Layer.of(node, with_matmul_bias=True, graph=graph)
        except NotALayer:
            continue
        t = layer.bias_node.outputs[0] if layer.bias_node is not None else node.outputs[0]
        ops: list[gs.Node] = []
        reason = None
        while True:
            if is_graph_output(graph, t) or t.name in protected:
                reason = f"'{t.name}' is a graph output"
                break
            if len(t.outputs) != 1:
                users = ", ".join(sorted(u.name for u in t.outputs)) or "nothing"
                reason = f"'{t.name}' has {len(t.outputs)} consumers ({users})"
                break
            n = t.outputs[0]
            if n.op in WEIGHTED_OPS and n.inputs and n.inputs[0] is t:
                try:
                    l2 = Layer.of(n, with_matmul_bias=True, graph=graph)
                except NotALayer as exc:
                    reason = f"next layer {n.name}: {exc.reason}"
                    break
                if l2.in_channels != layer.out_channels:
                    reason = f"{n.name} reads {l2.in_channels} channels, {node.name} writes {layer.out_channels}"
                elif layer.kind.is_dense != l2.kind.is_dense:
                    reason = f"{node.name} and {n.name} put channels on different axes"
                elif l2.kind is LayerKind.CONV_TRANSPOSE and for_bias:
                    reason = f"{n.name} is a ConvTranspose"
                else:
                    r = rank(t)
                    default_rank = 2 if layer.kind.is_dense else layer.W.ndim
                    pairs.append(Pair(node, n, ops, r if r is not None else default_rank))
                break
            if n.op in HOMOGENEOUS and n.inputs and n.inputs[0] is t and n.outputs:
                if n.op == "Dropout" and (len(n.outputs) > 1 and n.outputs[1].outputs):
                    reason = f"{n.name} is a training Dropout"
                    break
                if for_bias and n.op not in ("Relu", "Identity", "Dropout"):
                    reason = f"{n.name} ({n.op}) is not a Relu"
                    break
                ops.append(n)
                t = n.outputs[0]
                continue
            if n.op in RESCALABLE and not for_bias and len(n.inputs) == 2 and any(i is t for i in n.inputs):
                r_t = rank(t)
                r_t = r_t if r_t is not None else (2 if layer.kind.is_dense else layer.W.ndim)
                if per_channel_operand(n, layer.out_channels, r_t, layer.kind.is_dense) is None:
                    reason = f"{n.name} ({n.op}) has an operand that is not a per-channel constant"
                    break
                ops.append(n)
                t = n.outputs[0]
                continue
            if n.op == "Clip" and not for_bias:
                b = clip_bounds(n)
                if b is None:
                    reason = f"{n.name}: Clip bounds are not constants"
                    break
                lo, hi = b
                if lo == 0.0 and hi == np.inf:
                    ops.append(n)
                    t = n.outputs[0]
                    continue
                if clip == "barrier":
                    reason = f"{n.name} is a Clip [{lo:g}, {hi:g}] (clip=barrier)"
                    break
                if lo in (0.0, -np.inf) and (clip == "rescale" or (clip == "relu" and lo == 0.0)):
                    ops.append(n)
                    t = n.outputs[0]
                    continue
                reason = f"{n.name} is a Clip [{lo:g}, {hi:g}] that is not ReLU-like"
                break
            reason = f"'{t.name}' feeds {n.name} ({n.op}), which is not positively homogeneous"
            break
        if reason:
            skipped.append((node, reason))
    return pairs, skipped


def chain_clip_bounds(node: gs.Node) -> tuple[float, float]:
    """(min, max) of a Clip in a pair's chain (the chain takes only Clips with constant bounds)."""
    bounds = clip_bounds(node)
    assert bounds is not None, f"{node.name}: a Clip with a non-constant bound in a pair's chain"
    return bounds


def convert_clip(graph: gs.Graph, clip_node: gs.Node, channels: int, r: int, names: Namer,
                 mode: str) -> list[gs.Node]:
    """Rewrite a Clip in a pair's chain.  ``rescale``: Clip(x, lo, M) -> [Relu] + Min(x, M per channel)
    (exact); ``relu``: Clip(x, 0, M) -> Relu (drops the upper bound: changes the model).
    Returns the nodes that replace it (in order)."""
    lo, hi = chain_clip_bounds(clip_node)
    x, y = clip_node.inputs[0], clip_node.outputs[0]
    idx = graph.nodes.index(clip_node)
    new: list[gs.Node] = []
    dtype = x.dtype if x.dtype is not None else np.float32
    if lo == 0.0 and (hi == np.inf or mode == "relu"):
        new = [gs.Node("Relu", names(clip_node.name + "_relu"), inputs=[x], outputs=[y])]
    else:
        cur = x
        if lo == 0.0:
            mid = gs.Variable(names(clip_node.name + "_relu_out"), dtype=dtype, shape=x.shape)
            new.append(gs.Node("Relu", names(clip_node.name + "_relu"), inputs=[cur], outputs=[mid]))
            cur = mid
        c = gs.Constant(names(clip_node.name + "_max"), np.full(channel_const_shape(channels, r), hi, dtype=dtype))
        new.append(gs.Node("Min", names(clip_node.name + "_min"), inputs=[cur, c], outputs=[y]))
    clip_node.inputs.clear()
    clip_node.outputs.clear()
    graph.nodes[idx:idx + 1] = new
    return new


def channel_const_shape(channels: int, r: int) -> tuple[int, ...]:
    return (channels,) + (1,) * max(0, r - 2) if r > 2 else (channels,)
