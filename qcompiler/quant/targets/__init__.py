"""Deployment targets: placement rules as data.

A target is one :class:`Target` value in a module of this package (``TARGET = Target(...)``):
``tensorrt.py`` (the product's main target; rules P1-P11 of docs/tensorrt.md) and ``onnxruntime.py``
(onnxruntime's QDQ fusions for CPU latency).  Modules are discovered, so a new target (a DLA or a CPU NPU
profile) is one new file here, or, from another package, one entry point in the ``qcompiler.targets`` group
naming a ``Target`` value (or a function returning one)::

    [project.entry-points."qcompiler.targets"]
    my-npu = "my_npu_plugin:TARGET"

The planner (qcompiler/quant/plan.py), the recipe checks and the passes only read these fields, never a target's
name.

What a target says:

* which ops are weighted layers it quantizes, which ops fuse into a layer's epilogue, which ones a Q/DQ
  moves through, which pools and which other ops get Q/DQ;
* ``placement``: the planner's steps, in order (see qcompiler/quant/plan.py, ``STEPS``);
* what its integer kernels accept (symmetric only, unsigned types, per-channel activations, int32 biases);
* ``small_layers``: the shape rule (P9) for layers without fast quantized kernels, as data;
* its default recipe and observer per precision, and the opsets its Q/DQ forms need.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict, dataclass, field
from typing import Any

from ...diagnostics import RecipeError
from ...ir.layers import LayerGeometry


@dataclass(frozen=True)
class SmallLayerRules:
    """Which layers have no fast quantized kernel (left float, rule P9), as numbers:

    * Gemm/MatMul: K or N below ``min_gemm_dim`` (GEMV and tiny GEMMs);
    * int8 convs: fine when Cin and Cout are both ``>= int8_min_channels``; else a dense conv needs Cout or
      Cin a multiple of ``int8_channel_multiple``, a square kernel, and (unless it is the first layer) one
      side ``>= int8_min_channels``; a grouped conv needs Cout a multiple of ``int8_channel_multiple`` and
      every kernel dim ``>= int8_grouped_min_kernel``;
    * fp8 convs: kernel area at most ``fp8_max_kernel_area``, both channel counts ``>= fp8_min_channels``,
      grouped/depthwise only with ``fp8_grouped``.
    """

    min_gemm_dim: int = 16
    int8_min_channels: int = 16
    int8_channel_multiple: int = 8
    int8_grouped_min_kernel: int = 3
    fp8_max_kernel_area: int = 32
    fp8_min_channels: int = 17
    fp8_grouped: bool = False

    def reason(self, geo: LayerGeometry, *, first: bool, fp8: bool, who: str = "the target") -> str | None:
        """Why this layer has no fast kernel (None when it has one)."""
        if geo.kind.is_dense:
            if geo.ndim != 2:
                return None
            k, n = geo.in_channels, geo.out_channels
            if k < self.min_gemm_dim or n < self.min_gemm_dim:
                return f"a {k}x{n} GEMM (K or N < {self.min_gemm_dim}) has no fast quantized kernel"
            return None
        cin, cout, g, kernel = geo.in_channels, geo.out_channels, geo.group, geo.kernel
        if fp8:
            area = 1
            for d in kernel:
                area *= int(d)
            if area > self.fp8_max_kernel_area:
                return (f"fp8 conv with a {'x'.join(map(str, kernel))} kernel (area > "
                        f"{self.fp8_max_kernel_area})")
            if min(cin, cout) < self.fp8_min_channels:
                return f"fp8 conv with {cin} -> {cout} channels (<= {self.fp8_min_channels - 1})"
            if g > 1 and not self.fp8_grouped:
                return "grouped/depthwise conv (no optimized fp8 kernels)"
            return None
        lo, m = self.int8_min_channels, self.int8_channel_multiple
        if cin >= lo and cout >= lo:
            return None
        if g == 1:
            square = len(set(kernel)) <= 1
            if (cout % m == 0 or cin % m == 0) and (first or max(cin, cout) >= lo) and square:
                return None
        elif cout % m == 0 and all(k >= self.int8_grouped_min_kernel for k in kernel):
            return None
        return f"int8 conv with {cin} -> {cout} channels fails {who}'s small-channel rules"


@dataclass(frozen=True)
class DefaultQuant:
    """A target's default recipe for one precision: weight and activation (dtype, qscheme), and the observer."""

    weight: tuple[str, str]
    activation: tuple[str, str]
    observer: str


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    #: how messages name it ("TensorRT")
    display_name: str = ""
    #: other names recipes and pass options may use (``trt``)
    aliases: tuple[str, ...] = ()
    #: weighted ops it quantizes (their per-channel axis comes from qcompiler.ir.layers)
    weighted_ops: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
    #: recurrent ops (``recurrent`` step): input X quantized per tensor, W and R per gate row (axis 1)
    recurrent_ops: frozenset[str] = frozenset()
    #: ops fused into a weighted op's epilogue: no Q/DQ between them and the op (P3)
    epilogue_ops: frozenset[str] = frozenset()
    #: ops a Q/DQ moves through (no Q/DQ of their own needed, P6)
    commuting_ops: frozenset[str] = frozenset()
    #: non-weighted ops quantized when their output flows into a quantized layer (P5)
    pooling_ops: frozenset[str] = frozenset()
    #: non-weighted ops with quantized inputs and outputs (the ``io-ops`` step)
    io_quantized_ops: frozenset[str] = frozenset()
    #: the rule the ``io-ops`` step's Q/DQ cite (a key of ``rules``)
    io_rule: str = "io"
    #: ops absorbed into the preceding op's output quantization (``io-ops``: Conv+Relu)
    fused_activations: frozenset[str] = frozenset()
    #: ops whose input and output share one scale (``concat-groups``: exact for MaxPool)
    same_scale_ops: frozenset[str] = frozenset()
    #: the planner's steps, in order (qcompiler/quant/plan.py STEPS)
    placement: tuple[str, ...] = ("weighted",)
    symmetric_only: bool = True
    allow_unsigned: bool = False
    per_channel_activations: bool = False
    quantize_bias_int32: bool = False
    #: None: every layer has a fast kernel
    small_layers: SmallLayerRules | None = None
    opset_int8: int = 13
    opset_fp8: int = 19
    opset_int4: int = 21
    #: default recipe per precision (the precisions the target supports)
    defaults: dict[str, DefaultQuant] = field(default_factory=dict)
    #: rule id -> meaning, for diagnostics and docs
    rules: dict[str, str] = field(default_factory=dict)

    def small_layer_reason(self, geo: LayerGeometry, *, first: bool, fp8: bool) -> str | None:
        """Why a layer has no fast quantized kernel on this target (None: it has one, or the target has no rule)."""
        if self.small_layers is None:
            return None
        return self.small_layers.reason(geo, first=first, fp8=fp8, who=self.display_name or self.name)

    def to_dict(self) -> dict[str, Any]:
        """The target as plain data (sets as sorted lists): ``qcompiler passes --targets`` and a build's record."""
        def plain(v: Any) -> Any:
            if isinstance(v, (set, frozenset)):
                return sorted(v)
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return {k: plain(v) for k, v in asdict(self).items()}

    def default(self, precision: str) -> DefaultQuant:
        d = self.defaults.get(precision)
        if d is None:
            raise RecipeError(f"target {self.name} has no {precision} quantization",
                              hint="precisions: " + ", ".join(self.defaults))
        return d


_TARGETS: dict[str, Target] = {}


def _plugin_targets() -> list[Target]:
    """Targets other packages register in the ``qcompiler.targets`` entry-point group, in name order; one that does
    not load or is not a Target is an error naming it."""
    from importlib.metadata import entry_points

    out = []
    for ep in sorted(entry_points(group="qcompiler.targets"), key=lambda e: e.name):
        try:
            obj = ep.load()
            t = obj() if callable(obj) and not isinstance(obj, Target) else obj
        except Exception as exc:  # noqa: BLE001 - a broken plugin
            raise RecipeError(f"target plugin '{ep.name}' ({ep.value}) does not load: {exc}",
                              hint="fix or uninstall the package that registers it") from None
        if not isinstance(t, Target):
            raise RecipeError(f"target plugin '{ep.name}' ({ep.value}) is a {type(t).__name__}, not a Target",
                              hint="point the entry point at a qcompiler.quant.targets.Target value")
        out.append(t)
    return out


def all_targets() -> dict[str, Target]:
    """Every target: each module's ``TARGET`` in this package, then the plugins' (entry points), by name."""
    if not _TARGETS:
        found: dict[str, Target] = {}
        for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            t = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "TARGET", None)
            if isinstance(t, Target):
                found[t.name] = t
        for t in _plugin_targets():
            if t.name in found:
                raise RecipeError(f"target plugin '{t.name}' has the name of a target qcompiler already has",
                                  hint="give the plugin's Target another name")
            found[t.name] = t
        _TARGETS.update(found)
    return dict(_TARGETS)


def target_names() -> tuple[str, ...]:
    return tuple(all_targets())


def get_target(name: str) -> Target:
    """A target by name or alias (case-insensitive)."""
    key = name.lower()
    for t in all_targets().values():
        if key == t.name or key in t.aliases:
            return t
    raise RecipeError(f"unknown target '{name}'", hint="targets: " + ", ".join(target_names()))
