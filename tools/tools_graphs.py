"""Synthetic graphs for scaling benchmarks: a ResNet-50-shaped network with k times the blocks.

Narrow channels keep the weights small, so the node count (not the weight volume) is what grows:
k=1 has ResNet-50's topology (stem + 16 bottleneck blocks with BatchNormalization), k=16 has 256 blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def deep_resnet(k: int, path: str, width: int = 16, image: int = 32, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(base):
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(arr, base):
        n = name(base)
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), n))
        return n

    def conv_bn(x, cin, cout, kk, stride, relu=True, gamma=1.0):
        w = const(rng.standard_normal((cout, cin, kk, kk)) * (2.0 / (cin * kk * kk)) ** 0.5, "w")
        c = name("conv")
        nodes.append(helper.make_node("Conv", [x, w], [c], name=c, kernel_shape=[kk, kk], strides=[stride, stride],
                                      pads=[kk // 2] * 4))
        b = name("bn")
        g = const(gamma * (1 + 0.1 * rng.standard_normal(cout)), "g")
        nodes.append(helper.make_node("BatchNormalization", [c, g,
                                                             const(0.1 * rng.standard_normal(cout), "b"),
                                                             const(0.1 * rng.standard_normal(cout), "m"),
                                                             const(1 + 0.1 * rng.random(cout), "v")], [b], name=b))
        if not relu:
            return b
        r = name("relu")
        nodes.append(helper.make_node("Relu", [b], [r], name=r))
        return r

    x = conv_bn("input", 3, width, 3, 1)
    cin = width
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for j in range(blocks * k):
            stride = 2 if (j == 0 and stage > 0) else 1
            mid = width * (2 ** stage)
            cout = mid * 4
            h = conv_bn(x, cin, mid, 1, 1)
            h = conv_bn(h, mid, mid, 3, stride)
            # a small last gamma keeps activations bounded in a 256-block random network (as zero-init does)
            h = conv_bn(h, mid, cout, 1, 1, relu=False, gamma=0.1)
            sc = conv_bn(x, cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else x
            a = name("add")
            nodes.append(helper.make_node("Add", [h, sc], [a], name=a))
            r = name("relu")
            nodes.append(helper.make_node("Relu", [a], [r], name=r))
            x, cin = r, cout
    p = name("gap")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [p], name=p))
    f = name("flatten")
    nodes.append(helper.make_node("Flatten", [p], [f], name=f))
    w = const(rng.standard_normal((1000, cin)) * 0.01, "fc_w")
    nodes.append(helper.make_node("Gemm", [f, w, const(np.zeros(1000), "fc_b")], ["logits"], name="fc", transB=1))
    g = helper.make_graph(nodes, f"deep_resnet_x{k}",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, image, image])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path
