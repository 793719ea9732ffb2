"""Small graph builders for tests (onnx.helper; weights from a seeded generator)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.ir import import_model


class G:
    """Incremental model builder: ``b = G(17); x = b.input('x', [1,3,8,8]); y = b.conv(x, 4, 3); b.output(y)``."""

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

    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype=TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, None))

    def init(self, value: np.ndarray, base: str = "w") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def rand(self, *shape, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op.lower() + "_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    # -- layers -------------------------------------------------------------------------------
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

    def model(self, ir: int = 8) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = ir
        # graph outputs need a shape for onnx.checker: take it from shape inference
        inferred = onnx.shape_inference.infer_shapes(m)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for o in m.graph.output:
            v = known.get(o.name)
            if v is not None and v.type.tensor_type.HasField("shape"):
                o.type.CopyFrom(v.type)
            elif not o.type.tensor_type.HasField("shape"):
                o.type.tensor_type.shape.SetInParent()
        return m

    def graph(self):
        return import_model(self.model())
