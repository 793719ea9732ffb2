"""Golden tests of the torch bridge's op table against onnxruntime: one small graph per op."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

torch = pytest.importorskip("torch")

from qcompiler.bridge.module import GraphModule  # noqa: E402
from qcompiler.ir import import_model  # noqa: E402
from qcompiler.testing import run  # noqa: E402

from ..builders import single_op  # noqa: E402

R = np.random.default_rng(0)


def f32(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


def case(op, inputs, attrs=None, inits=None, n_out=1, opset=17, out_type=TensorProto.FLOAT):
    """inputs: list of (name, array) fed at run time; inits: list of (name, array) initializers."""
    return single_op(op, inputs, attrs, inits, n_out=n_out, opset=opset, out_type=out_type)


CASES = {
    "Conv": lambda: case("Conv", [("x", f32(2, 4, 7, 7))], {"pads": [1, 0, 2, 1], "strides": [2, 1], "group": 2},
                         [("w", f32(6, 2, 3, 3)), ("b", f32(6))]),
    "Conv1d-dilated": lambda: case("Conv", [("x", f32(2, 3, 11))], {"dilations": [2], "pads": [2, 2]},
                                   [("w", f32(5, 3, 3))]),
    "Conv-same-upper": lambda: case("Conv", [("x", f32(1, 3, 7, 8))], {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                                    [("w", f32(4, 3, 3, 3))]),
    "ConvTranspose": lambda: case("ConvTranspose", [("x", f32(2, 4, 5, 5))],
                                  {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1], "group": 2},
                                  [("w", f32(4, 3, 4, 4)), ("b", f32(6))]),
    "Gemm": lambda: case("Gemm", [("a", f32(3, 5))], {"transB": 1, "alpha": 0.5, "beta": 2.0},
                         [("b", f32(4, 5)), ("c", f32(4))]),
    "MatMul": lambda: case("MatMul", [("a", f32(2, 3, 5))], None, [("b", f32(5, 4))]),
    "Add": lambda: case("Add", [("a", f32(2, 3)), ("b", f32(3))]),
    "Sub": lambda: case("Sub", [("a", f32(2, 3)), ("b", f32(2, 3))]),
    "Mul": lambda: case("Mul", [("a", f32(2, 3)), ("b", f32(1, 3))]),
    "Div": lambda: case("Div", [("a", f32(2, 3)), ("b", f32(2, 3) + 5)]),
    "Relu": lambda: case("Relu", [("x", f32(3, 4))]),
    "LeakyRelu": lambda: case("LeakyRelu", [("x", f32(3, 4))], {"alpha": 0.2}),
    "PRelu": lambda: case("PRelu", [("x", f32(2, 3, 4))], None, [("s", f32(3, 1))]),
    "Clip": lambda: case("Clip", [("x", f32(3, 4, scale=5))], None, [("lo", np.array(0, np.float32)),
                                                                      ("hi", np.array(6, np.float32))]),
    "Sigmoid": lambda: case("Sigmoid", [("x", f32(3, 4))]),
    "HardSigmoid": lambda: case("HardSigmoid", [("x", f32(3, 4, scale=4))], {"alpha": 0.25}),
    "HardSwish": lambda: case("HardSwish", [("x", f32(3, 4, scale=4))]),
    "Tanh": lambda: case("Tanh", [("x", f32(3, 4))]),
    "Erf": lambda: case("Erf", [("x", f32(3, 4))]),
    "Gelu": lambda: case("Gelu", [("x", f32(3, 4))], None, None, opset=20),
    "Softmax": lambda: case("Softmax", [("x", f32(2, 3, 5))], {"axis": 1}),
    "LayerNormalization": lambda: case("LayerNormalization", [("x", f32(2, 3, 8))], {"epsilon": 1e-3},
                                       [("s", f32(8)), ("b", f32(8))]),
    "BatchNormalization": lambda: case("BatchNormalization", [("x", f32(2, 3, 4, 4))], None,
                                       [("s", f32(3)), ("b", f32(3)), ("m", f32(3)),
                                        ("v", np.abs(f32(3)) + 0.5)]),
    "MaxPool": lambda: case("MaxPool", [("x", f32(1, 2, 7, 7))], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                  "pads": [1, 1, 1, 1]}),
    "MaxPool-ceil": lambda: case("MaxPool", [("x", f32(1, 2, 8, 8))], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                       "ceil_mode": 1}),
    "AveragePool": lambda: case("AveragePool", [("x", f32(1, 2, 7, 7))],
                                {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "AveragePool-incl": lambda: case("AveragePool", [("x", f32(1, 2, 7, 7))],
                                     {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    "GlobalAveragePool": lambda: case("GlobalAveragePool", [("x", f32(2, 3, 4, 5))]),
    "Reshape": lambda: case("Reshape", [("x", f32(2, 3, 4))], None, [("s", np.array([0, -1], np.int64))]),
    "Flatten": lambda: case("Flatten", [("x", f32(2, 3, 4))], {"axis": 2}),
    "Transpose": lambda: case("Transpose", [("x", f32(2, 3, 4))], {"perm": [2, 0, 1]}),
    "Concat": lambda: case("Concat", [("a", f32(2, 3)), ("b", f32(2, 2))], {"axis": 1}),
    "Split": lambda: case("Split", [("x", f32(2, 6))], {"axis": 1}, [("s", np.array([2, 4], np.int64))], n_out=2),
    "Slice": lambda: case("Slice", [("x", f32(4, 6))], None, [("st", np.array([1, -5], np.int64)),
                                                               ("en", np.array([3, 100], np.int64)),
                                                               ("ax", np.array([0, 1], np.int64)),
                                                               ("sp", np.array([1, 2], np.int64))]),
    "Slice-neg-step": lambda: case("Slice", [("x", f32(5, 4))], None, [("st", np.array([-1], np.int64)),
                                                                        ("en", np.array([-100], np.int64)),
                                                                        ("ax", np.array([0], np.int64)),
                                                                        ("sp", np.array([-2], np.int64))]),
    "Squeeze": lambda: case("Squeeze", [("x", f32(2, 1, 3, 1))], None, [("a", np.array([1, 3], np.int64))]),
    "Unsqueeze": lambda: case("Unsqueeze", [("x", f32(2, 3))], None, [("a", np.array([0, 3], np.int64))]),
    "ReduceMean": lambda: case("ReduceMean", [("x", f32(2, 3, 4))], {"axes": [1, 2], "keepdims": 0}),
    "Resize-nearest": lambda: case("Resize", [("x", f32(1, 2, 3, 3))], {"mode": "nearest",
                                                                      "nearest_mode": "floor",
                                                                      "coordinate_transformation_mode": "asymmetric"},
                                   [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))]),
    "Resize-linear": lambda: case("Resize", [("x", f32(1, 2, 3, 3))], {"mode": "linear"},
                                  [("roi", np.zeros(0, np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))]),
    "Pad": lambda: case("Pad", [("x", f32(1, 2, 3, 3))], {"mode": "constant"},
                        [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)), ("v", np.array(0.5, np.float32))]),
    "Pad-reflect": lambda: case("Pad", [("x", f32(1, 2, 4, 4))], {"mode": "reflect"},
                                [("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]),
    "Identity": lambda: case("Identity", [("x", f32(3))]),
    "Gather": lambda: case("Gather", [("x", f32(5, 3))], {"axis": 0}, [("i", np.array([[0, -1], [2, 2]], np.int64))]),
    "Exp": lambda: case("Exp", [("x", f32(3))]),
    "Sqrt": lambda: case("Sqrt", [("x", np.abs(f32(3)))]),
    "Pow": lambda: case("Pow", [("x", np.abs(f32(3)) + 0.1)], None, [("e", np.array(2.0, np.float32))]),
    "Where": lambda: case("Where", [("c", np.array([True, False, True])), ("a", f32(3)), ("b", f32(3))]),
    "Expand": lambda: case("Expand", [("x", f32(3, 1))], None, [("s", np.array([2, 3, 4], np.int64))]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name):
    model, feeds = CASES[name]()
    onnx.checker.check_model(model)
    g = import_model(model)
    ref = run(g, feeds)
    mod = GraphModule(g)
    with torch.no_grad():
        got = mod({k: torch.as_tensor(v) for k, v in feeds.items()})
    for k, v in ref.items():
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-5, atol=1e-6, err_msg=name)


def test_shape_arithmetic_of_dynamic_exports(zoo):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (what the TorchScript exporter emits)."""
    from qcompiler.ir import load_model

    g = load_model(zoo.onnx_path("transformer"))
    x = np.random.default_rng(1).standard_normal((3, 1, 16, 16)).astype(np.float32)
    mod = GraphModule(g)
    with torch.no_grad():
        got = mod({"input": torch.as_tensor(x)})["logits"].numpy()
    np.testing.assert_allclose(got, run(g, {"input": x})["logits"], rtol=1e-4, atol=1e-5)


def test_unsupported_op_named_before_training():
    from qcompiler.diagnostics import BridgeError

    model, _ = case("Einsum", [("a", f32(2, 3)), ("b", f32(3, 4))], {"equation": "ij,jk->ik"})
    with pytest.raises(BridgeError) as info:
        GraphModule(import_model(model))
    assert "Einsum" in str(info.value) and info.value.diagnostic.node
