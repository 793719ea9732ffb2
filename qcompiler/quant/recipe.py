"""Quantization recipes: which layers get which quantization, as data (YAML, JSON or Python).

Precedence, lowest to highest: ``global`` < ``op_types`` < ``patterns`` (in file order; glob on node
names, or a regular expression written ``re:...``) < ``nodes`` (exact node names).  Each level may
set ``weight`` and/or ``activation`` (the input activation of the layer); ``float`` leaves the node
unquantized.  Example::

    target: tensorrt
    global:
      weight: {dtype: s8, qscheme: per_channel_symmetric}
      activation: {dtype: s8, qscheme: per_tensor_symmetric, observer: percentile, percentile: 99.99}
    op_types:
      ConvTranspose: {weight: {dtype: s8, qscheme: per_tensor_symmetric}}
    patterns:
      "*/head/*": float
      "re:.*attn.*MatMul.*": {activation: {observer: min_max}}
    nodes:
      /stem/conv/Conv: float
    options: {quantize_bmm: false, skip_small_layers: true}
    calibration: {batch_size: 16, max_samples: 512}

The EQuant form, a list of ``{weight, activation, layers}`` schemes (later entries win), works too::

    - weight: {dtype: s4, qscheme: per_channel_symmetric}
      activation: {dtype: s8, qscheme: per_tensor_symmetric, observer: percentile}
      layers: ['*']
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs

from ..diagnostics import DiagnosticEngine, RecipeError, TargetError
from ..fsutil import read_structured
from .qspec import QSpec, parse_qspec

_UNSET = object()
TOP_KEYS = ("target", "precision", "global", "op_types", "patterns", "nodes", "options", "calibration", "schemes")
OPTION_KEYS = {
    "quantize_bmm": "quantize the two activation inputs of attention MatMuls (Q.K^T, P.V)",
    "skip_small_layers": "leave GEMV / small-channel layers that have no fast int8/fp8 kernels in float (P9)",
    "quantize_residual": "quantize the skip input of residual Adds so Conv+Add fuse (P4)",
    "quantize_pooling": "quantize AveragePool/GlobalAveragePool inputs next to quantized layers (P5)",
    "quantize_layernorm": "quantize the input of LayerNormalization (kept float by default, T2)",
}
CALIB_KEYS = ("method", "percentile", "bins", "batch_size", "max_samples", "preprocess", "averaging_constant",
              "range_method")


@dataclass
class Rule:
    weight: Any = _UNSET  # QSpec | None (float) | _UNSET (inherit)
    activation: Any = _UNSET

    def apply(self, w: Any, a: Any) -> tuple[Any, Any]:
        return (w if self.weight is _UNSET else self.weight, a if self.activation is _UNSET else self.activation)


@dataclass(frozen=True)
class NodeConfig:
    weight: QSpec | None
    activation: QSpec | None

    @property
    def is_float(self) -> bool:
        return self.weight is None and self.activation is None


@dataclass
class Recipe:
    target: str = "tensorrt"
    precision: str = "int8"
    global_rule: Rule = field(default_factory=Rule)
    op_types: dict[str, Rule] = field(default_factory=dict)
    patterns: list[tuple[str, Rule]] = field(default_factory=list)
    nodes: dict[str, Rule] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the data it was read from (saved beside outputs)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    # -- resolution ------------------------------------------------------------------------
    def resolve(self, node: gs.Node) -> NodeConfig:
        w, a = self.global_rule.apply(None, None)
        if node.op in self.op_types:
            w, a = self.op_types[node.op].apply(w, a)
        for pat, rule in self.patterns:
            if _match(pat, node.name):
                w, a = rule.apply(w, a)
        if node.name in self.nodes:
            w, a = self.nodes[node.name].apply(w, a)
        return NodeConfig(None if w is _UNSET else w, None if a is _UNSET else a)

    def check_patterns(self, graph: gs.Graph, diagnostics: DiagnosticEngine | None) -> list[str]:
        """Warn (QC505) for patterns and node names that match no node of the graph."""
        names = [n.name for n in graph.nodes]
        unused = []
        for pat, _ in self.patterns:
            if pat != "*" and not any(_match(pat, n) for n in names):
                unused.append(pat)
        for name in self.nodes:
            if name not in names:
                unused.append(name)
        for op in self.op_types:
            if not any(n.op == op for n in graph.nodes):
                if diagnostics is not None:
                    diagnostics.note("QC505", f"recipe op type '{op}' does not occur in the model")
        if diagnostics is not None:
            for u in unused:
                close = difflib.get_close_matches(u, names, n=1)
                diagnostics.warning("QC505", f"recipe layer pattern '{u}' matches no node",
                                    hint=f"did you mean '{close[0]}'?" if close else "check the node names with "
                                    "`qcompiler inspect --text MODEL`")
        return unused

    def specs(self) -> list[tuple[str, QSpec]]:
        out = []
        rules = [("global", self.global_rule)] + [(f"op_types.{k}", r) for k, r in self.op_types.items()] + \
                [(f"patterns.{k}", r) for k, r in self.patterns] + [(f"nodes.{k}", r) for k, r in self.nodes.items()]
        for where, r in rules:
            for kind in ("weight", "activation"):
                v = getattr(r, kind)
                if isinstance(v, QSpec):
                    out.append((f"{where}.{kind}", v))
        return out

    def to_dict(self) -> dict[str, Any]:
        def rule(r: Rule) -> Any:
            if r.weight is None and r.activation is None:
                return "float"
            d = {}
            for kind in ("weight", "activation"):
                v = getattr(r, kind)
                if v is _UNSET:
                    continue
                d[kind] = "float" if v is None else v.to_dict()
            return d
        return {"target": self.target, "precision": self.precision, "global": rule(self.global_rule),
                "op_types": {k: rule(v) for k, v in self.op_types.items()},
                "patterns": {k: rule(v) for k, v in self.patterns},
                "nodes": {k: rule(v) for k, v in self.nodes.items()},
                "options": dict(self.options), "calibration": dict(self.calibration)}


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], name) is not None
        except re.error as exc:
            raise RecipeError(f"recipe pattern '{pattern}' is not a valid regular expression: {exc}") from None
    return fnmatch.fnmatchcase(name, pattern)


def _rule(data: Any, where: str) -> Rule:
    if data is None or (isinstance(data, str) and data.lower() in ("float", "none", "fp32", "off")):
        return Rule(None, None)
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected 'float' or a mapping with 'weight' and/or 'activation'")
    unknown = set(data) - {"weight", "activation", "layers"}
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, ["weight", "activation", "layers"], n=1)
        raise RecipeError(f"{where}: unknown key '{key}'",
                          hint=(f"did you mean '{close[0]}'? " if close else "") + "use 'weight' and 'activation'")
    r = Rule()
    if "weight" in data:
        r.weight = parse_qspec(data["weight"], f"{where}.weight", weight=True)
    if "activation" in data:
        r.activation = parse_qspec(data["activation"], f"{where}.activation", weight=False)
    return r


#: weight-only precisions: blocked integer weights on MatMul/Gemm, activations and every other layer float
WEIGHT_ONLY = {"int4-weights": 4, "int8-weights": 8}


def default_recipe(target: str = "tensorrt", precision: str = "int8", observer: str | None = None,
                   block_size: int = 128) -> Recipe:
    """The target's default recipe for ``precision`` (qcompiler/quant/targets/).  The weight-only precisions
    (``int4-weights``, ``int8-weights``) quantize MatMul/Gemm weights in blocks of ``block_size`` inputs (opset
    21 DequantizeLinear with block_size) and leave activations and convolutions float."""
    from .targets import get_target

    if precision in WEIGHT_ONLY:
        tgt = get_target(target)
        w = QSpec(f"s{WEIGHT_ONLY[precision]}", "per_block_symmetric", block_size=int(block_size))
        r = Recipe(target=tgt.name, precision=precision, global_rule=Rule(None, None),
                   op_types={"MatMul": Rule(w, None), "Gemm": Rule(w, None)})
        r.source = r.to_dict()
        return r
    tgt = get_target(target)
    d = tgt.default(precision)
    w = QSpec(d.weight[0], d.weight[1])
    a = QSpec(d.activation[0], d.activation[1], observer)
    r = Recipe(target=tgt.name, precision=precision, global_rule=Rule(w, a))
    r.source = r.to_dict()
    return r


def from_data(data: Any, where: str = "recipe") -> Recipe:
    data = copy.deepcopy(data)
    if isinstance(data, list):
        data = {"schemes": data}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a mapping (or an EQuant-style list of schemes)")
    unknown = set(data) - set(TOP_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, TOP_KEYS, n=1)
        raise RecipeError(f"{where}: unknown key '{key}'",
                          hint=(f"did you mean '{close[0]}'? " if close else "") + "keys: " + ", ".join(TOP_KEYS))
    from .targets import get_target, target_names

    try:
        tgt = get_target(str(data.get("target", "tensorrt")))
    except RecipeError:
        raise RecipeError(f"{where}: unknown target '{data.get('target')}'",
                          hint="targets: " + ", ".join(target_names())) from None
    target = tgt.name
    precision = str(data.get("precision", "int8")).lower()
    if precision not in tgt.defaults and precision not in WEIGHT_ONLY:
        raise RecipeError(f"{where}: precision must be one of {', '.join(list(tgt.defaults) + list(WEIGHT_ONLY))} "
                          f"for {target}, not '{data.get('precision')}'")
    base = default_recipe(target, precision)
    r = Recipe(target=target, precision=precision, global_rule=base.global_rule, op_types=dict(base.op_types))
    if "global" in data:
        g = _rule(data["global"], f"{where}.global")
        r.global_rule = Rule(*g.apply(base.global_rule.weight, base.global_rule.activation))
    for k, v in (data.get("op_types") or {}).items():
        r.op_types[str(k)] = _rule(v, f"{where}.op_types.{k}")
    pats = data.get("patterns") or {}
    if not isinstance(pats, dict):
        raise RecipeError(f"{where}.patterns: expected a mapping of name pattern -> rule")
    for k, v in pats.items():
        r.patterns.append((str(k), _rule(v, f"{where}.patterns.{k}")))
    for k, v in (data.get("nodes") or {}).items():
        r.nodes[str(k)] = _rule(v, f"{where}.nodes.{k}")
    schemes = data.get("schemes") or []
    if schemes and not isinstance(schemes, list):
        raise RecipeError(f"{where}.schemes: expected a list of {{weight, activation, layers}}")
    for i, sch in enumerate(schemes):
        here = f"{where}[{i}]"
        if not isinstance(sch, dict):
            raise RecipeError(f"{here}: expected a mapping with weight, activation and layers")
        layers = sch.get("layers", ["*"])
        if isinstance(layers, str):
            layers = [layers]
        if not isinstance(layers, list) or not layers:
            raise RecipeError(f"{here}.layers: expected a list of layer name patterns")
        rule = _rule({k: v for k, v in sch.items() if k != "layers"}, here)
        for pat in layers:
            if pat == "*" and i == 0:
                r.global_rule = Rule(*rule.apply(r.global_rule.weight, r.global_rule.activation))
            else:
                r.patterns.append((str(pat), rule))
    opts = data.get("options") or {}
    if not isinstance(opts, dict):
        raise RecipeError(f"{where}.options: expected a mapping")
    for k, v in opts.items():
        key = str(k).replace("-", "_")
        if key not in OPTION_KEYS:
            close = difflib.get_close_matches(key, list(OPTION_KEYS), n=1)
            raise RecipeError(f"{where}.options: unknown option '{k}'",
                              hint=(f"did you mean '{close[0]}'? " if close else "") + "options: "
                              + ", ".join(OPTION_KEYS))
        if not isinstance(v, bool):
            raise RecipeError(f"{where}.options.{k}: expected true or false, not {v!r}")
        r.options[key] = v
    cal = data.get("calibration") or {}
    if not isinstance(cal, dict):
        raise RecipeError(f"{where}.calibration: expected a mapping")
    for k, v in cal.items():
        key = str(k).replace("-", "_")
        if key not in CALIB_KEYS:
            close = difflib.get_close_matches(key, CALIB_KEYS, n=1)
            raise RecipeError(f"{where}.calibration: unknown key '{k}'",
                              hint=(f"did you mean '{close[0]}'? " if close else "") + "keys: " + ", ".join(CALIB_KEYS))
        r.calibration[key] = v
    r.source = data
    return r


def load_recipe(source: Any) -> Recipe:
    """A Recipe from a Recipe, a dict/list, or a .yaml/.yml/.json file."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, (dict, list)):
        return from_data(source)
    p = Path(source)
    if not p.exists():
        raise RecipeError(f"recipe file '{p}' not found", code="QC501")
    try:
        data = read_structured(p)
    except ValueError as exc:
        raise RecipeError(f"cannot parse recipe '{p}': {exc}") from None
    if data is None:
        raise RecipeError(f"recipe '{p}' is empty")
    return from_data(data, where=str(p))


# --------------------------------------------------------------------------------------------
# target validation
# --------------------------------------------------------------------------------------------


def validate_for_target(recipe: Recipe) -> None:
    """Reject recipe entries the target cannot run, naming the rule (before any calibration)."""
    from .targets import get_target

    tgt = get_target(recipe.target)
    who = tgt.display_name or tgt.name
    for where, spec in recipe.specs():
        act = where.endswith(".activation")
        if spec.fp8 and not spec.symmetric:
            raise TargetError(f"{where}: fp8 quantization is symmetric (zero point 0)", rule="F1")
        if not spec.signed and not tgt.allow_unsigned:
            raise TargetError(f"{where}: {who} has no {spec.dtype} quantization (only signed int8/int4 and fp8)",
                              rule="R2", hint="use dtype s8 (or fp8e4m3)")
        if not spec.symmetric and tgt.symmetric_only:
            raise TargetError(f"{where}: {who} only supports symmetric quantization (zero point 0), not "
                              f"{spec.qscheme}", rule="R3", hint="use a *_symmetric qscheme")
        if act and spec.per_channel and not tgt.per_channel_activations:
            raise TargetError(f"{where}: {who} quantizes activations per tensor only", rule="R8",
                              hint="use per_tensor_symmetric for activations")
        if act and spec.per_block:
            raise TargetError(f"{where}: blocked quantization is for weights only", rule="R16")
