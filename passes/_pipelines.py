"""Named pipelines: ``tidy``, ``fp32-prep``, ``trt-int8``, ``trt-fp8``, ``ort-int8`` (registered with the built-in
passes by :func:`qcompiler.passes.register`).

Each is a function of its options returning pipeline text; they are elements of the pipeline
grammar like passes (``trt-int8{calib=entropy}``) and expand when run
(``qcompiler pipeline --print trt-int8 --expand``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.calib.observers import METHODS
from qcompiler.pm.options import format_value, option
from qcompiler.pm.registry import NamedPipeline


@dataclass(frozen=True)
class _NoOpts:
    pass


@dataclass(frozen=True)
class QuantOptions:
    calib: str = option("auto", "activation observer (auto: the recipe's, else the target default)",
                        choices=("auto",) + METHODS)
    cle: bool = option(False, "run cross-layer equalization before calibration")
    merge: bool = option(True, "merge conv -> 1x1 conv pairs (one quantization point fewer per pair)")
    fold_residual: bool = option(False, "fold y = Conv(x) + x into the conv kernel")
    weights: str = option("dq", "weight storage: dq (int8 initializer + DQ) or qdq (float + Q + DQ)",
                          choices=("dq", "qdq"))
    bias_correct: bool = option(False, "empirical bias correction after insert-qdq (needs calibration data)")
    finetune: str = option("none", "fine-tune after insert-qdq in torch: adaround (rounding) or lsq (step sizes)",
                           choices=("none", "adaround", "lsq"))
    target_sqnr: float = option(0.0, "if > 0: keep the most sensitive layers float until the output SQNR (dB) "
                                     "reaches this (mixed-precision pass)", min=0.0)
    smooth: str = option("auto", "SmoothQuant before calibration: auto (activations read by MatMul/Gemm/Conv whose "
                                 "channel ranges are 8x uneven or more: outlier channels), on (every MatMul/Gemm "
                                 "site), off", choices=("auto", "on", "off"))
    attention: str = option("float", "attention MatMuls (Q.K^T, P.V): float, or quantized (both inputs, the way "
                                     "TensorRT's MHA fusion takes them, T3)", choices=("float", "quantized"))
    guard: str = option("on", "accuracy guard after insert-qdq: an output part below guard-sqnr dB gets its worst "
                              "activation tensors back in float, within guard-budget of the MACs (guard pass)",
                        choices=("on", "off"))
    guard_sqnr: float = option(20.0, "the guard's threshold: output parts below this SQNR (dB) are unhealthy",
                               min=0.0)
    guard_budget: float = option(0.02, "most MACs (fraction) the guard may return to float", min=0.0, max=1.0)
    float_type: str = option("fp16", "the float type of everything not quantized (float-type pass): fp16, bf16, or "
                                     "fp32 (float parts as the model has them)", choices=("fp16", "bf16", "fp32"),
                             name="float")
    keep_io: bool = option(True, "graph inputs and outputs keep their declared types (false: they take the float "
                                 "type)")


def _float_steps(float_type: str, keep_io: bool) -> tuple[list[str], list[str]]:
    """(first steps, last steps) for the float type: an fp16/bf16 model is brought to float32 for the passes
    (nothing changes on a float32 model), and the float parts are written in the chosen type at the end."""
    io = "" if keep_io else " keep-io=false"
    return ["to-fp32"], [f"float-type{{type={float_type}{io}}}"]


def _quant(target: str, precision: str):
    def build(o: QuantOptions) -> str:
        first, last = _float_steps(o.float_type, o.keep_io)
        prep = ["cleanup"] + first + ["fold-constants", "fold-bn"]
        if o.merge:
            prep.append("merge-conv1x1")
        if o.fold_residual:
            prep.append("fold-residual")
        if o.cle:
            prep.append("cle")
        prep.append("cleanup")
        if o.smooth == "auto":
            prep.append("smooth-quant{layers=all min-ratio=8 max-samples=16 quiet=true}")
        elif o.smooth == "on":
            prep.append("smooth-quant")
        common = f"target={target} precision={precision}"
        if o.attention == "quantized":
            common += " attention=quantized"
        cal = f"calibrate{{{common}" + (f" method={o.calib}" if o.calib != "auto" else "") + \
            (" histograms=true keep-outputs=4" if o.guard == "on" else "") + "}"
        ins = f"insert-qdq{{{common}" + (f" weights={o.weights}" if o.weights != "dq" else "") + "}"
        tail = []
        if o.guard == "on":
            tail.append(f"guard{{sqnr={format_value(o.guard_sqnr)} budget={format_value(o.guard_budget)}}}")
        if o.bias_correct:
            tail.append("bias-correct")
        if o.finetune != "none":
            tail.append(o.finetune)
        if o.target_sqnr > 0:
            tail.append(f"mixed-precision{{target-sqnr={format_value(o.target_sqnr)}}}")
        if target == "tensorrt":  # onnxruntime's CPU kernels run float parts in fp32 anyway
            tail += last
        return ",".join(prep + [cal, ins] + tail + ["cleanup"])
    return build


@dataclass(frozen=True)
class WeightOnlyOptions:
    method: str = option("gptq", "how the blocked weights are rounded: rtn (round to nearest), awq (activation-aware "
                                 "scales first), gptq (second-order rounding; the best measured, docs/benchmarks.md), "
                                 "awq+gptq", choices=("rtn", "awq", "gptq", "awq+gptq"))
    block_size: int = option(32, "inputs per weight block (the reduction axis; TensorRT takes 32, 64, 128)", min=1)
    bits: int = option(4, "weight bits: 4 or 8", choices=(4, 8))
    float_type: str = option("fp16", "the float type of everything not quantized (float-type pass): fp16, bf16, or "
                                     "fp32", choices=("fp16", "bf16", "fp32"), name="float")
    keep_io: bool = option(True, "graph inputs and outputs keep their declared types")
    int8_below: float = option(26.0, "with gptq: a layer whose output SQNR at 4 bits stays below this (dB, GPTQ's own "
                                     "objective on the calibration data) gets 8-bit weights instead (0: never)",
                               min=0.0)


def _weight_only(target: str):
    def build(o: WeightOnlyOptions) -> str:
        precision = f"int{o.bits}-weights"
        common = f"target={target} precision={precision} block-size={o.block_size}"
        first, last = _float_steps(o.float_type, o.keep_io)
        steps = ["cleanup"] + first + ["fold-constants", "cleanup"]
        if "awq" in o.method:
            steps.append(f"awq{{bits={o.bits} block-size={o.block_size}}}")
        steps += [f"calibrate{{{common}}}", f"insert-qdq{{{common}}}"]
        if "gptq" in o.method:
            fb = f" fallback-db={format_value(o.int8_below)}" if o.int8_below > 0 and o.bits < 8 else ""
            steps.append(f"gptq{{inputs=fp32{fb}}}")
        return ",".join(steps + last + ["cleanup"])
    return build


@dataclass(frozen=True)
class OrtWeightOnlyOptions:
    method: str = option("gptq", "how the blocked int4 weights are rounded: rtn, awq, gptq or awq+gptq (as "
                                 "trt-int4-weights)", choices=("rtn", "awq", "gptq", "awq+gptq"))
    block_size: int = option(32, "inputs per weight block (a power of two >= 16: MatMulNBits' rule)", min=16)
    int8_below: float = option(26.0, "with gptq: a layer whose 4-bit output SQNR stays below this many dB keeps "
                                     "blocked int8 weights behind DequantizeLinear instead (0: never)", min=0.0)


def _ort_weight_only(o: OrtWeightOnlyOptions) -> str:
    w = WeightOnlyOptions(method=o.method, block_size=o.block_size, bits=4, float_type="fp32", keep_io=True,
                          int8_below=o.int8_below)
    return _weight_only("tensorrt")(w) + ",matmul-nbits"


#: the named pipelines, registered by qcompiler.passes.register
PIPELINES = [
    NamedPipeline(
        "tidy", "dead code, Identity, constant folding until nothing changes",
        lambda o: "cleanup,repeat{max-steps=4}(fold-constants,cleanup)", _NoOpts),
    NamedPipeline(
        "fp32-prep", "all FP32-preserving rewrites: fold-bn, merge-conv1x1, fold-residual, cle, cleanup",
        lambda o: "fold-bn,merge-conv1x1,fold-residual,cle,cleanup", _NoOpts),
    NamedPipeline(
        "trt-int8", "TensorRT int8: fold-bn, merge-conv1x1, calibrate, insert-qdq (symmetric, per-channel weights)",
        _quant("tensorrt", "int8"), QuantOptions,
        doc="Q/DQ placed for TensorRT's int8 fusions (docs/tensorrt.md); opset >= 13; output passes lint-trt."),
    NamedPipeline(
        "trt-fp8", "TensorRT fp8 (E4M3): fold-bn, merge-conv1x1, calibrate, insert-qdq at opset 19",
        _quant("tensorrt", "fp8"), QuantOptions,
        doc="FP8 Q/DQ (opset 19, float8e4m3fn zero points, saturate=1); needs an Ada/Hopper GPU to build."),
    NamedPipeline(
        "trt-int4-weights", "TensorRT weight-only int4: MatMul/Gemm weights in blocks (opset 21), activations float",
        _weight_only("tensorrt"), WeightOnlyOptions,
        doc="For transformer-class models: blocked int4 (or int8) weights behind DequantizeLinear with block_size, "
            "rounded by GPTQ (default), AWQ's activation-aware scales or round-to-nearest; convolutions and "
            "activations stay float."),
    NamedPipeline(
        "ort-int4-weights", "onnxruntime weight-only int4: MatMul weights as com.microsoft MatMulNBits (float32 "
                            "activations)", _ort_weight_only, OrtWeightOnlyOptions,
        doc="trt-int4-weights' blocked int4 weights (GPTQ by default) in onnxruntime's MatMulNBits form, which its "
            "CPU and CUDA providers run with packed 4-bit weights (1.3-1.4x faster than DequantizeLinear "
            "feeding a MatMul on MiniLM-L3, one CPU core); TensorRT cannot read it."),
    NamedPipeline(
        "ort-int8", "onnxruntime CPU int8: Q/DQ on op inputs and outputs so onnxruntime picks integer kernels",
        _quant("onnxruntime", "int8"), QuantOptions,
        doc="u8 affine activations, s8 per-channel weights, int32 biases (onnxruntime's QLinearConv/QGemm path)."),
]
