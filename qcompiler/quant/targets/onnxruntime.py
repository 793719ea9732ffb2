"""onnxruntime CPU placement rules, as data.

onnxruntime turns ``DQ -> op -> Q`` groups into integer kernels (QLinearConv, QGemm, QLinearMatMul,
QLinearAdd, QLinearAveragePool, QLinearGlobalAveragePool, QLinearConcat, ...) at ORT_ENABLE_EXTENDED
and above.  So, unlike TensorRT, every quantized op needs its *output* quantized too, an activation
that follows a conv (Relu, Clip) is absorbed into the conv's output quantization, and biases are
int32 (scale = activation scale x weight scale) so the conv fuses.  Activations default to u8
affine, onnxruntime's fastest x86 path (U8S8).
"""

from __future__ import annotations

from . import Target, conv_axis, convtranspose_axis, gemm_axis, matmul_axis
from .tensorrt import COMMUTING

ONNXRUNTIME = Target(
    name="onnxruntime",
    weight_axis={"Conv": conv_axis, "ConvTranspose": convtranspose_axis, "Gemm": gemm_axis, "MatMul": matmul_axis},
    epilogue_ops=frozenset({"Relu", "Clip"}),
    commuting_ops=COMMUTING - {"Concat", "MaxPool", "Resize"},
    pooling_ops=frozenset({"AveragePool", "GlobalAveragePool"}),
    quantized_ops=frozenset({"Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat", "MaxPool", "Resize",
                             "LeakyRelu", "Sigmoid"}),
    quantize_outputs=True,
    fused_activations=frozenset({"Relu", "Clip"}),
    residual="none",
    symmetric_only=False,
    allow_unsigned=True,
    per_channel_activations=False,
    quantize_bias_int32=True,
    skip_small_layers=False,
    concat_shared_scale=True,
    rules={"ORT1": "quantize inputs and outputs of quantized ops so onnxruntime picks integer kernels"},
)
