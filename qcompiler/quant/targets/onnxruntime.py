"""onnxruntime CPU placement rules, as data.

onnxruntime turns ``DQ -> op -> Q`` groups into integer kernels (QLinearConv, QGemm, QLinearMatMul,
QLinearAdd, QLinearAveragePool, QLinearGlobalAveragePool, QLinearConcat, ...) at ORT_ENABLE_EXTENDED
and above.  So, unlike TensorRT, every quantized op needs its *output* quantized too, an activation
that follows a conv (Relu, Clip) is absorbed into the conv's output quantization, and biases are
int32 (scale = activation scale x weight scale) so the conv fuses.  MaxPool's input and output share
one scale, so it runs on int8 data.  Activations default to u8 affine, onnxruntime's fastest x86 path
(U8S8).
"""

from __future__ import annotations

from . import DefaultQuant, Target
from .tensorrt import COMMUTING

TARGET = Target(
    name="onnxruntime",
    description="onnxruntime CPU integer kernels (QLinearConv, QGemm, ...)",
    display_name="onnxruntime",
    aliases=("ort",),
    epilogue_ops=frozenset({"Relu", "Clip"}),
    commuting_ops=COMMUTING - {"Concat", "MaxPool", "Resize"},
    pooling_ops=frozenset({"AveragePool", "GlobalAveragePool"}),
    io_quantized_ops=frozenset({"Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat", "MaxPool", "Resize",
                                "LeakyRelu", "Sigmoid"}),
    fused_activations=frozenset({"Relu", "Clip"}),
    same_scale_ops=frozenset({"MaxPool"}),
    placement=("weighted", "io-ops", "pooling", "concat-groups"),
    symmetric_only=False,
    allow_unsigned=True,
    per_channel_activations=True,
    quantize_bias_int32=True,
    small_layers=None,
    defaults={
        "int8": DefaultQuant(("s8", "per_channel_symmetric"), ("u8", "per_tensor_affine"), "percentile"),
        "fp8": DefaultQuant(("fp8e4m3", "per_channel_symmetric"), ("fp8e4m3", "per_tensor_symmetric"), "min_max"),
    },
    io_rule="ORT1",
    rules={"ORT1": "quantize inputs and outputs of quantized ops so onnxruntime picks integer kernels"},
)
