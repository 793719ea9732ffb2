"""Deployment targets: placement rules as data.  ``insert-qdq`` only consults them.

See ``tensorrt.py`` (the product's main target; rules P1-P11 of docs/tensorrt.md) and
``onnxruntime.py`` (onnxruntime's QDQ fusions for CPU latency).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx_graphsurgeon as gs

from ...diagnostics import RecipeError


def conv_axis(node: gs.Node) -> int:
    return 0


def convtranspose_axis(node: gs.Node) -> int:
    return 1


def gemm_axis(node: gs.Node) -> int:
    return 0 if int(node.attrs.get("transB", 0)) else 1


def matmul_axis(node: gs.Node) -> int:
    return -1


@dataclass(frozen=True)
class Target:
    name: str
    #: op -> function giving the per-channel axis of its weight (input 1)
    weight_axis: dict[str, Callable[[gs.Node], int]]
    #: ops fused into a weighted op's epilogue: never put Q/DQ between them and the op (P3)
    epilogue_ops: frozenset[str]
    #: ops a Q/DQ moves through (no Q/DQ of their own needed, P6)
    commuting_ops: frozenset[str]
    #: non-weighted ops quantized when their output flows into a quantized layer (P5)
    pooling_ops: frozenset[str]
    #: non-weighted ops whose inputs and output are all quantized (onnxruntime QLinear* kernels)
    quantized_ops: frozenset[str] = frozenset()
    #: quantize the outputs of quantized ops (onnxruntime needs DQ->op->Q to pick integer kernels)
    quantize_outputs: bool = False
    #: ops absorbed into the preceding op's output quantization (onnxruntime: Conv+Relu)
    fused_activations: frozenset[str] = frozenset()
    residual: str = "skip-input"  # skip-input | none
    symmetric_only: bool = True
    allow_unsigned: bool = False
    per_channel_activations: bool = False
    quantize_bias_int32: bool = False
    skip_small_layers: bool = True
    concat_shared_scale: bool = True
    opset_int8: int = 13
    opset_fp8: int = 19
    opset_int4: int = 21
    rules: dict[str, str] = field(default_factory=dict)


def get_target(name: str) -> Target:
    if name == "tensorrt":
        from .tensorrt import TENSORRT

        return TENSORRT
    if name == "onnxruntime":
        from .onnxruntime import ONNXRUNTIME

        return ONNXRUNTIME
    raise RecipeError(f"unknown target '{name}'", hint="targets: tensorrt, onnxruntime")
