"""The op table of the torch bridge: ONNX semantics in torch, one function per op.

Each function takes (inputs: list of tensors or None, attrs: dict, opset: int) and returns a list of
outputs.  Integer "shape" tensors (Shape, Gather, Concat on shapes, ...) are int64 torch tensors, so
dynamic-batch exports run as they do in onnxruntime.  QuantizeLinear/DequantizeLinear are not here:
the module turns them into differentiable fake-quant (qcompiler/bridge/fakequant.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..diagnostics import BridgeError
from ..ir.layers import ConvAttrs

OpFn = Callable[[list, dict, int], list]
OPS: dict[str, OpFn] = {}


def op(*names: str):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _ints(v) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.reshape(-1).tolist()]
    return [int(x) for x in v]


def _axes(inputs: list, attrs: dict, idx: int = 1) -> list[int] | None:
    if "axes" in attrs:
        return _ints(attrs["axes"])
    if len(inputs) > idx and inputs[idx] is not None:
        return _ints(inputs[idx])
    return None


def _pads_for(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    n = len(pads) // 2
    if not any(pads):
        return x
    # ONNX pads: [b1, b2, ..., e1, e2, ...] over the spatial dims; F.pad wants the last dim first
    torch_pads: list[int] = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    return F.pad(x, torch_pads, value=value)


@op("Conv")
def conv(ins, a, _):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    ca = ConvAttrs.from_attrs(a, tuple(w.shape))
    begin, end = ca.pads_for(x.shape[2:])
    x = _pads_for(x, list(begin) + list(end))
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return [fn(x, w, b, stride=list(ca.strides), padding=0, dilation=list(ca.dilations), groups=ca.group)]


@op("ConvTranspose")
def conv_transpose(ins, a, _):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    ca = ConvAttrs.from_attrs(a, tuple(w.shape))
    if "output_shape" in a or ca.auto_pad != "NOTSET" or ca.pads_begin is None or ca.pads_end is None:
        raise NotImplementedError("ConvTranspose with output_shape/auto_pad")
    pads = list(ca.pads_begin) + list(ca.pads_end)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    sym = [min(pads[i], pads[i + n]) for i in range(n)]
    y = fn(x, w, b, stride=list(ca.strides), padding=sym, output_padding=list(ca.output_padding), groups=ca.group,
           dilation=list(ca.dilations))
    extra = [(pads[i] - sym[i], pads[i + n] - sym[i]) for i in range(n)]
    if any(e for pair in extra for e in pair):  # asymmetric pads: crop the rest
        sl = [slice(None), slice(None)] + [slice(e0, y.shape[2 + i] - e1) for i, (e0, e1) in enumerate(extra)]
        y = y[tuple(sl)]
    return [y]


@op("Gemm")
def gemm(ins, a, _):
    A, B = ins[0], ins[1]
    if int(a.get("transA", 0)):
        A = A.t()
    if int(a.get("transB", 0)):
        B = B.t()
    y = float(a.get("alpha", 1.0)) * (A @ B)
    if len(ins) > 2 and ins[2] is not None:
        y = y + float(a.get("beta", 1.0)) * ins[2]
    return [y]


@op("MatMul")
def matmul(ins, a, _):
    return [torch.matmul(ins[0], ins[1])]


def _binary(fn):
    return lambda ins, a, _: [fn(ins[0], ins[1])]


OPS["Add"] = _binary(torch.add)
OPS["Sub"] = _binary(torch.sub)
OPS["Mul"] = _binary(torch.mul)
OPS["Pow"] = _binary(torch.pow)
OPS["Equal"] = _binary(torch.eq)
OPS["Greater"] = _binary(torch.gt)
OPS["Less"] = _binary(torch.lt)


@op("Div")
def div(ins, a, _):
    x, y = ins
    if not x.is_floating_point() and not y.is_floating_point():
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


@op("Min")
def min_(ins, a, _):
    out = ins[0]
    for t in ins[1:]:
        out = torch.minimum(out, t)
    return [out]


@op("Max")
def max_(ins, a, _):
    out = ins[0]
    for t in ins[1:]:
        out = torch.maximum(out, t)
    return [out]


def _unary(fn):
    return lambda ins, a, _: [fn(ins[0])]


for _n, _f in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
               "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
               "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
               "Softplus": F.softplus, "Not": torch.logical_not}.items():
    OPS[_n] = _unary(_f)


@op("Identity", "Dropout")
def identity(ins, a, _):
    return [ins[0]]


@op("LeakyRelu")
def leaky_relu(ins, a, _):
    return [F.leaky_relu(ins[0], float(a.get("alpha", 0.01)))]


@op("PRelu")
def prelu(ins, a, _):
    x, slope = ins
    return [torch.where(x >= 0, x, x * slope)]


@op("Clip")
def clip(ins, a, opset):
    x = ins[0]
    lo = a.get("min") if opset < 11 else (ins[1] if len(ins) > 1 else None)
    hi = a.get("max") if opset < 11 else (ins[2] if len(ins) > 2 else None)
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return [x]


@op("HardSigmoid")
def hard_sigmoid(ins, a, _):
    return [torch.clamp(float(a.get("alpha", 0.2)) * ins[0] + float(a.get("beta", 0.5)), 0, 1)]


@op("HardSwish")
def hard_swish(ins, a, _):
    return [F.hardswish(ins[0])]


@op("Gelu")
def gelu(ins, a, _):
    approx = a.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [F.gelu(ins[0], approximate="tanh" if approx == "tanh" else "none")]


@op("Softmax")
def softmax(ins, a, opset):
    axis = int(a.get("axis", -1 if opset >= 13 else 1))
    if opset >= 13:
        return [torch.softmax(ins[0], dim=axis)]
    x = ins[0]
    shape = x.shape
    ax = axis % x.dim()
    flat = x.reshape(int(torch.tensor(shape[:ax]).prod()) if ax else 1, -1)
    return [torch.softmax(flat, dim=1).reshape(shape)]


@op("LayerNormalization")
def layer_norm(ins, a, _):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = int(a.get("axis", -1)) % x.dim()
    shape = x.shape[axis:]
    return [F.layer_norm(x, shape, scale.expand(shape) if scale.shape != shape else scale,
                         None if bias is None else (bias.expand(shape) if bias.shape != shape else bias),
                         eps=float(a.get("epsilon", 1e-5)))]


@op("BatchNormalization")
def batch_norm(ins, a, _):
    x, s, b, m, v = ins[:5]
    return [F.batch_norm(x, m, v, s, b, training=False, eps=float(a.get("epsilon", 1e-5)))]


def _pool(ins, a, kind: str):
    x = ins[0]
    n = x.dim() - 2
    ca = ConvAttrs.from_attrs(a, (0, 0) + tuple(a["kernel_shape"]))  # a pool's window reads like a kernel
    kernel, strides, dil = list(ca.kernel), list(ca.strides), list(ca.dilations)
    begin, end = ca.pads_for(x.shape[2:])
    pads = list(begin) + list(end)
    ceil = bool(int(a.get("ceil_mode", 0)))
    fn: Any
    if kind == "max":
        x = _pads_for(x, pads, value=-math.inf)
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
        return [fn(x, kernel, strides, 0, dil, ceil_mode=ceil)]
    include = bool(int(a.get("count_include_pad", 0)))
    if not any(pads):
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return [fn(x, kernel, strides, 0, ceil_mode=ceil)]
    xp = _pads_for(x, pads)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    s = fn(xp, kernel, strides, 0, ceil_mode=ceil) * float(math.prod(kernel))
    if include:
        return [s / float(math.prod(kernel))]
    ones = _pads_for(torch.ones_like(x[:1, :1]), pads)
    cnt = fn(ones, kernel, strides, 0, ceil_mode=ceil) * float(math.prod(kernel))
    return [s / cnt]


OPS["MaxPool"] = lambda ins, a, _: _pool(ins, a, "max")
OPS["AveragePool"] = lambda ins, a, _: _pool(ins, a, "avg")


@op("GlobalAveragePool")
def gap(ins, a, _):
    x = ins[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("GlobalMaxPool")
def gmp(ins, a, _):
    x = ins[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


@op("Reshape")
def reshape(ins, a, _):
    x, shape = ins[0], _ints(ins[1])
    allow_zero = int(a.get("allowzero", 0))
    out = [x.shape[i] if (d == 0 and not allow_zero) else d for i, d in enumerate(shape)]
    return [x.reshape(out)]


@op("Flatten")
def flatten(ins, a, _):
    x = ins[0]
    axis = int(a.get("axis", 1)) % max(x.dim(), 1) if x.dim() else 0
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return [x.reshape(lead, -1)]


@op("Transpose")
def transpose(ins, a, _):
    x = ins[0]
    perm = list(a.get("perm", reversed(range(x.dim()))))
    return [x.permute(perm)]


@op("Concat")
def concat(ins, a, _):
    return [torch.cat([t for t in ins if t is not None], dim=int(a["axis"]))]


@op("Split")
def split(ins, a, opset):
    x = ins[0]
    axis = int(a.get("axis", 0))
    sizes = _ints(a["split"]) if "split" in a else (_ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None)
    n_out = a.get("__n_outputs__", 2)
    if sizes is None:
        if "num_outputs" in a:
            n_out = int(a["num_outputs"])
        size = x.shape[axis]
        chunk = -(-size // n_out)
        sizes = [min(chunk, size - i * chunk) for i in range(n_out)]
    return list(torch.split(x, sizes, dim=axis))


@op("Slice")
def slice_(ins, a, opset):
    x = ins[0]
    if opset < 10:
        starts, ends = _ints(a["starts"]), _ints(a["ends"])
        axes = _ints(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    idx: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % x.dim()
        size = x.shape[ax]
        if st < 0:
            return [_neg_slice(x, starts, ends, axes, steps)]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        idx[ax] = slice(s, e, st)
    return [x[tuple(idx)]]


def _neg_slice(x, starts, ends, axes, steps):
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % x.dim()
        size = x.shape[ax]
        s = size - 1 if s >= size else (s + size if s < 0 else s)
        e = -1 if e < -size else (e + size if e < 0 else e)
        ids = torch.arange(s, e, st)
        x = x.index_select(ax, ids)
    return x


@op("Squeeze")
def squeeze(ins, a, _):
    x = ins[0]
    axes = _axes(ins, a)
    if axes is None:
        return [x.squeeze()]
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return [x]


@op("Unsqueeze")
def unsqueeze(ins, a, _):
    x = ins[0]
    axes = _axes(ins, a)
    if axes is None:
        raise BridgeError("Unsqueeze without axes", code="QC602")
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return [x]


def _reduce(fn):
    def run(ins, a, opset):
        x = ins[0]
        axes = _axes(ins, a)
        keep = bool(int(a.get("keepdims", 1)))
        if axes is None or len(axes) == 0:
            if int(a.get("noop_with_empty_axes", 0)) and axes is not None:
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, dim=tuple(ax % x.dim() for ax in axes), keepdim=keep)]
    return run


OPS["ReduceMean"] = _reduce(torch.mean)
OPS["ReduceSum"] = _reduce(torch.sum)
OPS["ReduceMax"] = _reduce(torch.amax)
OPS["ReduceMin"] = _reduce(torch.amin)


@op("Resize", "Upsample")
def resize(ins, a, opset):
    x = ins[0]
    mode = a.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = None
    scales = None
    if len(ins) > 3 and ins[3] is not None and ins[3].numel():
        sizes = _ints(ins[3])[2:]
    elif len(ins) > 2 and ins[2] is not None and ins[2].numel():
        scales = [float(s) for s in ins[2].reshape(-1).tolist()][2:]
    elif len(ins) > 1 and ins[1] is not None and ins[1].numel():
        scales = [float(s) for s in ins[1].reshape(-1).tolist()][2:]
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if mode == "nearest":
        return [F.interpolate(x, size=sizes, scale_factor=scales, mode="nearest")]
    align = ctm == "align_corners"
    m = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    return [F.interpolate(x, size=sizes, scale_factor=scales, mode=m, align_corners=align)]


@op("Pad")
def pad(ins, a, opset):
    x = ins[0]
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(a["pads"]) if "pads" in a else _ints(ins[1])
    value = float(a.get("value", 0.0)) if opset < 11 else (float(ins[2]) if len(ins) > 2 and ins[2] is not None
                                                          and ins[2].numel() else 0.0)
    n = x.dim()
    torch_pads: list[int] = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    if mode != "constant":  # torch pads only trailing (spatial) dims in these modes: drop leading zero pairs
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
    return [F.pad(x, torch_pads, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode],
                  value=value if mode == "constant" else None)]


@op("Constant")
def constant(ins, a, _):
    return [a["__value__"]]


@op("Shape")
def shape(ins, a, _):
    s = torch.tensor(list(ins[0].shape), dtype=torch.int64)
    start, end = int(a.get("start", 0)), a.get("end")
    return [s[start:(int(end) if end is not None else None)]]


@op("Size")
def size(ins, a, _):
    return [torch.tensor(ins[0].numel(), dtype=torch.int64)]


@op("Gather")
def gather(ins, a, _):
    x, idx = ins
    axis = int(a.get("axis", 0)) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))]


_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


@op("Cast")
def cast(ins, a, _):
    return [ins[0].to(_DTYPES[int(a["to"])])]


@op("Expand")
def expand(ins, a, _):
    x, shape = ins[0], _ints(ins[1])
    out_shape = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [x.expand(out_shape)]


@op("Tile")
def tile(ins, a, _):
    return [ins[0].repeat(_ints(ins[1]))]


@op("Where")
def where(ins, a, _):
    return [torch.where(ins[0].bool(), ins[1], ins[2])]


@op("ConstantOfShape")
def constant_of_shape(ins, a, _):
    v = a.get("__value__")
    fill = v.reshape(-1)[0] if v is not None else torch.tensor(0.0)
    return [torch.full(_ints(ins[0]), fill.item(), dtype=fill.dtype)]


@op("Range")
def range_(ins, a, _):
    return [torch.arange(ins[0].item(), ins[1].item(), ins[2].item(), dtype=ins[0].dtype)]
