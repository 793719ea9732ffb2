"""Emit QuantizeLinear/DequantizeLinear nodes for a placement plan.

Activations: ``x -> Q(scale, zp) -> DQ(scale, zp) -> consumers`` with a scalar float32 scale and an
explicit zero point (int8 0 for symmetric, uint8 for affine, float8e4m3fn 0 for fp8), so onnxruntime
and TensorRT read the same numbers (R4).  Symmetric int8: ``scale = amax / 127``, grid [-128, 127].

Weights (default ``weights=dq``): stored pre-quantized (int8, or fp8) behind a DequantizeLinear that
feeds the layer directly, per output channel with ``axis`` always written (R7, R10).  Weights use the
narrow grid (s8: [-127, 127], R12); lower widths (s4, s6, s7.7 ...) restrict the integer values and
are still stored as int8.  ``weights=qdq`` keeps float weights followed by Q and DQ.  Blocked INT4
weights (``block_size``) use opset 21 ``block_size`` DequantizeLinear on MatMul/Gemm.

Scales never reach zero: a dead channel gets ``SCALE_FLOOR`` (TensorRT rejects zero scales, R5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError, DiagnosticEngine, QCompilerError
from ..ir.edit import Namer, constant
from ..ir.graph import iter_graphs
from ..ir.query import producer, require_const
from .plan import ActPoint, Plan, WeightPoint
from .qspec import QSpec, affine_params, broadcast_qparams, dequantize_linear

SCALE_FLOOR = 1e-7


@dataclass
class QParams:
    scale: np.ndarray  # float32, scalar or [C]
    zero_point: np.ndarray  # int8 / uint8 / float8 array, same shape
    qmin: int
    qmax: int
    spec: QSpec
    axis: int | None = None
    block_size: int | None = None


@dataclass
class EmitResult:
    act_qparams: dict[str, QParams] = field(default_factory=dict)  # tensor -> qparams
    weight_qparams: dict[str, QParams] = field(default_factory=dict)  # node name -> weight qparams
    counts: dict[str, int] = field(default_factory=dict)


def _zero(spec: QSpec, shape: tuple[int, ...], value: Any = 0, storage: str | None = None) -> np.ndarray:
    if spec.fp8:
        import ml_dtypes

        return np.zeros(shape, dtype=ml_dtypes.float8_e4m3fn)
    st = storage or spec.storage
    if st in ("int4", "uint4"):
        import ml_dtypes

        return np.full(shape, value, dtype=ml_dtypes.int4 if st == "int4" else ml_dtypes.uint4)
    return np.full(shape, value, dtype=np.int8 if spec.signed else np.uint8)


def activation_qparams(spec: QSpec, lo: float, hi: float) -> QParams:
    if spec.fp8:
        amax = max(abs(lo), abs(hi))
        scale = np.asarray(max(amax / 448.0, SCALE_FLOOR), np.float32)
        return QParams(scale, _zero(spec, ()), -448, 448, spec)
    narrow = bool(spec.narrow) if spec.narrow is not None else False
    qmin, qmax = spec.grid(narrow)
    st = spec.act_storage
    if spec.symmetric:
        amax = max(abs(lo), abs(hi))
        top = qmax if spec.signed else qmax
        scale = np.asarray(max(amax / top, SCALE_FLOOR), np.float32)
        return QParams(scale, _zero(spec, (), storage=st), qmin, qmax, spec)
    scale, zp = affine_params(np.asarray(lo), np.asarray(hi), qmin, qmax)
    return QParams(np.asarray(scale, np.float32), _zero(spec, (), int(zp), storage=st), qmin, qmax, spec)


def weight_qparams(W: np.ndarray, spec: QSpec, axis: int | None) -> QParams:
    Wf = W.astype(np.float64)
    if spec.per_block and spec.block_size:
        return _block_qparams(Wf, spec, axis)
    if axis is None:
        amax = np.asarray(np.max(np.abs(Wf)) if Wf.size else 0.0)
    else:
        axes = tuple(i for i in range(W.ndim) if i != axis)
        amax = np.max(np.abs(Wf), axis=axes) if Wf.size else np.zeros(W.shape[axis])
    if spec.fp8:
        scale = np.maximum(amax / 448.0, SCALE_FLOOR).astype(np.float32)
        return QParams(scale, _zero(spec, scale.shape), -448, 448, spec, axis)
    narrow = True if spec.narrow is None else bool(spec.narrow)
    qmin, qmax = spec.grid(narrow)
    if spec.symmetric:
        scale = np.maximum(amax / qmax, SCALE_FLOOR).astype(np.float32)
        return QParams(scale, _zero(spec, scale.shape), qmin, qmax, spec, axis)
    if axis is None:
        lo, hi = np.asarray(Wf.min()), np.asarray(Wf.max())
    else:
        axes = tuple(i for i in range(W.ndim) if i != axis)
        lo, hi = Wf.min(axis=axes), Wf.max(axis=axes)
    scale, zp = affine_params(lo, hi, qmin, qmax)
    zpa = zp.astype(np.int8 if spec.signed else np.uint8)
    return QParams(np.asarray(scale, np.float32), zpa, qmin, qmax, spec, axis)


def _block_qparams(W: np.ndarray, spec: QSpec, axis: int | None) -> QParams:
    """Blocks of ``block_size`` along ``axis`` (the reduction axis K of a 2-D MatMul/Gemm weight: 0 for [K, N],
    1 for a transB Gemm's [N, K]); the scale has the weight's shape with that axis divided by the block size."""
    assert spec.block_size is not None
    bs = int(spec.block_size)
    ax = 0 if axis is None else axis
    Wm = np.moveaxis(np.abs(W), ax, 0)  # [K, ...]
    k = Wm.shape[0]
    nblk = (k + bs - 1) // bs
    pad = nblk * bs - k
    Wp = np.pad(Wm, ((0, pad),) + ((0, 0),) * (Wm.ndim - 1)) if pad else Wm
    amax = Wp.reshape((nblk, bs) + Wm.shape[1:]).max(axis=1)  # [K/bs, ...]
    narrow = True if spec.narrow is None else bool(spec.narrow)
    qmin, qmax = spec.grid(narrow)
    scale = np.moveaxis(np.maximum(amax / qmax, SCALE_FLOOR), 0, ax).astype(np.float32)
    return QParams(scale, _zero(spec, scale.shape), qmin, qmax, spec, ax, bs)


def expand_scale(q: QParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point broadcast to a weight of ``shape`` (per tensor, per channel or per block)."""
    return broadcast_qparams(q.scale, None if q.spec.fp8 else q.zero_point, shape, q.axis or 0, q.block_size)


def quantize_weight(W: np.ndarray, q: QParams) -> np.ndarray:
    """Integer (or fp8) weight values in their storage dtype."""
    s, z = expand_scale(q, W.shape)
    if q.spec.fp8:
        import ml_dtypes

        y = np.clip(W.astype(np.float32) / s.astype(np.float32), -448.0, 448.0)
        return y.astype(ml_dtypes.float8_e4m3fn)
    v = np.clip(np.rint(W.astype(np.float64) / s) + z, q.qmin, q.qmax)
    if q.spec.storage == "int4":
        import ml_dtypes

        return v.astype(np.int8).astype(ml_dtypes.int4)
    return v.astype(np.int8 if q.spec.signed else np.uint8)


def dequantize_weight(qv: np.ndarray, q: QParams) -> np.ndarray:
    """The float values of stored weight integers (DequantizeLinear, qspec.dequantize_linear)."""
    return dequantize_linear(qv, q.scale, None if q.spec.fp8 else q.zero_point, q.axis or 0, q.block_size)


class Emitter:
    def __init__(self, graph: gs.Graph, plan: Plan, stats: Any, *, weights_mode: str = "dq",
                 diagnostics: DiagnosticEngine | None = None):
        self.g = graph
        self.plan = plan
        self.stats = stats
        self.mode = weights_mode
        self.diag = diagnostics
        self.names = Namer(graph)
        self.result = EmitResult()
        self.before: dict[int, list[gs.Node]] = {}  # id(anchor node) -> nodes to insert before it
        self.after: dict[int, list[gs.Node]] = {}  # id(anchor node) -> nodes to insert after it
        self.head: dict[int, list[gs.Node]] = {}  # id(graph) -> nodes reading inputs/outer tensors (go first)
        self.dq_of: dict[str, QParams] = {}  # DQ output name -> activation qparams
        # the model's graph and every If/Loop/Scan body (node names are unique model-wide after import)
        self.graphs = list(iter_graphs(graph))
        self.graph_of: dict[int, gs.Graph] = {id(n): g for g in self.graphs for n in g.nodes}
        self.nodes: dict[str, gs.Node] = {n.name: n for g in self.graphs for n in g.nodes}

    # -- ranges ------------------------------------------------------------------------------
    def tensor_range(self, tensor: str) -> tuple[float, float]:
        lo, hi = np.inf, -np.inf
        for t in self.plan.group_of(tensor):
            if self.stats is None or t not in self.stats:
                raise CalibrationError(f"no calibration statistics for tensor '{t}'", code="QC405",
                                       hint="run `calibrate` (with --calib-data) right before insert-qdq; passes "
                                            "between them may not change the graph")
            a, b = self.stats.range(t)
            lo, hi = min(lo, float(np.min(a))), max(hi, float(np.max(b)))
        return lo, hi

    # -- nodes -------------------------------------------------------------------------------
    def _qdq(self, x: gs.Tensor, q: QParams, base: str, *, axis: int | None = None,
             block_size: int | None = None, quantize: bool = True,
             stored: np.ndarray | None = None) -> tuple[list[gs.Node], gs.Variable]:
        scale = constant(self.names(base + "_scale"), q.scale)
        zp = constant(self.names(base + "_zero_point"), q.zero_point)
        attrs: dict[str, Any] = {}
        if axis is not None:
            attrs["axis"] = int(axis)
        if block_size:
            attrs["block_size"] = int(block_size)
        nodes: list[gs.Node] = []
        if stored is not None:
            src = constant(self.names(base + "_quantized"), stored)
        else:
            qout = gs.Variable(self.names(base + "_q"), dtype=_np_storage(q.spec))
            qattrs = dict(attrs)
            if q.spec.fp8:
                qattrs["saturate"] = 1
            nodes.append(gs.Node("QuantizeLinear", self.names(base + "_QuantizeLinear"), attrs=qattrs,
                                 inputs=[x, scale, zp], outputs=[qout]))
            src = qout
        out = gs.Variable(self.names(base + "_dq"), dtype=np.float32,
                          shape=x.shape if isinstance(x, gs.Variable) else list(x.shape))
        nodes.append(gs.Node("DequantizeLinear", self.names(base + "_DequantizeLinear"), attrs=attrs,
                             inputs=[src, scale, zp], outputs=[out]))
        return nodes, out

    def emit_acts(self) -> None:
        nodes = self.nodes
        for pt in self.plan.acts:
            first = nodes[pt.edges[0][0]]
            t = first.inputs[pt.edges[0][1]]
            g = self.graph_of[id(first)]  # a point's consumers are all in one graph (the planner's)
            lo, hi = self.tensor_range(pt.tensor)
            q = activation_qparams(pt.spec, lo, hi)
            new, out = self._qdq(t, q, t.name)
            for cname, idx in pt.edges:
                nodes[cname].inputs[idx] = out
            self.dq_of[out.name] = q
            prod = producer(t)
            if prod is None or self.graph_of.get(id(prod)) is not g:  # a graph input or an outer-scope tensor
                self.head.setdefault(id(g), []).extend(new)
            else:
                self.after.setdefault(id(prod), []).extend(new)
            self.result.act_qparams[pt.tensor] = q
            self.result.counts["activations"] = self.result.counts.get("activations", 0) + 1

    def emit_weights(self) -> None:
        nodes = self.nodes
        # one DQ per weight, graph and spec (a DQ in a body cannot feed a node outside it)
        shared: dict[tuple[int, str, QSpec, int | None], gs.Variable] = {}
        for wp in self.plan.weights:
            node = nodes[wp.node]
            W = require_const(node.inputs[wp.index], "weight")
            if W.dtype.kind == "f" and not np.all(np.isfinite(W)):
                raise QCompilerError(f"the weight '{node.inputs[wp.index].name}' of {node.op} {node.name} holds NaN "
                                     "or Inf: its scale would be too", code="QC507", node=node.name,
                                     hint="the model is broken (check the export), or keep the layer float in the "
                                          "recipe")
            key = (id(self.graph_of[id(node)]), wp.tensor, wp.spec, wp.axis)
            q = weight_qparams(W, wp.spec, wp.axis)
            self.result.weight_qparams[wp.node] = q
            if key in shared:
                node.inputs[wp.index] = shared[key]
            else:
                src = node.inputs[wp.index]
                if self.mode == "dq":
                    new, out = self._qdq(src, q, wp.tensor, axis=q.axis, block_size=q.block_size,
                                         stored=quantize_weight(W, q))
                else:
                    new, out = self._qdq(src, q, wp.tensor, axis=q.axis, block_size=q.block_size)
                self.before.setdefault(id(node), []).extend(new)
                node.inputs[wp.index] = out
                shared[key] = out
            self.result.counts["weights"] = self.result.counts.get("weights", 0) + 1
            if wp.bias_index is not None:
                self._int32_bias(node, wp, q)

    def _int32_bias(self, node: gs.Node, wp: WeightPoint, wq: QParams) -> None:
        act = self.dq_of.get(node.inputs[0].name)
        if act is None:
            return
        b = require_const(node.inputs[wp.bias_index], "bias")
        scale = (act.scale.astype(np.float64) * wq.scale.astype(np.float64)).reshape(-1)
        if scale.size == 1 and b.size > 1:
            scale = np.full(b.size, float(scale[0]))
        scale = np.maximum(scale, SCALE_FLOOR * 1e-3)
        qb = np.clip(np.rint(b.astype(np.float64).reshape(-1) / scale), -2**31, 2**31 - 1).astype(np.int32)
        sc = constant(self.names(node.name + "_bias_scale"), scale.astype(np.float32))
        zp = constant(self.names(node.name + "_bias_zero_point"), np.zeros(qb.shape, np.int32))
        qc = constant(self.names(node.name + "_bias_quantized"), qb)
        out = gs.Variable(self.names(node.name + "_bias_dq"), dtype=np.float32, shape=list(b.shape))
        dq = gs.Node("DequantizeLinear", self.names(node.name + "_bias_DequantizeLinear"), attrs={"axis": 0},
                     inputs=[qc, sc, zp], outputs=[out])
        self.before.setdefault(id(node), []).append(dq)
        node.inputs[wp.bias_index] = out
        self.result.counts["int32_biases"] = self.result.counts.get("int32_biases", 0) + 1

    def finish(self) -> None:
        for g in self.graphs:
            order: list[gs.Node] = list(self.head.get(id(g), []))
            for n in g.nodes:
                order.extend(self.before.get(id(n), []))
                order.append(n)
                order.extend(self.after.get(id(n), []))
            g.nodes = order

    def run(self) -> EmitResult:
        self.emit_acts()
        self.emit_weights()
        self.finish()
        self.g.cleanup(remove_unused_graph_inputs=False)
        return self.result


def _np_storage(spec: QSpec):
    """The QuantizeLinear output type of an activation (int4/uint4 for 4-bit activations)."""
    import ml_dtypes

    if spec.fp8:
        return ml_dtypes.float8_e4m3fn
    return {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "uint8": np.uint8}.get(spec.act_storage, np.int8)


def act_point_for(plan: Plan, tensor: str) -> ActPoint | None:
    return next((a for a in plan.acts if a.tensor == tensor), None)
