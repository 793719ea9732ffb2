"""Weighted layers seen per channel: the shared math of fold-bn, cle, absorb-bias, smooth-quant and
bias-correct.

Which axis is which comes from the layer's typed description (:class:`qcompiler.ir.layers.LayerGeometry`;
the table is there).  Which weight entries belong to an output channel ``o`` or an input channel ``i``:

==================  ===================  =================================  ================================
op                  weight layout        output channel o                   input channel i
==================  ===================  =================================  ================================
Conv (group g)      [Cout, Cin/g, k...]  W[o]                               W[rows of group(i), i % (Cin/g)]
ConvTranspose (g)   [Cin, Cout/g, k...]  W[rows of group(o), o % (Cout/g)]  W[i]
Gemm transB=0       B [K, N]             B[:, o]                            B[i, :]
Gemm transB=1       B [N, K]             B[o, :]                            B[:, i]
MatMul (2-D B)      B [K, N]             B[:, o]                            B[i, :]
==================  ===================  =================================  ================================

A layer never mutates arrays in place: it builds new ones and ``commit`` swaps fresh initializers
into the node, so a weight shared with another node is never changed behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.edit import Namer
from qcompiler.ir.layers import WEIGHTED_OPS, ConvAttrs, LayerGeometry, LayerKind
from qcompiler.ir.query import (attr, const_source, const_value, is_graph_output, produced_by,
                                subgraph_referenced_names)

__all__ = ["WEIGHTED_OPS", "LayerKind", "Layer", "NotALayer", "weight_exclusive", "input_response"]


def weight_exclusive(graph: gs.Graph, node: gs.Node, index: int, protected: set[str] | None = None) -> bool:
    """The weight input is a constant (an initializer or a Constant node's output, possibly behind Identity
    nodes) read only by ``node``."""
    t = node.inputs[index]
    chain = []
    while True:
        chain.append(t)
        if isinstance(t, gs.Constant):
            break
        prod = produced_by(t, "Identity")
        if prod is None:
            return False
        t = prod.inputs[0]
    protected = protected if protected is not None else subgraph_referenced_names(graph)
    for k, c in enumerate(chain):
        users = c.outputs
        if len(users) != 1 or is_graph_output(graph, c) or c.name in protected:
            return False
        if k == 0 and users[0] is not node:
            return False
    return True


def _absmax_last(a: np.ndarray) -> np.ndarray:
    """max |a| over the (short) last axis, as float64; a loop over taps beats numpy's small-axis reduce."""
    m = np.abs(a[..., 0])
    for k in range(1, a.shape[-1]):
        np.maximum(m, np.abs(a[..., k]), out=m)
    return m.astype(np.float64)


class NotALayer(Exception):
    """A node that cannot be seen as a weighted layer with constant float weights; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Layer:
    node: gs.Node
    geometry: LayerGeometry
    W: np.ndarray
    b: np.ndarray | None  # always shaped [Cout] when present (Gemm C normalised)
    gemm_beta: float = 1.0
    bias_node: gs.Node | None = None  # MatMul followed by Add(const): the Add carries the bias
    bias_index: int = -1  # input index of the bias constant in bias_node

    @property
    def kind(self) -> LayerKind:
        return self.geometry.kind

    @property
    def group(self) -> int:
        return self.geometry.group

    @property
    def trans_b(self) -> bool:
        return self.geometry.trans_b

    # -- construction ----------------------------------------------------------------------
    @staticmethod
    def of(node: gs.Node, *, with_matmul_bias: bool = False, graph: gs.Graph | None = None) -> "Layer":
        """A Layer view of ``node``; raises :class:`NotALayer` with the reason when it cannot be one."""
        kind = LayerKind.of(node.op)
        if kind is None:
            raise NotALayer(f"{node.op} is not a weighted op")
        if len(node.inputs) < 2:
            raise NotALayer("no weight input")
        W = const_value(node.inputs[1])
        if W is None:
            raise NotALayer(f"weight '{node.inputs[1].name}' is not a constant")
        if W.dtype != np.float32 and W.dtype != np.float64 and W.dtype != np.float16:
            raise NotALayer(f"weight '{node.inputs[1].name}' has dtype {W.dtype}, not float")
        b = None
        if kind.is_conv:
            if W.ndim < 3:
                raise NotALayer("weight rank < 3")
            geo = LayerGeometry.of(node, W.shape)
            if geo is None:
                raise NotALayer(f"group={attr(node, 'group', 1)} does not divide the {W.shape[0]} output channels")
            if len(node.inputs) > 2 and node.inputs[2].name:
                b = const_value(node.inputs[2])
                if b is None:
                    raise NotALayer(f"bias '{node.inputs[2].name}' is not a constant")
            return Layer(node, geo, W, None if b is None else b.astype(W.dtype).reshape(-1))
        if kind is LayerKind.GEMM:
            if W.ndim != 2:
                raise NotALayer("Gemm weight is not 2-D")
            if int(attr(node, "transA", 0)):
                raise NotALayer("Gemm with transA=1 (channels are not on the last axis)")
            geo = LayerGeometry.of(node, W.shape)
            assert geo is not None
            n = geo.out_channels
            beta = float(attr(node, "beta", 1.0))
            if len(node.inputs) > 2 and node.inputs[2].name:
                c = const_value(node.inputs[2])
                if c is None:
                    raise NotALayer(f"Gemm C '{node.inputs[2].name}' is not a constant")
                if c.size == 1:
                    b = np.full(n, float(c.reshape(-1)[0]) * beta, dtype=W.dtype)
                elif c.shape[-1] == n and c.size == n:
                    b = (c.reshape(-1) * beta).astype(W.dtype)
                else:
                    raise NotALayer(f"Gemm C of shape {list(c.shape)} is not per-output-channel")
            return Layer(node, geo, W, b, gemm_beta=beta)
        # MatMul: constant 2-D right operand
        if W.ndim != 2:
            raise NotALayer("MatMul weight is not a constant 2-D matrix")
        geo = LayerGeometry.of(node, W.shape)
        assert geo is not None
        layer = Layer(node, geo, W, None)
        if with_matmul_bias and graph is not None:
            out = node.outputs[0]
            if len(out.outputs) == 1 and not is_graph_output(graph, out) and out.outputs[0].op == "Add":
                add = out.outputs[0]
                other = 1 if add.inputs[0] is out else 0
                c = const_value(add.inputs[other])
                if c is not None and c.size == W.shape[1] and c.shape[-1] == W.shape[1]:
                    layer.b = c.reshape(-1).astype(W.dtype)
                    layer.bias_node, layer.bias_index = add, other
        return layer

    @staticmethod
    def refusal(node: gs.Node) -> str | None:
        """Why ``node`` cannot be seen as a Layer (None when it can)."""
        try:
            Layer.of(node)
        except NotALayer as exc:
            return exc.reason
        return None

    # -- channel geometry ------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.geometry.out_channels

    @property
    def in_channels(self) -> int:
        return self.geometry.in_channels

    def _out_major(self, W: np.ndarray) -> np.ndarray:
        """W rearranged as [Cout, everything feeding that output channel]."""
        if self.kind is LayerKind.CONV:
            return W.reshape(W.shape[0], -1)
        if self.kind is LayerKind.CONV_TRANSPOSE:
            g = self.group
            cin, cout_g = W.shape[0], W.shape[1]
            k = int(np.prod(W.shape[2:]))
            # [g, cin_g, cout_g, k] -> [g, cout_g, cin_g, k] -> [Cout, cin_g*k]
            return W.reshape(g, cin // g, cout_g, k).transpose(0, 2, 1, 3).reshape(g * cout_g, -1)
        if self.trans_b:
            return W
        return W.T

    def _in_major(self, W: np.ndarray) -> np.ndarray:
        """W rearranged as [Cin, everything reading that input channel]."""
        if self.kind is LayerKind.CONV:
            g = self.group
            cout, cin_g = W.shape[0], W.shape[1]
            k = int(np.prod(W.shape[2:]))
            # [g, cout_g, cin_g, k] -> [g, cin_g, cout_g, k] -> [Cin, cout_g*k]
            return W.reshape(g, cout // g, cin_g, k).transpose(0, 2, 1, 3).reshape(g * cin_g, -1)
        if self.kind is LayerKind.CONV_TRANSPOSE:
            return W.reshape(W.shape[0], -1)
        if self.trans_b:
            return W.T
        return W

    def out_ranges(self) -> np.ndarray:
        return np.max(np.abs(self._out_major(self.W)), axis=1)

    def in_ranges(self) -> np.ndarray:
        return np.max(np.abs(self._in_major(self.W)), axis=1)

    def out_shape_for_broadcast(self) -> tuple[int, ...]:
        """How a per-output-channel vector broadcasts against W."""
        nd = self.W.ndim
        if self.kind is LayerKind.CONV:
            return (-1,) + (1,) * (nd - 1)
        if self.trans_b:
            return (-1, 1)
        return (1, -1)

    def absmax_matrix(self) -> np.ndarray:
        """M[o, i] = max over kernel taps of |W| between output channel o and input channel i (dense:
        zero outside the group), in float64.  CLE sweeps on M instead of the weights."""
        W = self.W
        if self.kind is LayerKind.CONV:
            g, cout, cin_g = self.group, W.shape[0], W.shape[1]
            m = _absmax_last(W.reshape(cout, cin_g, -1))
            if g == 1:
                return m
            out = np.zeros((cout, cin_g * g))
            cout_g = cout // g
            for k in range(g):
                out[k * cout_g:(k + 1) * cout_g, k * cin_g:(k + 1) * cin_g] = m[k * cout_g:(k + 1) * cout_g]
            return out
        if self.kind is LayerKind.CONV_TRANSPOSE:
            g, cin, cout_g = self.group, W.shape[0], W.shape[1]
            m = _absmax_last(W.reshape(cin, cout_g, -1))  # [Cin, cout_g]
            out = np.zeros((cout_g * g, cin))
            cin_g = cin // g
            for k in range(g):
                out[k * cout_g:(k + 1) * cout_g, k * cin_g:(k + 1) * cin_g] = m[k * cin_g:(k + 1) * cin_g].T
            return out
        if self.trans_b:
            return np.abs(W).astype(np.float64)
        return np.abs(W).T.astype(np.float64)

    def _vec(self, s: np.ndarray, shape) -> np.ndarray:
        dtype = self.W.dtype if self.W.dtype in (np.float32, np.float64) else np.float64
        return np.asarray(s, dtype=np.float64).astype(dtype).reshape(shape)

    def scale_out(self, s: np.ndarray) -> None:
        """Multiply output channel o by s[o] (weights and bias)."""
        s = np.asarray(s, dtype=np.float64)
        if self.kind is LayerKind.CONV_TRANSPOSE:
            g = self.group
            cin, cout_g = self.W.shape[0], self.W.shape[1]
            rest = self.W.shape[2:]
            Wg = self.W.reshape((g, cin // g, cout_g) + rest) * self._vec(s, (g, 1, cout_g) + (1,) * len(rest))
            self.W = Wg.reshape(self.W.shape).astype(self.W.dtype, copy=False)
        else:
            self.W = (self.W * self._vec(s, self.out_shape_for_broadcast())).astype(self.W.dtype, copy=False)
        if self.b is not None:
            self.b = (self.b.astype(np.float64) * s).astype(self.W.dtype, copy=False)

    def scale_both(self, out_s: np.ndarray, in_s: np.ndarray) -> None:
        """scale_out(out_s) and scale_in(in_s) in one pass over the weights (Conv), else two."""
        if self.kind is not LayerKind.CONV:
            self.scale_out(out_s)
            self.scale_in(in_s)
            return
        g, cout, cin_g = self.group, self.W.shape[0], self.W.shape[1]
        factor = (np.asarray(out_s, np.float64).reshape(g, cout // g, 1) *
                  np.asarray(in_s, np.float64).reshape(g, 1, cin_g)).reshape(cout, cin_g)
        self.W = (self.W * self._vec(factor, (cout, cin_g) + (1,) * (self.W.ndim - 2))).astype(self.W.dtype, copy=False)
        if self.b is not None:
            self.b = (self.b.astype(np.float64) * out_s).astype(self.W.dtype, copy=False)

    def scale_in(self, s: np.ndarray) -> None:
        """Multiply the weights reading input channel i by s[i]."""
        s = np.asarray(s, dtype=np.float64)
        W = self.W
        if self.kind is LayerKind.CONV:
            g = self.group
            cout, cin_g = W.shape[0], W.shape[1]
            rest = W.shape[2:]
            factor = self._vec(s, (g, 1, cin_g) + (1,) * len(rest))
            W = (W.reshape((g, cout // g, cin_g) + rest) * factor).reshape(W.shape)
        elif self.kind is LayerKind.CONV_TRANSPOSE:
            W = W * self._vec(s, (-1,) + (1,) * (W.ndim - 1))
        elif self.trans_b:
            W = W * self._vec(s, (1, -1))
        else:
            W = W * self._vec(s, (-1, 1))
        self.W = W.astype(self.W.dtype, copy=False)

    def add_bias(self, delta: np.ndarray) -> None:
        base = self.b if self.b is not None else np.zeros(self.out_channels, self.W.dtype)
        self.b = (base.astype(np.float64) + delta).astype(self.W.dtype, copy=False)

    # -- writing back ----------------------------------------------------------------------
    def _bias_array(self) -> np.ndarray:
        assert self.b is not None
        return np.ascontiguousarray(self.b.astype(self.W.dtype, copy=False))

    def commit(self, graph: gs.Graph, names: Namer, *, bias: bool = True) -> None:
        """Put fresh initializers for W (and b) into the node (and its bias Add for MatMul)."""
        node = self.node
        wname = const_source(node.inputs[1])
        node.inputs[1] = gs.Constant(names((wname.name if wname is not None else node.name) + "_w"),
                                     np.ascontiguousarray(self.W))
        if not bias or self.b is None:
            return
        if self.kind.is_conv:
            c = gs.Constant(names(node.name + "_bias"), self._bias_array())
            if len(node.inputs) > 2:
                node.inputs[2] = c
            else:
                node.inputs.append(c)
        elif self.kind is LayerKind.GEMM:
            node.attrs["beta"] = 1.0
            c = gs.Constant(names(node.name + "_bias"), self._bias_array())
            if len(node.inputs) > 2:
                node.inputs[2] = c
            else:
                node.inputs.append(c)
        else:  # matmul: bias lives in a following Add
            if self.bias_node is not None:
                old = const_value(self.bias_node.inputs[self.bias_index])
                shape = old.shape if old is not None else (self.b.size,)
                self.bias_node.inputs[self.bias_index] = gs.Constant(
                    names(node.name + "_bias"),
                    np.ascontiguousarray(self.b.reshape(shape).astype(self.W.dtype, copy=False)))
            else:
                out = node.outputs[0]
                new_out = gs.Variable(names(out.name + "_mm"), dtype=out.dtype, shape=out.shape)
                node.outputs[0] = new_out
                c = gs.Constant(names(node.name + "_bias"), self._bias_array())
                add = gs.Node("Add", names(node.name + "_bias_add"), inputs=[new_out, c], outputs=[out])
                graph.nodes.insert(graph.nodes.index(node) + 1, add)
                self.bias_node, self.bias_index = add, 1


def input_response(node: gs.Node, geometry: LayerGeometry, W: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Change of the layer's output, per output channel, when every element of input channel i grows by
    ``c[i]``: ``sum over i and kernel taps of W[o, i, taps] * c[i]`` (Gemm: times ``alpha``).  absorb-bias moves
    a bias through a layer with it; data-free bias correction evaluates it on the weight error."""
    W = W.astype(np.float64)
    if geometry.kind is LayerKind.CONV:
        g = geometry.group
        cout, cin_g = W.shape[0], W.shape[1]
        wsum = W.reshape(cout, cin_g, -1).sum(axis=2).reshape(g, cout // g, cin_g)
        return np.einsum("gok,gk->go", wsum, c.reshape(g, cin_g)).reshape(cout)
    if geometry.kind is LayerKind.GEMM:
        alpha = float(attr(node, "alpha", 1.0))
        return alpha * (W @ c if geometry.trans_b else c @ W)
    if geometry.kind is LayerKind.MATMUL:
        return c @ W
    raise NotALayer(f"{node.op}: the response to a per-channel input shift is not implemented")




def range_spread(r: np.ndarray) -> float:
    """max/min of per-channel ranges (ignoring dead channels); 1.0 means perfectly equalized."""
    r = r[r > 1e-12]
    return float(r.max() / r.min()) if r.size else 1.0


def conv_geometry(node: gs.Node, W: np.ndarray) -> ConvAttrs:
    """Kernel, strides, dilations and explicit pads of a Conv, with auto_pad resolved where it can be."""
    return ConvAttrs.of(node, tuple(W.shape))
