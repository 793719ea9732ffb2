"""``qcompiler lint-trt``: offline TensorRT-readiness checks of a Q/DQ model (docs/tensorrt.md, L1-L26).

(Over 500 lines on purpose: one check per TensorRT rule, each a few lines.)

Errors are things TensorRT rejects or silently reads differently from onnxruntime (R rules);
warnings are placements that cost int8/fp8 fusion (P rules); notes are informational.  Every
finding names the node, the rule and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import Diagnostic, Severity
from ..ir import load_model
from ..ir.graph import get_meta, iter_graphs, onnx_type_name
from ..ir.query import const_value, dtype_name, is_graph_output, produced_by, producer
from ..ir.layers import LayerGeometry
from .targets import get_target

#: lint-trt checks against the TensorRT target's rules (the same data the placement uses)
TENSORRT = get_target("tensorrt")

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
               "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
               "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
               "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "QAttention"}
TRT_TYPES = {"int8", "float8_e4m3fn", "int4"}
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


#: layout ops TensorRT folds on constant weights
_LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")


def _constant_foldable(t: gs.Tensor, depth: int = 0) -> bool:
    """A constant, or layout ops over a constant (what TensorRT folds before building)."""
    if const_value(t) is not None:
        return True
    p = producer(t)
    if p is None or p.op not in _LAYOUT_OPS or depth > 8 or not p.inputs:
        return False
    return all(const_value(i) is not None for i in p.inputs[1:]) and _constant_foldable(p.inputs[0], depth + 1)


@dataclass
class LintResult:
    path: str
    findings: list[Diagnostic] = field(default_factory=list)

    @property
    def n_errors(self) -> int:
        return sum(1 for d in self.findings if d.severity >= Severity.ERROR)

    @property
    def n_warnings(self) -> int:
        return sum(1 for d in self.findings if d.severity == Severity.WARNING)

    def rules(self, severity: Severity | None = None) -> set[str]:
        return {d.rule for d in self.findings if d.rule and (severity is None or d.severity == severity)}


class _Linter:
    def __init__(self, graph: gs.Graph, path: str, fp8: bool):
        self.g = graph
        self.path = path
        self.fp8 = fp8
        self.out: list[Diagnostic] = []
        self.opset = int(graph.opset or 1)

    def add(self, sev: Severity, rule: str, node: str | None, msg: str, fix: str) -> None:
        self.out.append(Diagnostic(sev, "QC510", msg, node=node, hint=fix, rule=rule, location=self.path))

    def err(self, rule, node, msg, fix):
        self.add(Severity.ERROR, rule, node, msg, fix)

    def warn(self, rule, node, msg, fix):
        self.add(Severity.WARNING, rule, node, msg, fix)

    def note(self, rule, node, msg, fix):
        self.add(Severity.NOTE, rule, node, msg, fix)

    # ---------------------------------------------------------------------------------------
    def run(self) -> list[Diagnostic]:
        meta = get_meta(self.g)
        qs = [n for g in iter_graphs(self.g) for n in g.nodes if n.op == "QuantizeLinear"]
        dqs = [n for g in iter_graphs(self.g) for n in g.nodes if n.op == "DequantizeLinear"]
        self.check_ops()
        any_fp8 = any_pc = any_block = False
        for n in qs + dqs:
            zp_t = self._zp_dtype(n)
            if zp_t == "float8_e4m3fn" or (n.op == "DequantizeLinear" and dtype_name(n.inputs[0]) == "float8_e4m3fn"):
                any_fp8 = True
            s = const_value(n.inputs[1]) if len(n.inputs) > 1 else None
            if s is not None and s.size > 1:
                any_pc = True
            if "block_size" in n.attrs:
                any_block = True
            if s is not None and str(s.dtype) in ("float16", "bfloat16") and self.opset < 19:
                self.err("L2", n.name, f"{s.dtype} scales need opset >= 19 (model: {self.opset})", "use opset 19")
        need = 10
        if any_pc:
            need = 13
        if any_fp8:
            need = 19
        if any_block:
            need = 21
        if self.opset < need:
            what = "blocked quantization" if need == 21 else "FP8 Q/DQ" if need == 19 else "per-channel Q/DQ (axis)"
            self.err("L2", None, f"{what} needs opset >= {need}; the model is opset {self.opset}",
                     f"convert the model to opset {need} (onnx.version_converter) before quantizing")
        if self.opset > 25:
            self.err("L2", None, f"opset {self.opset} is newer than TensorRT 11 parses (<= 25)",
                     "export at opset <= 25")
        if meta.ir_version and meta.ir_version > 13:
            self.err("L2", None, f"ir_version {meta.ir_version} is newer than TensorRT 11 and onnxruntime read (<= 13)",
                     "set model.ir_version = 10 (or save through qcompiler)")
        for q in qs:
            self.check_q(q)
        for dq in dqs:
            self.check_dq(dq)
        self.check_pairs(qs)
        self.check_weighted()
        self.check_residual_and_dangling()
        self.check_io()
        self.check_types()
        return self.out

    # -- strongly typed networks (TensorRT 11: every layer runs in the type the file gives it) ----------------
    def check_types(self) -> None:
        from ..ir.dtypes import ELEM, float_kind, op_typing
        from ..ir.graph import copy_graph
        from ..ir.shapes import infer_shapes

        g = copy_graph(self.g)
        infer_shapes(g)  # element types of every tensor
        kind = {t.name: float_kind(t.dtype) for sub in iter_graphs(g) for t in sub.tensors().values()}
        for sub in iter_graphs(g):
            for n in sub.nodes:
                typing = op_typing(n.op, n.domain or "", self.opset) if n.op != "Cast" else None
                for grp in (typing.groups if typing is not None else ()):
                    assert typing is not None
                    ins = [k for k in range(len(n.inputs)) if n.inputs[k].name and typing.group_of_input(k) is grp]
                    kinds = {k2 for k in ins if (k2 := kind.get(n.inputs[k].name)) is not None}
                    if len(kinds) <= 1:
                        continue
                    dq = [n.inputs[k] for k in ins if (p := producer(n.inputs[k])) is not None
                          and p.op == "DequantizeLinear"]
                    if dq:
                        other = sorted(k for k in kinds if k != kind.get(dq[0].name))
                        self.err("L24", n.name, f"'{dq[0].name}' (a DequantizeLinear) is {kind.get(dq[0].name)} but "
                                                f"{n.op} computes in {other[0] if other else '?'}",
                                 "store the DequantizeLinear's scale in its consumer's type (no Cast in between)")
                    else:
                        self.err("L23", n.name, f"{n.op} reads {' and '.join(sorted(str(k) for k in kinds))} "
                                                "inputs of one type (a strongly typed network refuses it)",
                                 "Cast one of them, or run the model through qcompiler's float-type pass")
                if n.op == "Cast" and n.inputs:
                    to = next((k for k, v in ELEM.items() if v == int(n.attrs.get("to", 0))), None)
                    src = kind.get(n.inputs[0].name)
                    p = producer(n.inputs[0])
                    if to is not None and src == to:
                        self.warn("L26", n.name, f"a Cast to {to} of a {to} tensor", "remove the Cast")
                    elif p is not None and p.op == "Cast" and p.inputs and kind.get(p.inputs[0].name) == to and \
                            to is not None and src is not None:
                        self.warn("L26", n.name, f"Casts {to} -> {src} -> {to} in a row (they undo each other"
                                                 + (", losing precision on the way)" if src != "fp32" else ")"),
                                  "read the first tensor directly")
            for t in sub.tensors().values():
                if not isinstance(t, gs.Constant) or float_kind(t.dtype) not in ("fp16", "bf16"):
                    continue
                v = np.asarray(t.values, np.float32)
                if v.size and not np.isfinite(v).all():
                    self.err("L25", None, f"{float_kind(t.dtype)} constant '{t.name}' holds inf or NaN (a float32 "
                                          "value that overflowed?)", "keep its consumer float32 (an fp32 island)")
                users = [c for c in t.outputs if c.op in ("QuantizeLinear", "DequantizeLinear")
                         and len(c.inputs) > 1 and c.inputs[1] is t]
                tiny = float(np.finfo(np.float16).tiny)
                if users and float_kind(t.dtype) == "fp16" and v.size and float(np.min(np.abs(v))) < tiny:
                    self.note("L25", users[0].name, f"fp16 scale '{t.name}' has values below fp16's normal range "
                                                    f"({float(np.min(np.abs(v))):.3g} < {tiny:.3g}): few significant "
                                                    "bits", "store this scale in float32 (an fp32 island)")

    def _zp_dtype(self, n: gs.Node) -> str | None:
        if len(n.inputs) > 2 and n.inputs[2].name:
            return dtype_name(n.inputs[2])
        if n.op == "QuantizeLinear" and "output_dtype" in n.attrs:
            return onnx_type_name(int(n.attrs["output_dtype"]))
        return None

    def check_ops(self) -> None:
        for g in iter_graphs(self.g):
            for n in g.nodes:
                if n.op in INTEGER_OPS or (n.domain in ("trt", "com.microsoft") and "Quant" in n.op):
                    self.err("L1", n.name, f"{n.op} ({n.domain or 'ai.onnx'}) is not importable by TensorRT",
                             "emit QuantizeLinear/DequantizeLinear (QDQ format) instead of operator-style int8 ops")

    def _scale_checks(self, n: gs.Node) -> np.ndarray | None:
        if len(n.inputs) < 2:
            self.err("L5", n.name, f"{n.op} has no scale", "give it a scale input")
            return None
        s = const_value(n.inputs[1])
        if s is None:
            self.err("L5", n.name, f"the scale '{n.inputs[1].name}' of {n.op} is not a constant",
                     "scales must be initializers (TensorRT needs build-time constants)")
            return None
        sf = s.astype(np.float64)
        if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
            self.err("L5", n.name, f"the scale of {n.op} has zero, negative or non-finite values (min {sf.min():.3g})",
                     "clamp scales to a positive floor (e.g. 1e-7); dead channels get tiny positive scales")
        elif np.any(sf.astype(np.float16) == 0) and s.dtype == np.float16:
            self.err("L5", n.name, "the scale underflows to 0 in fp16", "raise the scale floor above 6e-8")
        return s

    def _axis_checks(self, n: gs.Node, s: np.ndarray, data: gs.Tensor) -> None:
        zp = const_value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2].name else None
        if zp is not None and zp.size != s.size:
            self.err("L6", n.name, f"zero point has {zp.size} values, scale {s.size}", "give them the same shape")
        if s.size > 1 and "block_size" not in n.attrs:
            if s.ndim != 1:
                self.err("L6", n.name, f"per-channel scale must be 1-D, found shape {list(s.shape)}",
                         "reshape the scale to [C]")
            if "axis" not in n.attrs:
                self.err("L6", n.name, "per-channel Q/DQ without an explicit 'axis' attribute (onnxruntime reads "
                                       "axis=1, TensorRT axis=0)", "always write axis on per-channel Q/DQ")
            axis = int(n.attrs.get("axis", 1))
            shape = data.shape if data is not None else None
            if shape is not None and len(shape) > 0:
                ax = axis + len(shape) if axis < 0 else axis
                if 0 <= ax < len(shape) and isinstance(shape[ax], (int, np.integer)) and shape[ax] != s.size:
                    self.err("L6", n.name, f"{s.size} scales for axis {axis} of length {shape[ax]}",
                             "one scale per channel along the axis")
        elif s.size == 1 and s.ndim > 1:
            self.err("L6", n.name, f"per-tensor scale of shape {list(s.shape)}", "use a scalar or [1]")

    def check_q(self, q: gs.Node) -> None:
        zp_t = self._zp_dtype(q)
        if zp_t is None:
            self.err("L3", q.name, "QuantizeLinear without a zero point: ONNX defaults to uint8 (onnxruntime clamps "
                                   "to [0, 255]) while TensorRT assumes int8", "add an explicit int8 zero point of 0")
        elif zp_t not in TRT_TYPES:
            self.err("L3", q.name, f"QuantizeLinear to {zp_t}: TensorRT only quantizes to int8, fp8 (e4m3fn) or int4",
                     "use a symmetric int8 zero point (0)")
        elif zp_t == "int4" and const_value(q.inputs[0]) is None:
            self.err("L3", q.name, "QuantizeLinear of an activation to int4: TensorRT runs int4 weights only "
                                   "(weight-only, blocked); activations are int8 or fp8",
                     "use 8-bit activations for TensorRT (4-bit activations run in onnxruntime)")
        self._zero_point_zero(q)
        s = self._scale_checks(q)
        data = q.inputs[0]
        if s is not None:
            self._axis_checks(q, s, data)
            if not self._const_derived(data) and s.size > 1:
                self.err("L7", q.name, "per-channel quantization of an activation (TensorRT quantizes activations "
                                       "per tensor)", "use a scalar scale for activations")
            if data.dtype is not None and s.dtype != np.dtype(data.dtype) and self.opset >= 19:
                self.err("L12", q.name, f"Q input is {np.dtype(data.dtype)} but its scale is {s.dtype}",
                         "give the scale the input's dtype")
        if q.attrs.get("saturate", 1) == 0 and zp_t == "float8_e4m3fn":
            self.err("F2", q.name, "FP8 QuantizeLinear with saturate=0 maps out-of-range values to NaN",
                     "use saturate=1")
        for c in q.outputs[0].outputs if q.outputs else []:
            if c.op != "DequantizeLinear":
                self.err("L11", q.name, f"the quantized output feeds {c.name} ({c.op}), not a DequantizeLinear",
                         "every Q output must be consumed by DequantizeLinear nodes only")
        if q.outputs and not q.outputs[0].outputs and not is_graph_output(self.g, q.outputs[0]):
            self.warn("L11", q.name, "QuantizeLinear without a DequantizeLinear", "remove it or add its DQ")

    def _zero_point_zero(self, n: gs.Node) -> None:
        if len(n.inputs) > 2 and n.inputs[2].name:
            zp = const_value(n.inputs[2])
            if zp is None:
                self.err("L4", n.name, "the zero point is not a constant", "use a constant zero point of 0")
            elif np.any(zp.astype(np.float64) != 0):
                self.err("L4", n.name, "non-zero zero point: TensorRT only supports symmetric quantization",
                         "use symmetric quantization (zero point 0)")

    def check_dq(self, dq: gs.Node) -> None:
        src = dq.inputs[0]
        t = dtype_name(src)
        prod = producer(src)
        if t is not None and t not in TRT_TYPES and (prod is None or prod.op != "QuantizeLinear"):
            rule, what = ("L10", "int32 (a quantized bias)") if t == "int32" else ("L3", t)
            self.err(rule, dq.name, f"DequantizeLinear of {what}: TensorRT dequantizes only int8, fp8 (e4m3fn) or int4",
                     "keep biases float; use int8 weights" if t == "int32" else "store int8 (symmetric) values")
        zt = self._zp_dtype(dq)
        if zt is not None and zt not in TRT_TYPES:
            self.err("L3", dq.name, f"zero point of type {zt}", "use int8 (or fp8) zero points")
        self._zero_point_zero(dq)
        s = self._scale_checks(dq)
        if s is not None:
            shape = src.shape if isinstance(src, gs.Variable) else list(src.shape)
            self._axis_checks(dq, s, src if shape else None)
            if const_value(src) is None and prod is not None and prod.op == "QuantizeLinear" and s.size > 1 \
                    and not self._const_derived(prod.inputs[0]):
                self.err("L7", dq.name, "per-channel DequantizeLinear of an activation", "use a scalar scale")
        if prod is None and const_value(src) is None:
            self.err("L11", dq.name, f"DequantizeLinear reads '{src.name}', which is neither a QuantizeLinear output "
                                     "nor a constant", "feed it from a Q or a quantized initializer")
        if prod is not None and prod.op not in ("QuantizeLinear",) and const_value(src) is None:
            self.err("L11", dq.name, f"DequantizeLinear reads the output of {prod.name} ({prod.op})",
                     "feed it from a Q or a quantized initializer")
        q = const_value(src)
        if q is not None and q.dtype == np.int8 and np.any(q == -128):
            self.warn("L13", dq.name, "pre-quantized int8 weights use -128 (TensorRT expects weights in [-127, 127])",
                      "quantize weights with the narrow range (scale = amax / 127, clip to +-127)")

    def check_pairs(self, qs: list[gs.Node]) -> None:
        for q in qs:
            if not q.outputs:
                continue
            qs_ = const_value(q.inputs[1]) if len(q.inputs) > 1 else None
            for dq in q.outputs[0].outputs:
                if dq.op != "DequantizeLinear" or qs_ is None:
                    continue
                ds = const_value(dq.inputs[1])
                if ds is not None and (ds.shape != qs_.shape or not np.array_equal(ds, qs_)):
                    self.warn("L14", dq.name, f"the scale of this DQ differs from its Q '{q.name}' (TensorRT has to "
                                              "requantize)", "use the same scale and zero point for a Q/DQ pair")

    # -- placement ----------------------------------------------------------------------------
    @staticmethod
    def _dq_producer(t: gs.Tensor) -> gs.Node | None:
        p = producer(t)
        return p if p is not None and p.op == "DequantizeLinear" else None

    def all_nodes(self) -> list[gs.Node]:
        """Nodes of the model and of every If/Loop/Scan body (Q/DQ inside bodies follow the same rules)."""
        return [n for g in iter_graphs(self.g) for n in g.nodes]

    def check_weighted(self) -> None:
        first = True
        for n in self.all_nodes():
            if n.op not in WEIGHTED or len(n.inputs) < 2:
                continue
            is_first, first = first, False
            w, x = n.inputs[1], n.inputs[0]
            wdq = self._dq_producer(w)
            xdq = self._dq_producer(x)
            # L9: weight path
            chain_ok, through_cast = self._weight_chain(w)
            if const_value(w) is None and self._has_dq_upstream(w) and self._const_derived(w):
                if through_cast:
                    self.err("L9", n.name, "a Cast sits between the weight DequantizeLinear and the layer (blocks the "
                                           "weight fusion)", "feed the DQ output to the layer directly")
                elif not chain_ok:
                    self.err("L9", n.name, "the quantized weight does not reach the layer as DQ(constant)",
                             "weights must be DQ(initializer) or DQ(Q(initializer)) feeding the layer")
            elif wdq is not None and not self._const_derived(w):
                # a weight quantized from a run-time tensor (a graph input, a computed value): TensorRT cannot
                # take it as int8 kernel weights.  A MatMul of two activations (attention) is fine per tensor.
                src = self._runtime_source(w)
                wscale = const_value(wdq.inputs[1])
                per_channel = wscale is not None and wscale.size > 1
                if n.op != "MatMul" or per_channel:
                    self.err("L9", n.name, f"the weight of {n.name} ({n.op}) is quantized from the run-time tensor "
                                           f"'{src}', not from a constant",
                             "weights must be constants (an initializer or a Constant node) behind the Q/DQ")
            # L10: quantized bias
            if n.op in ("Conv", "ConvTranspose", "Gemm") and len(n.inputs) > 2 and n.inputs[2].name:
                if self._dq_producer(n.inputs[2]) is not None:
                    self.err("L10", n.name, "the bias is dequantized from an integer tensor", "keep the bias a float "
                                                                                              "initializer")
            # L8: axis
            if wdq is not None:
                s = const_value(wdq.inputs[1])
                if s is not None and s.size > 1 and "block_size" not in wdq.attrs:
                    axis = int(wdq.attrs.get("axis", 1))
                    wq = const_value(wdq.inputs[0])
                    shape = tuple(wq.shape) if wq is not None else (1, 1)
                    axis = axis + len(shape) if axis < 0 else axis
                    geo = LayerGeometry.of(n, shape)
                    expect = geo.out_axis if geo is not None else axis
                    if axis != expect:
                        self.err("L8", n.name, f"per-channel weight scale along axis {axis}; {n.op} output channels "
                                               f"are axis {expect}", f"quantize the weight along axis {expect}")
                    if geo is not None and not geo.per_channel_writable:
                        self.warn("L8", n.name, "per-channel weights on a grouped ConvTranspose (axis 1 is Cout/group)",
                                  "quantize grouped ConvTranspose weights per tensor")
            # L15: half-quantized layer
            if (wdq is not None) != (xdq is not None) and const_value(x) is None:
                which = "activation" if xdq is None else "weight"
                self.warn("L15", n.name, f"the {which} input is not quantized while the other is",
                          "quantize both inputs of a weighted op (or neither)")
            # L21: small layers
            W = const_value(wdq.inputs[0]) if wdq is not None else None
            if W is not None and xdq is not None:
                geo = LayerGeometry.of(n, tuple(W.shape))
                why = TENSORRT.small_layer_reason(geo, first=is_first, fp8=self.fp8 or self._is_fp8(wdq)) \
                    if geo is not None else None
                if why:
                    self.warn("L21", n.name, f"quantized, but {why}", "leave this layer in float/fp16")
            # L16: Q/DQ between the op and its epilogue
            out = n.outputs[0] if n.outputs else None
            if out is not None:
                for c in out.outputs:
                    if c.op == "QuantizeLinear" and xdq is not None:
                        for dq2 in (c.outputs[0].outputs if c.outputs else []):
                            for e in (dq2.outputs[0].outputs if dq2.outputs else []):
                                if e.op in ("BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid") or \
                                        (e.op == "Add" and any(const_value(i) is not None for i in e.inputs)):
                                    self.warn("L16", c.name, f"Q/DQ between {n.name} and its {e.op} epilogue "
                                                             "(blocks the fusion)", "move the Q/DQ after the epilogue")

    def _const_derived(self, t: gs.Tensor, depth: int = 0) -> bool:
        """Every value of ``t`` is computed from constants only (a weight, not an activation)."""
        if const_value(t) is not None:
            return True
        p = producer(t)
        if p is None or depth > 16:
            return False
        return all(self._const_derived(i, depth + 1) for i in p.inputs if i.name)

    def _runtime_source(self, t: gs.Tensor, depth: int = 0) -> str:
        """The first non-constant tensor a value is computed from (a graph input or a node output)."""
        p = producer(t)
        if p is None or depth > 16 or p.op not in ("QuantizeLinear", "DequantizeLinear", "Cast", *_LAYOUT_OPS):
            return t.name
        return self._runtime_source(p.inputs[0], depth + 1)

    def _is_fp8(self, dq: gs.Node) -> bool:
        return dtype_name(dq.inputs[0]) == "float8_e4m3fn"

    def _has_dq_upstream(self, t: gs.Tensor, depth: int = 0) -> bool:
        p = producer(t)
        if p is None or depth > 8:
            return False
        if p.op == "DequantizeLinear":
            return True
        return any(self._has_dq_upstream(i, depth + 1) for i in p.inputs if i.name)

    def _weight_chain(self, w: gs.Tensor) -> tuple[bool, bool]:
        """(weight reaches the op as DQ(const) / DQ(Q(const)) or plain const, a Cast is in the chain).

        A Transpose/Reshape of a constant before the Q, or between the DQ and the layer, is accepted:
        TensorRT constant-folds it at build time (NVIDIA/TensorRT#1604; ModelOpt emits
        DQ(Q(Transpose(W))) for MatMul weights)."""
        p = producer(w)
        if p is None or const_value(w) is not None:
            return True, False
        if p.op == "Cast":
            return False, True
        if p.op in _LAYOUT_OPS and p.inputs and all(const_value(i) is not None for i in p.inputs[1:]):
            return self._weight_chain(p.inputs[0])
        if p.op != "DequantizeLinear":
            return (not self._has_dq_upstream(w)), False
        src = p.inputs[0]
        if const_value(src) is not None:
            return True, False
        pq = producer(src)
        if pq is not None and pq.op == "QuantizeLinear" and _constant_foldable(pq.inputs[0]):
            return True, False
        return False, False

    def check_residual_and_dangling(self) -> None:
        for n in self.all_nodes():
            if n.op == "Add" and len(n.inputs) == 2 and all(const_value(i) is None for i in n.inputs):
                d = [self._dq_producer(i) is not None for i in n.inputs]
                bb = [self._backbone(i) for i in n.inputs]
                if all(d) and any(bb):
                    self.warn("L17", n.name, "both inputs of a residual Add are quantized; the conv-branch input "
                                             "should not be (TensorRT then cannot fuse Conv+Add)",
                              "keep Q/DQ on the skip input only")
                elif any(bb) and not any(d) and self._reaches_q(n.outputs[0]):
                    self.warn("L17", n.name, "residual Add whose output is requantized has no Q/DQ on its skip input",
                              "add Q/DQ on the skip (identity) input so Conv+Add fuse with an int8 output")
            if n.op in WEIGHTED or n.op in ("QuantizeLinear", "DequantizeLinear") or not n.outputs:
                continue
            float_ins = [i for i in n.inputs if i.name and const_value(i) is None]
            if float_ins and all(self._dq_producer(i) is not None for i in float_ins):
                if n.op == "Concat":
                    self._concat_scales(n)
                if not self._reaches_q(n.outputs[0]):
                    self.warn("L18", n.name, f"{n.op} has only dequantized inputs but its output is never requantized "
                                             "(TensorRT runs it in float with reformats)",
                              "quantize its output too, or remove the Q/DQ on its inputs")
            if n.op in ("Softmax", "LayerNormalization", "Erf", "Gelu") and n.outputs:
                for c in n.outputs[0].outputs:
                    if c.op == "QuantizeLinear":
                        self.note("L22", c.name, f"Q/DQ on the output of {n.op} (TensorRT keeps it in higher precision "
                                                 "unless it is the fp8 MHA pattern)",
                                  "keep transformer non-linearities "
                                                                                       "float")

    def _concat_scales(self, n: gs.Node) -> None:
        scales = []
        for i in n.inputs:
            dq = self._dq_producer(i)
            if dq is not None:
                s = const_value(dq.inputs[1])
                if s is not None:
                    scales.append(float(np.asarray(s).reshape(-1)[0]))
        for c in n.outputs[0].outputs:
            if c.op == "QuantizeLinear":
                s = const_value(c.inputs[1])
                if s is not None:
                    scales.append(float(np.asarray(s).reshape(-1)[0]))
        if len(set(scales)) > 1:
            self.warn("L19", n.name, f"Concat inputs/output use {len(set(scales))} different scales (TensorRT adds a "
                                     "requantization per branch)", "give all Concat inputs and its output one scale")

    def _backbone(self, t: gs.Tensor) -> bool:
        for _ in range(16):
            p = producer(t)
            if p is None:
                return False
            if p.op in WEIGHTED:
                return True
            q = produced_by(p.inputs[0], "QuantizeLinear") if p.op == "DequantizeLinear" else None
            if q is not None:
                t = q.inputs[0]  # look through a Q/DQ pair
                continue
            if p.op not in TENSORRT.epilogue_ops or (p.op in ("Add", "Mul") and not any(const_value(i) is not None
                                                                           for i in p.inputs)):
                return False
            nxt = [i for i in p.inputs if i.name and const_value(i) is None]
            if len(nxt) != 1:
                return False
            t = nxt[0]
        return False

    def _reaches_q(self, t: gs.Tensor, depth: int = 0) -> bool:
        if depth > 24:
            return False
        for c in t.outputs:
            if c.op == "QuantizeLinear":
                return True
            if c.op in TENSORRT.commuting_ops or c.op in TENSORRT.epilogue_ops:
                if any(self._reaches_q(o, depth + 1) for o in c.outputs if o.name):
                    return True
        return False

    def check_io(self) -> None:
        for t in list(self.g.inputs) + list(self.g.outputs):
            name = dtype_name(t)
            if name in ("int8", "float8_e4m3fn", "int4"):
                self.err("L11", None, f"graph {'input' if t in self.g.inputs else 'output'} '{t.name}' is {name}",
                         "keep graph inputs/outputs float (quantize inside the graph)")
        for t in self.g.outputs:
            p = producer(t)
            if p is not None and p.op in ("QuantizeLinear", "DequantizeLinear"):
                self.warn("L20", p.name, f"graph output '{t.name}' comes straight from a {p.op}",
                          "do not quantize graph outputs")


def lint_graph(graph: gs.Graph, *, path: str = "<graph>", fp8: bool = False) -> LintResult:
    return LintResult(path, _Linter(graph, path, fp8).run())


def lint_model(path: str | os.PathLike, *, fp8: bool = False) -> LintResult:
    return lint_graph(load_model(path), path=str(path), fp8=fp8)


def summarize(result: LintResult) -> dict[str, Any]:
    return {"errors": result.n_errors, "warnings": result.n_warnings, "rules": sorted(r for r in result.rules() if r)}
