"""TensorRT placement rules, as data.  Sources: docs/tensorrt.md (from the TensorRT ONNX parser,
NVIDIA's explicit-quantization guide and ModelOpt's ONNX placement).

* P1  quantize all inputs of weighted ops: per-tensor activation Q/DQ on input 0, per-channel weight
      DQ on input 1 (axis: Conv 0, ConvTranspose 1, Gemm 0 if transB else 1, MatMul last).
* P2  no Q/DQ on the output of a weighted op: the next layer's input Q is fused back into it.
* P3  nothing between a conv and its epilogue (BN, bias, Relu/Clip/LeakyRelu, Sigmoid*Mul, MaxPool).
* P4  residual Add: Q/DQ on the skip input only, so Conv+Add(+Relu) fuse with an int8 output.
* P5  pooling (AveragePool, GlobalAveragePool) is quantized when a quantized layer follows it.
* P6  commuting ops (MaxPool, Reshape, Transpose, Concat, ...) get no Q/DQ of their own.
* P7  Concat inputs and output share one scale (no requantization per branch).
* P8  never quantize graph outputs.
* P9  GEMV / small layers (K or N < 16; convs failing the channel rules) stay float: no fast kernels.
* R3/R8/R12  symmetric, zero point 0, activations per tensor, weights narrow [-127, 127].
"""

from __future__ import annotations

from . import DefaultQuant, SmallLayerRules, Target

EPILOGUE = frozenset({"BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Mul", "Add",
                      "MaxPool", "Min", "Max", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus", "Identity"})
COMMUTING = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice",
                       "Split", "Gather", "Pad", "Resize", "Upsample", "Identity", "Expand", "Tile", "DepthToSpace",
                       "SpaceToDepth"})

TARGET = Target(
    name="tensorrt",
    description="TensorRT int8/fp8 engines (explicit quantization, strongly typed)",
    display_name="TensorRT",
    aliases=("trt",),
    epilogue_ops=EPILOGUE,
    commuting_ops=COMMUTING,
    pooling_ops=frozenset({"AveragePool", "GlobalAveragePool"}),
    recurrent_ops=frozenset({"LSTM", "GRU", "RNN"}),
    placement=("weighted", "recurrent", "pooling", "residual", "concat-groups"),
    symmetric_only=True,
    allow_unsigned=False,
    per_channel_activations=False,
    quantize_bias_int32=False,
    small_layers=SmallLayerRules(),
    defaults={
        "int8": DefaultQuant(("s8", "per_channel_symmetric"), ("s8", "per_tensor_symmetric"), "percentile"),
        "fp8": DefaultQuant(("fp8e4m3", "per_channel_symmetric"), ("fp8e4m3", "per_tensor_symmetric"), "min_max"),
    },
    rules={
        "P1": "quantize all inputs of weighted ops",
        "P4": "residual Add: Q/DQ on the skip input only",
        "P5": "pooling quantized next to quantized layers",
        "P8": "no Q/DQ on graph outputs",
        "P9": "GEMV and small layers have no fast int8/fp8 kernels",
    },
)
