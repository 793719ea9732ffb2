"""Models that look like what other exporters produce (built with onnx.helper, seeded).

Each exercises one thing users bring: old opsets, symbolic dims, NHWC inputs with Transposes,
weights in Constant nodes, weights routed through Identity or shared between layers, initializers
listed as graph inputs, If/Loop subgraphs, external data, and the torch dynamo exporter.

    from qcompiler.zoo.exotic import build, NAMES
    model = build("paddle-opset12")          # an onnx.ModelProto
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _B:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def init(self, arr: np.ndarray, base: str) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def const_node(self, arr: np.ndarray, base: str) -> str:
        n = self.name(base)
        self.nodes.append(helper.make_node("Constant", [], [n], name=n + "_const",
                                           value=numpy_helper.from_array(np.asarray(arr), n + "_value")))
        return n

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv_bn_relu(self, x: str, cin: int, cout: int, *, k: int = 3, stride: int = 1, weight: str | None = None,
                     const_nodes: bool = False, relu: bool = True) -> str:
        w = weight or (self.const_node if const_nodes else self.init)(
            (self.rng.standard_normal((cout, cin, k, k)) * (2.0 / (cin * k * k)) ** 0.5).astype(np.float32), "w")
        c = self.node("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        mk = self.const_node if const_nodes else self.init
        b = self.node("BatchNormalization", [c, mk((0.5 + self.rng.random(cout)).astype(np.float32), "g"),
                                             mk((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "b"),
                                             mk((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "m"),
                                             mk((0.5 + self.rng.random(cout)).astype(np.float32), "v")])
        return self.node("Relu", [b]) if relu else b

    def head(self, x: str, c: int, classes: int = 10, opset: int = 13) -> str:
        p = self.node("GlobalAveragePool", [x])
        f = self.node("Flatten", [p], axis=1)
        w = self.init((0.1 * self.rng.standard_normal((classes, c))).astype(np.float32), "fc_w")
        return self.node("Gemm", [f, w, self.init(np.zeros(classes, np.float32), "fc_b")], transB=1)

    def model(self, inputs, outputs, opset: int, ir: int, *, inits_as_inputs: bool = False) -> onnx.ModelProto:
        graph_inputs = list(inputs)
        if inits_as_inputs:
            graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        g = helper.make_graph(self.nodes, "exotic", graph_inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="exotic-builder")
        m.ir_version = ir
        return m


def paddle_opset12() -> onnx.ModelProto:
    """Paddle-style: opset 12, IR 6, symbolic batch/height/width, initializers also listed as inputs."""
    b = _B(1)
    x = b.conv_bn_relu("image", 3, 16)
    x = b.conv_bn_relu(x, 16, 32, stride=2)
    x = b.conv_bn_relu(x, 32, 32)
    y = b.head(x, 32)
    out = b.node("Softmax", [y], axis=1)
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 10])], 12, 6, inits_as_inputs=True)


def tf_nhwc_opset11() -> onnx.ModelProto:
    """tf2onnx-style: NHWC input transposed to NCHW, weights in Constant nodes, Clip-based ReLU6, opset 11."""
    b = _B(2)
    t = b.node("Transpose", ["input_1"], perm=[0, 3, 1, 2])
    x = b.conv_bn_relu(t, 3, 16, const_nodes=True, relu=False)
    lo, hi = b.const_node(np.array(0.0, np.float32), "lo"), b.const_node(np.array(6.0, np.float32), "hi")
    x = b.node("Clip", [x, lo, hi])
    x = b.conv_bn_relu(x, 16, 16, const_nodes=True)
    y = b.head(x, 16)
    return b.model([helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", 16, 16, 3])],
                   [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["unk__0", 10])], 11, 6)


def identity_shared() -> onnx.ModelProto:
    """Weights routed through Identity, one weight shared by two convs, an inference Dropout."""
    b = _B(3)
    x = b.conv_bn_relu("x", 3, 16)
    w = b.init((0.1 * b.rng.standard_normal((16, 16, 3, 3))).astype(np.float32), "shared_w")
    wi = b.node("Identity", [w])
    c1 = b.node("Conv", [x, wi], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    c2 = b.node("Conv", [b.node("Relu", [c1]), wi], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    d = b.node("Dropout", [c2])
    y = b.head(b.node("Relu", [d]), 16)
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                   [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 10])], 13, 7)


def if_subgraph() -> onnx.ModelProto:
    """An If whose branches run different convs on an outer tensor (outer-scope weights)."""
    b = _B(4)
    x = b.conv_bn_relu("x", 3, 16)
    wa = b.init((0.1 * b.rng.standard_normal((16, 16, 3, 3))).astype(np.float32), "wa")
    wb = b.init((0.1 * b.rng.standard_normal((16, 16, 1, 1))).astype(np.float32), "wb")
    then_g = helper.make_graph([helper.make_node("Conv", [x, wa], ["then_out"], pads=[1, 1, 1, 1], name="then_conv")],
                               "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Conv", [x, wb], ["else_out"], name="else_conv")],
                               "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    r = b.node("ReduceMean", [x], keepdims=0)
    cond = b.node("Greater", [r, b.init(np.array(0.0, np.float32), "zero")])
    out = b.name("if_out")
    b.nodes.append(helper.make_node("If", [cond], [out], name="branch", then_branch=then_g, else_branch=else_g))
    y = b.head(b.node("Relu", [out]), 16)
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                   [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 10])], 13, 7)


def loop_subgraph() -> onnx.ModelProto:
    """A conv net followed by a Loop that refines the logits three times (Loop with a body graph)."""
    b = _B(5)
    x = b.conv_bn_relu("x", 3, 16)
    logits = b.head(x, 16)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Mul", ["state_in", "half"], ["scaled"]),
         helper.make_node("Add", ["scaled", "state_in"], ["state_out"])],
        "body", [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    trip = b.init(np.array(3, np.int64), "trip")
    cond = b.init(np.array(True), "cond")
    out = b.name("loop_out")
    b.nodes.append(helper.make_node("Loop", [trip, cond, logits], [out], name="refine", body=body))
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                   [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])], 13, 7)


def residual_opset21() -> onnx.ModelProto:
    """A residual block at the newest opset the converter handles here (21)."""
    b = _B(6)
    x = b.conv_bn_relu("x", 3, 16)
    h = b.conv_bn_relu(x, 16, 16)
    h = b.conv_bn_relu(h, 16, 16, relu=False)
    a = b.node("Relu", [b.node("Add", [h, x])])
    y = b.head(a, 16)
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                   [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 10])], 21, 10)


def dynamo_resnet() -> onnx.ModelProto:
    """The zoo ResNet exported by torch's dynamo exporter (opset 18+, its naming, no BatchNormalization
    kept unless it chooses to)."""
    import torch

    from . import zoo

    model = zoo.build("resnet")
    prog = torch.onnx.export(model, (torch.zeros(1, 1, 16, 16),), dynamo=True, input_names=["input"],
                             output_names=["logits"], dynamic_shapes={"x": {0: "batch"}})
    return prog.model_proto


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "paddle-opset12": paddle_opset12,
    "tf-nhwc-opset11": tf_nhwc_opset11,
    "identity-shared": identity_shared,
    "if-subgraph": if_subgraph,
    "loop-subgraph": loop_subgraph,
    "residual-opset21": residual_opset21,
    "dynamo-resnet": dynamo_resnet,
}
NAMES = list(BUILDERS)


def build(name: str) -> onnx.ModelProto:
    return BUILDERS[name]()


def input_shape(model: onnx.ModelProto, default: int = 16) -> list[int]:
    """A concrete shape for the first input (symbolic dims: batch 1, others ``default``)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    out = []
    for i, d in enumerate(dims):
        out.append(d.dim_value if d.dim_value > 0 else (1 if i == 0 else default))
    if len(out) == 4 and out[-1] == 3 and out[1] != 3:  # NHWC
        out = [out[0], default, default, 3]
    return out
