"""The one way tests build graphs: :class:`G`, an incremental builder (onnx.helper underneath; weights from a seeded
generator), and :func:`parse` for graphs written in ONNX text (onnx.parser).

    b = G(17)
    x = b.input("x", [1, 3, 8, 8])
    y = b.relu(b.conv(x, 3, 4))
    b.output(y)
    graph = b.graph()                       # a gs.Graph through qcompiler's importer
    model = b.model()                       # or the ModelProto
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.ir import import_model

FLOAT = TensorProto.FLOAT


class G:
    """Incremental model builder: ``b = G(17); x = b.input('x', [1,3,8,8]); y = b.conv(x, 3, 4); b.output(y)``."""

    def __init__(self, opset: int = 17, seed: int = 0):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    # -- interface and constants -------------------------------------------------------------
    def input(self, name: str, shape, dtype=FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype=FLOAT, shape=None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def init(self, value: np.ndarray, base: str = "w", *, name: str | None = None) -> str:
        """An initializer (``name`` exactly, or ``base`` with a counter)."""
        n = name or self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def tensor(self, proto: onnx.TensorProto) -> str:
        """A prebuilt initializer (external data, unusual types)."""
        self.inits.append(proto)
        return proto.name

    def const_node(self, value: np.ndarray, base: str = "c") -> str:
        """A weight held in a ``Constant`` node (as some exporters write them)."""
        out = self.name(base)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out + "_const",
                                           value=numpy_helper.from_array(np.asarray(value), out + "_value")))
        return out

    def rand(self, *shape, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # -- nodes ----------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], n_out: int = 1, *, name: str | None = None,
             outputs: list[str] | None = None, domain: str | None = None, **attrs) -> Any:
        """One node; returns its output name (or the list of them when ``n_out`` > 1 or ``outputs`` is given)."""
        outs = outputs or [self.name(op.lower() + "_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name or self.name(op), domain=domain, **attrs))
        return outs if (outputs is not None and len(outs) != 1) or n_out > 1 else outs[0]

    def q(self, x: str, scale: str, zero_point: str | None = None, **attrs) -> str:
        return self.node("QuantizeLinear", [x, scale] + ([zero_point] if zero_point else []), **attrs)

    def dq(self, x: str, scale: str, zero_point: str | None = None, **attrs) -> str:
        return self.node("DequantizeLinear", [x, scale] + ([zero_point] if zero_point else []), **attrs)

    def qdq(self, x: str, scale: float | np.ndarray, zero_point: np.ndarray, **attrs) -> str:
        """x -> QuantizeLinear -> DequantizeLinear with constant scale and zero point."""
        s = self.init(np.asarray(scale, np.float32), "s")
        z = self.init(np.asarray(zero_point), "z")
        return self.dq(self.q(x, s, z, **attrs), s, z, **attrs)

    # -- layers ---------------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k=3, stride=1, pad=None, group=1, dilation=1, bias=True,
             dims: int = 2, wscale: float = 0.3) -> str:
        ks = [k] * dims if isinstance(k, int) else list(k)
        pads = [(d * (kk - 1)) // 2 for kk, d in zip(ks, [dilation] * dims)] if pad is None else \
            ([pad] * (2 * dims) if isinstance(pad, int) else list(pad))
        if len(pads) == dims:
            pads = pads + pads
        w = self.init(self.rand(cout, cin // group, *ks, scale=wscale))
        ins = [x, w]
        if bias:
            ins.append(self.init(self.rand(cout, scale=0.1), "b"))
        return self.node("Conv", ins, kernel_shape=ks, strides=[stride] * dims, pads=pads, group=group,
                         dilations=[dilation] * dims)

    def convt(self, x: str, cin: int, cout: int, k=4, stride=2, pad=1, group=1, bias=True) -> str:
        w = self.init(self.rand(cin, cout // group, k, k, scale=0.3))
        ins = [x, w] + ([self.init(self.rand(cout, scale=0.1), "b")] if bias else [])
        return self.node("ConvTranspose", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                         group=group)

    def bn(self, x: str, c: int, eps: float = 1e-5) -> str:
        gamma = self.init((0.5 + self.rng.random(c)).astype(np.float32), "gamma")
        beta = self.init(self.rand(c, scale=0.3), "beta")
        mean = self.init(self.rand(c, scale=0.2), "mean")
        var = self.init((0.3 + self.rng.random(c)).astype(np.float32), "var")
        return self.node("BatchNormalization", [x, gamma, beta, mean, var], epsilon=eps)

    def gemm(self, x: str, k: int, n: int, trans_b: bool = True, bias: bool = True, alpha=1.0, beta=1.0) -> str:
        w = self.init(self.rand(n, k, scale=0.3) if trans_b else self.rand(k, n, scale=0.3))
        ins = [x, w] + ([self.init(self.rand(n, scale=0.1), "b")] if bias else [])
        return self.node("Gemm", ins, transB=int(trans_b), alpha=alpha, beta=beta)

    def matmul(self, x: str, k: int, n: int) -> str:
        return self.node("MatMul", [x, self.init(self.rand(k, n, scale=0.3))])

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def relu6(self, x: str) -> str:
        lo = self.init(np.array(0.0, np.float32), "lo")
        hi = self.init(np.array(6.0, np.float32), "hi")
        return self.node("Clip", [x, lo, hi])

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    # -- results --------------------------------------------------------------------------------
    def model(self, ir: int = 8, infer_outputs: bool = True) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = ir
        if infer_outputs:
            # graph outputs need a shape for onnx.checker: take it from shape inference
            try:
                inferred = onnx.shape_inference.infer_shapes(m)
            except Exception:
                inferred = m
            known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
            for o in m.graph.output:
                v = known.get(o.name)
                if v is not None and v.type.tensor_type.HasField("shape"):
                    o.type.CopyFrom(v.type)
                elif not o.type.tensor_type.HasField("shape"):
                    o.type.tensor_type.shape.SetInParent()
        return m

    def graph(self, **kw):
        return import_model(self.model(**kw))


def single_op(op: str, inputs: list[tuple[str, np.ndarray]], attrs: dict | None = None,
              inits: list[tuple[str, np.ndarray]] | None = None, n_out: int = 1, opset: int = 17,
              out_type=FLOAT) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model of one node: ``inputs`` fed at run time, ``inits`` as initializers; returns (model, feeds)."""
    b = G(opset)
    for n, a in inputs:
        b.input(n, list(a.shape), helper.np_dtype_to_tensor_dtype(a.dtype))
    for n, a in inits or []:
        b.init(a, name=n)
    outs = [f"y{i}" for i in range(n_out)]
    b.node(op, [n for n, _ in inputs] + [n for n, _ in inits or []], outputs=outs, name=op, **(attrs or {}))
    for o in outs:
        b.output(o, out_type)
    return b.model(), dict(inputs)


def qdq_model(scale, zero_point, *, axis: int | None = None, block: int | None = None, opset: int = 19,
              shape=None, expose_q: bool = False, ir: int = 9) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> y (and the quantized tensor q as an output with ``expose_q``)."""
    zp = np.asarray(zero_point)
    attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
    if block:
        attrs["block_size"] = block
    b = G(opset)
    b.input("x", shape)
    s = b.init(np.asarray(scale, np.float32), name="s")
    z = b.init(zp, name="z")
    q = b.node("QuantizeLinear", ["x", s, z], outputs=["q"], name="Q", **attrs)
    b.node("DequantizeLinear", [q, s, z], outputs=["y"], name="DQ", **attrs)
    b.output("y", shape=shape)
    if expose_q:
        b.output("q", helper.np_dtype_to_tensor_dtype(zp.dtype))
    return b.model(ir=ir, infer_outputs=False)


def dq_model(scale, zero_point, *, axis: int | None = None, opset: int = 19, ir: int = 9) -> onnx.ModelProto:
    """q (int8) -> DequantizeLinear -> y."""
    b = G(opset)
    b.input("q", None, TensorProto.INT8)
    b.node("DequantizeLinear", ["q", b.init(np.asarray(scale), name="s"), b.init(np.asarray(zero_point), name="z")],
           outputs=["y"], name="DQ", **({} if axis is None else {"axis": axis}))
    b.output("y")
    return b.model(ir=ir, infer_outputs=False)


def parse_model(text: str) -> onnx.ModelProto:
    """A model written in ONNX text (onnx.parser), checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def parse(text: str, initializers: dict[str, np.ndarray] | None = None):
    """A gs.Graph from ONNX text, with extra initializers by name."""
    model = onnx.parser.parse_model(text)
    for name, arr in (initializers or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    return import_model(model)
