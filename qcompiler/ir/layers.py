"""Weighted layers as typed descriptions: their kind and where the channels of their weight are.

One place answers "which axis of this weight is the output channel?" for every module: the FP32 rewrites
(fold-bn, cle, merge-conv1x1, fold-residual, absorb-bias, bias-correct), the placement planner (per-channel
axes, TensorRT's small-layer rule P9) and the lint.

==================  =========================  ================  ===============  ============
kind                weight layout              output channels   input channels   out axis
==================  =========================  ================  ===============  ============
Conv (group g)      [Cout, Cin/g, k...]        shape[0]          shape[1] * g     0
ConvTranspose (g)   [Cin, Cout/g, k...]        shape[1] * g      shape[0]         1
Gemm transB=0       B [K, N]                   N = shape[1]      K = shape[0]     1
Gemm transB=1       B [N, K]                   N = shape[0]      K = shape[1]     0
MatMul              B [..., K, N]              N = shape[-1]     K = shape[-2]    ndim - 1
==================  =========================  ================  ===============  ============

The activation channel axis (where a per-output-channel vector sits in the layer's output) is 1 for
convolutions and the last axis for Gemm/MatMul.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from .query import attr, const_source, const_value


class LayerKind(str, enum.Enum):
    CONV = "Conv"
    CONV_TRANSPOSE = "ConvTranspose"
    GEMM = "Gemm"
    MATMUL = "MatMul"

    @property
    def is_conv(self) -> bool:
        """Conv or ConvTranspose: channels on axis 1 of activations, kernels on axes 2..."""
        return self in (LayerKind.CONV, LayerKind.CONV_TRANSPOSE)

    @property
    def is_dense(self) -> bool:
        """Gemm or MatMul: channels on the last axis of activations."""
        return not self.is_conv

    @property
    def activation_channel_axis(self) -> int:
        return 1 if self.is_conv else -1

    @staticmethod
    def of(op: str) -> "LayerKind | None":
        try:
            return LayerKind(op)
        except ValueError:
            return None


#: ONNX op types of weighted layers
WEIGHTED_OPS: tuple[str, ...] = tuple(k.value for k in LayerKind)


@dataclass(frozen=True)
class LayerGeometry:
    """Kind, weight shape, group and transB of a weighted layer: everything channel arithmetic needs."""

    kind: LayerKind
    weight_shape: tuple[int, ...]
    group: int = 1
    trans_b: bool = False

    @staticmethod
    def of(node: gs.Node, weight_shape: tuple[int, ...] | None = None) -> "LayerGeometry | None":
        """The geometry of a weighted node (its weight shape read from the constant behind input 1 unless
        given; values are not loaded).  None when the node is not a weighted op or its weight shape is unknown."""
        kind = LayerKind.of(node.op)
        if kind is None or len(node.inputs) < 2:
            return None
        if weight_shape is None:
            src = const_source(node.inputs[1])
            if src is not None:
                weight_shape = tuple(int(d) for d in src.shape)
            else:
                w = const_value(node.inputs[1])
                if w is None:
                    return None
                weight_shape = tuple(w.shape)
        group = int(attr(node, "group", 1)) if kind.is_conv else 1
        if group < 1 or (kind is LayerKind.CONV and (not weight_shape or weight_shape[0] % group)):
            return None  # an invalid group (the model is broken): not a layer the passes can reason about
        trans_b = kind is LayerKind.GEMM and bool(int(attr(node, "transB", 0)))
        return LayerGeometry(kind, tuple(weight_shape), group, trans_b)

    @property
    def ndim(self) -> int:
        return len(self.weight_shape)

    @property
    def out_axis(self) -> int:
        """Axis of the weight that indexes output channels (the per-channel quantization axis)."""
        if self.kind is LayerKind.CONV:
            return 0
        if self.kind is LayerKind.CONV_TRANSPOSE:
            return 1
        if self.kind is LayerKind.GEMM:
            return 0 if self.trans_b else 1
        return self.ndim - 1

    @property
    def in_axis(self) -> int:
        """Axis of the weight that indexes input channels (within a group for convolutions)."""
        if self.kind is LayerKind.CONV:
            return 1
        if self.kind is LayerKind.CONV_TRANSPOSE:
            return 0
        if self.kind is LayerKind.GEMM:
            return 1 if self.trans_b else 0
        return self.ndim - 2

    @property
    def out_channels(self) -> int:
        n = self.weight_shape[self.out_axis]
        return n * self.group if self.kind is LayerKind.CONV_TRANSPOSE else n

    @property
    def in_channels(self) -> int:
        n = self.weight_shape[self.in_axis]
        return n * self.group if self.kind is LayerKind.CONV else n

    @property
    def kernel(self) -> tuple[int, ...]:
        """Spatial kernel dims (empty for Gemm/MatMul)."""
        return tuple(self.weight_shape[2:]) if self.kind.is_conv else ()

    @property
    def per_channel_writable(self) -> bool:
        """A per-output-channel scale can be written along ``out_axis`` (not for grouped ConvTranspose, whose
        axis 1 is Cout/group long)."""
        return not (self.kind is LayerKind.CONV_TRANSPOSE and self.group > 1)


@dataclass(frozen=True)
class ConvAttrs:
    """A convolution's spatial attributes, read once (the FP32 rewrites, GPTQ's patches and the torch bridge all
    use this): kernel, strides, dilations, explicit pads (begin, end), group, output_padding (ConvTranspose)
    and auto_pad.  ``pads_begin``/``pads_end`` are None for ``auto_pad=SAME_*`` with strides > 1, whose padding
    depends on the input size (:meth:`pads_for`)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...] | None
    pads_end: tuple[int, ...] | None
    group: int = 1
    output_padding: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"

    @staticmethod
    def from_attrs(attrs: dict, weight_shape: tuple[int, ...]) -> "ConvAttrs":
        k = tuple(int(d) for d in (attrs.get("kernel_shape") or weight_shape[2:]))
        n = len(k)
        strides = tuple(int(s) for s in (attrs.get("strides") or [1] * n))
        dil = tuple(int(d) for d in (attrs.get("dilations") or [1] * n))
        group = int(attrs.get("group", 1) or 1)
        outpad = tuple(int(v) for v in (attrs.get("output_padding") or [0] * n))
        auto = attrs.get("auto_pad", "NOTSET")
        auto = (auto.decode() if isinstance(auto, bytes) else auto) or "NOTSET"
        if auto == "NOTSET":
            pads = [int(p) for p in (attrs.get("pads") or [0] * (2 * n))]
            return ConvAttrs(k, strides, dil, tuple(pads[:n]), tuple(pads[n:]), group, outpad, auto)
        if auto == "VALID":
            return ConvAttrs(k, strides, dil, (0,) * n, (0,) * n, group, outpad, auto)
        if all(s == 1 for s in strides):  # SAME_* with unit strides: the padding does not depend on the size
            begin, end = ConvAttrs._same(k, strides, dil, auto, [1] * n)
            return ConvAttrs(k, strides, dil, begin, end, group, outpad, auto)
        return ConvAttrs(k, strides, dil, None, None, group, outpad, auto)

    @staticmethod
    def of(node: gs.Node, weight_shape: tuple[int, ...]) -> "ConvAttrs":
        return ConvAttrs.from_attrs(dict(node.attrs), weight_shape)

    @staticmethod
    def _same(k, strides, dil, auto: str, sizes) -> tuple[tuple[int, ...], tuple[int, ...]]:
        begin, end = [], []
        for i, size in enumerate(sizes):
            out = -(-int(size) // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - int(size))
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
        return tuple(begin), tuple(end)

    def pads_for(self, sizes) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(begin, end) pads for an input of spatial ``sizes`` (auto_pad resolved)."""
        if self.pads_begin is not None and self.pads_end is not None:
            return self.pads_begin, self.pads_end
        return self._same(self.kernel, self.strides, self.dilations, self.auto_pad, sizes)

    @property
    def is_1x1(self) -> bool:
        return all(k == 1 for k in self.kernel)

    @property
    def unit_stride(self) -> bool:
        return all(s == 1 for s in self.strides)

    @property
    def no_padding(self) -> bool:
        return self.pads_begin is not None and not any(self.pads_begin) and not any(self.pads_end or ())
