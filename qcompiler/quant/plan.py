"""Where Q/DQ go: the placement plan, computed from the graph, the recipe and the target's rules.

(Over 500 lines on purpose: one method per placement step, each short, in the order targets run them.)

``calibrate`` uses the plan to know which tensors to observe; ``insert-qdq`` uses the same plan to
emit the nodes, so what is calibrated is exactly what is quantized.  Every layer left in float gets
a reason (``plan.float_nodes``), reported as a QC504 remark.

The planner knows no target by name: it runs the steps a target lists in ``Target.placement``
(:data:`STEPS`), each reading the target's data (qcompiler/quant/targets/):

* ``weighted``: quantize the weights and input activation of weighted layers (P1), leaving float what
  the recipe, the target's small-layer rule (P9) or a non-constant weight says;
* ``io-ops``: ops in ``io_quantized_ops`` get their inputs quantized, and every quantized op its outputs
  (after ``fused_activations``), so DQ -> op -> Q groups form (onnxruntime's integer kernels);
* ``recurrent``: ops in ``recurrent_ops`` (LSTM, GRU, RNN) get their input X quantized per tensor and their
  constant W and R weights (``[directions, gates * hidden, inputs]``) per gate row, axis 1;
* ``pooling``: ops in ``pooling_ops`` get their input quantized when a quantized layer follows (P5);
* ``residual``: the skip input of a residual Add is quantized, never the conv branch (P4);
* ``concat-groups``: Concat inputs and output (and the input/output of ``same_scale_ops``) share a scale (P7).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import DiagnosticEngine, RecipeError
from ..ir.layers import LayerGeometry
from ..ir.query import attr, const_source, const_value, data_inputs, is_graph_output, produced_by, producer
from .qspec import QSpec
from .recipe import Recipe
from .targets import Target, get_target


@dataclass
class ActPoint:
    tensor: str
    spec: QSpec
    edges: list[tuple[str, int]] = field(default_factory=list)  # (consumer node, input index)
    rule: str = "P1"


@dataclass
class WeightPoint:
    node: str
    index: int
    tensor: str
    spec: QSpec
    axis: int | None  # None: per tensor
    bias_index: int | None = None  # onnxruntime target: int32 bias


@dataclass
class Plan:
    target: Target
    recipe: Recipe
    acts: list[ActPoint] = field(default_factory=list)
    weights: list[WeightPoint] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # tensors that share one scale (Concat)
    float_nodes: dict[str, str] = field(default_factory=dict)
    stats_only: dict[str, QSpec] = field(default_factory=dict)  # group members observed but not quantized

    def observed(self) -> dict[str, QSpec]:
        """tensor -> activation spec whose observer collects its statistics."""
        out: dict[str, QSpec] = {}
        for a in self.acts:
            out.setdefault(a.tensor, a.spec)
        for t, spec in self.stats_only.items():
            out.setdefault(t, spec)
        return out

    def group_of(self, tensor: str) -> list[str]:
        for g in self.groups:
            if tensor in g:
                return g
        return [tensor]

    def summary(self) -> dict[str, int]:
        return {"activations": len(self.acts), "weights": len(self.weights), "float_layers": len(self.float_nodes)}

    def unshare(self, amax: dict[str, float], ratio: float) -> list[tuple[list[str], float]]:
        """Split the shared-scale groups whose members' ranges (``amax``: tensor -> max |range|) differ by more
        than ``ratio``: each member keeps its own scale (P7 is a TensorRT performance preference, one
        requantization per input, not a requirement; a shared scale would crush the small members).  Returns the
        groups split, with the ratio found."""
        split = []
        keep = []
        for g in self.groups:
            vals = [amax[t] for t in g if t in amax and amax[t] > 0]
            r = max(vals) / min(vals) if len(vals) > 1 else 1.0
            if ratio > 0 and r > ratio:
                split.append((g, r))
                for t in g:
                    self.stats_only.pop(t, None)
            else:
                keep.append(g)
        self.groups = keep
        return split

    def keep_float(self, tensors: set[str], why: str) -> list[str]:
        """Leave these activations unquantized (and every tensor sharing a scale with one of them); a weighted
        layer reading one stays float too (a layer with only its weight quantized runs no faster and loses
        accuracy).  Returns the layers that became float; ``why`` says why (``{tensor}`` is filled in)."""
        bad = set(tensors)
        for g in self.groups:
            if bad & set(g):
                bad |= set(g)
        weighted = {w.node for w in self.weights}
        floated: dict[str, str] = {}
        for a in self.acts:
            if a.tensor in bad:
                for consumer, _ in a.edges:
                    if consumer in weighted:
                        floated.setdefault(consumer, a.tensor)
        self.acts = [a for a in self.acts if a.tensor not in bad]
        self.groups = [g for g in self.groups if not bad & set(g)]
        self.stats_only = {t: s for t, s in self.stats_only.items() if t not in bad}
        self.weights = [w for w in self.weights if w.node not in floated]
        for layer, t in floated.items():
            self.float_nodes[layer] = why.format(tensor=t)
        return sorted(floated)


# --------------------------------------------------------------------------------------------
# graph helpers
# --------------------------------------------------------------------------------------------


def _has_const_input(node: gs.Node) -> bool:
    return any(const_value(i) is not None for i in node.inputs if i.name)


def is_epilogue(node: gs.Node, target: Target) -> bool:
    if node.op not in target.epilogue_ops:
        return False
    if node.op in ("Add", "Min", "Max"):
        return _has_const_input(node)
    if node.op == "Mul":
        if _has_const_input(node):
            return True
        # SiLU: x * Sigmoid(x)
        a, b = node.inputs[0], node.inputs[1]
        for x, y in ((a, b), (b, a)):
            p = producer(y)
            if p is not None and p.op == "Sigmoid" and p.inputs[0] is x:
                return True
        return False
    return True


def backbone(t: gs.Tensor, target: Target, weighted: set[str], graph: gs.Graph) -> tuple[gs.Node | None, int]:
    """The quantized weighted op that produces ``t`` through epilogue ops only, and the path length."""
    steps = 0
    while True:
        node = producer(t)
        if node is None:
            return None, steps
        if node.name in weighted:
            return node, steps + 1
        if not is_epilogue(node, target):
            return None, steps
        # follow the non-constant input
        nxt = [i for i in node.inputs if i.name and const_value(i) is None]
        if node.op == "Mul" and len(nxt) == 2:  # SiLU: follow x (the one that is not the Sigmoid)
            nxt = [i for i in nxt if produced_by(i, "Sigmoid") is None]
        if len(nxt) != 1 or len(nxt[0].outputs) > (2 if node.op == "Mul" else 1) or is_graph_output(graph, nxt[0]):
            return None, steps
        t = nxt[0]
        steps += 1


def _ancestors(t: gs.Tensor, limit: int = 4000) -> dict[int, int]:
    """id(tensor) -> distance (in nodes) walking producers backwards from t."""
    dist = {id(t): 0}
    q = deque([t])
    while q and len(dist) < limit:
        cur = q.popleft()
        node = producer(cur)
        if node is None:
            continue
        for i in node.inputs:
            if i.name and id(i) not in dist and not isinstance(i, gs.Constant):
                dist[id(i)] = dist[id(cur)] + 1
                q.append(i)
    return dist


def _fused_input(add: gs.Node, a: int, b: int) -> int:
    """Of two backbone inputs, the one on the longer path from their closest common ancestor."""
    da, db = _ancestors(add.inputs[a]), _ancestors(add.inputs[b])
    common = set(da) & set(db)
    if not common:
        return a
    best = min(common, key=lambda k: da[k] + db[k])
    return a if da[best] >= db[best] else b


# --------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------


def _kind(dtype) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:  # an ONNX type without a numpy equivalent (fp8 held as a proto)
        return "V"


@dataclass(frozen=True)
class _WeightInfo:
    shape: tuple
    dtype: object

    @property
    def ndim(self) -> int:
        return len(self.shape)


class _Planner:
    """Places Q/DQ in one graph (the model's, or one If/Loop/Scan body) into a plan shared by all of them."""

    def __init__(self, graph: gs.Graph, recipe: Recipe, diagnostics: DiagnosticEngine | None,
                 plan: Plan | None = None, shared: dict | None = None):
        self.g = graph
        self.recipe = recipe
        self.target = get_target(recipe.target)
        self.diag = diagnostics
        self.plan = plan if plan is not None else Plan(self.target, recipe)
        self.shared = shared if shared is not None else {"first": True}
        self.by_name = {n.name: n for n in graph.nodes}
        self.edges: dict[tuple[str, int], ActPoint] = {}
        self.points: dict[tuple[str, QSpec], ActPoint] = {}
        self.weighted: set[str] = set()
        self.fp8 = recipe.precision == "fp8"

    def note_float(self, node: gs.Node, why: str, rule: str | None = None) -> None:
        self.plan.float_nodes[node.name] = why
        if self.diag is not None:
            self.diag.remark("QC504", f"{node.op} stays float: {why}", node=node.name,
                             pass_name="insert-qdq", rule=rule)

    def request(self, tensor: gs.Tensor, consumer: gs.Node, index: int, spec: QSpec, rule: str) -> None:
        if isinstance(tensor, gs.Constant) or const_value(tensor) is not None or not tensor.name:
            return
        known = self.by_name.get(consumer.name)
        if known is None or known is not consumer:
            return  # a node of a subgraph reading an outer tensor: placed with its own graph, not this one
        if tensor.dtype is not None and np.dtype(tensor.dtype).kind != "f":
            return
        if spec.fp8 and not spec.symmetric:
            raise RecipeError(f"fp8 activations are symmetric ({consumer.name})")
        if not spec.fp8 and spec.width not in (8, 4):
            raise RecipeError(
                f"activation dtype {spec.dtype} for {consumer.name}: QuantizeLinear saturates to its storage type, "
                "so activations are s8, u8, fp8e4m3, or s4/u4 (int4 storage, opset 21; TensorRT runs only the "
                "8-bit ones)", hint="use other bit widths for weights only")
        key = (consumer.name, index)
        if key in self.edges:
            return
        pkey = (tensor.name, spec)
        pt = self.points.get(pkey)
        if pt is None:
            pt = ActPoint(tensor.name, spec, [], rule)
            self.points[pkey] = pt
            self.plan.acts.append(pt)
        pt.edges.append(key)
        self.edges[key] = pt

    def flows_to_quantized(self, t: gs.Tensor, limit: int = 64) -> bool:
        seen: set[int] = set()
        q = deque([t])
        while q and len(seen) < limit:
            cur = q.popleft()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            for c in cur.outputs:
                idx = [k for k, i in enumerate(c.inputs) if i is cur]
                if any((c.name, k) in self.edges for k in idx):
                    return True
                if c.op in self.target.commuting_ops or is_epilogue(c, self.target):
                    q.extend(o for o in c.outputs if o.name)
        return False

    # -- steps --------------------------------------------------------------------------------
    def weighted_ops(self) -> None:
        skip_small = self.recipe.option("skip_small_layers", self.target.small_layers is not None)
        quant_bmm = self.recipe.option("quantize_bmm", False)
        for n in self.g.nodes:
            if n.op not in self.target.weighted_ops or len(n.inputs) < 2:
                continue
            is_first, self.shared["first"] = self.shared["first"], False
            cfg = self.recipe.resolve(n)
            if cfg.is_float:
                self.note_float(n, "the recipe says float")
                continue
            src = const_source(n.inputs[1])
            # shape and dtype are enough here: do not read (possibly external) weight values
            W = _WeightInfo(src.shape, src.dtype) if src is not None else const_value(n.inputs[1])
            if W is None:
                if n.op == "MatMul":
                    if not quant_bmm:
                        self.note_float(n, "a MatMul of two activations (attention); set options.quantize_bmm to "
                                           "quantize it", rule="T3")
                        continue
                    if cfg.activation is not None:
                        self.request(n.inputs[0], n, 0, cfg.activation, "T3")
                        self.request(n.inputs[1], n, 1, cfg.activation, "T3")
                        self.weighted.add(n.name)
                    continue
                self.note_float(n, f"its weight '{n.inputs[1].name}' is not a constant")
                continue
            if _kind(W.dtype) != "f":
                self.note_float(n, f"its weight is already {W.dtype}")
                continue
            geo = LayerGeometry.of(n, tuple(W.shape))
            if geo is None:
                self.note_float(n, f"its weight shape {tuple(W.shape)} does not fit group={attr(n, 'group', 1)}")
                continue
            if skip_small:
                why = self.target.small_layer_reason(geo, first=is_first,
                                                     fp8=self.fp8 or (cfg.weight is not None and cfg.weight.fp8))
                if why:
                    self.note_float(n, why, rule="P9")
                    continue
            if cfg.weight is not None:
                if src is None:
                    self.note_float(n, "its weight is computed from constants by nodes (run fold-constants first)")
                    continue
                spec = cfg.weight
                if spec.per_block and n.op not in ("MatMul", "Gemm"):
                    raise RecipeError(f"{n.name}: blocked (int4) weights are for MatMul/Gemm only", rule="R16")
                axis = geo.out_axis if spec.per_channel else (geo.in_axis if spec.per_block else None)
                if spec.per_channel and not geo.per_channel_writable:
                    axis = None  # a per-output-channel scale cannot be written for grouped ConvTranspose (R9)
                    if self.diag is not None:
                        self.diag.remark("QC504", f"{n.name}: grouped ConvTranspose weights quantized per tensor "
                                                  "(axis 1 is Cout/group long)", node=n.name, rule="R9")
                bias = None
                if self.target.quantize_bias_int32 and n.op in ("Conv", "Gemm") and len(n.inputs) > 2 and \
                        n.inputs[2].name and const_value(n.inputs[2]) is not None and cfg.activation is not None \
                        and not spec.fp8:
                    bias = 2
                self.plan.weights.append(WeightPoint(n.name, 1, src.name, spec, axis, bias))
            if cfg.activation is not None:
                self.request(n.inputs[0], n, 0, cfg.activation, "P1")
            self.weighted.add(n.name)

    def recurrent(self) -> None:
        for n in self.g.nodes:
            if n.op not in self.target.recurrent_ops or len(n.inputs) < 3:
                continue
            cfg = self.recipe.resolve(n)
            if cfg.is_float:
                self.note_float(n, "the recipe says float")
                continue
            srcs = [const_source(n.inputs[k]) for k in (1, 2)]
            if any(s is None or _kind(s.dtype) != "f" or len(s.shape) != 3 for s in srcs):
                self.note_float(n, "its W and R weights are not float constants of rank 3")
                continue
            if cfg.weight is not None:
                spec = cfg.weight
                if spec.per_block:
                    self.note_float(n, "blocked weights are for MatMul/Gemm only", rule="R16")
                    continue
                for k, src in zip((1, 2), srcs):
                    assert src is not None
                    self.plan.weights.append(WeightPoint(n.name, k, src.name, spec, 1 if spec.per_channel else None))
            if cfg.activation is not None:
                self.request(n.inputs[0], n, 0, cfg.activation, "P1")

    def pooling(self) -> None:
        if not self.recipe.option("quantize_pooling", True):
            return
        for n in reversed(self.g.nodes):  # downstream first, so chains of pools resolve
            if n.op not in self.target.pooling_ops or not n.outputs:
                continue
            cfg = self.recipe.resolve(n)
            if cfg.activation is None:
                continue
            if self.flows_to_quantized(n.outputs[0]):
                self.request(n.inputs[0], n, 0, cfg.activation, "P5")

    def residuals(self) -> None:
        if not self.recipe.option("quantize_residual", True):
            return
        for n in self.g.nodes:
            if n.op != "Add" or len(n.inputs) != 2 or not n.outputs:
                continue
            if any(const_value(i) is not None for i in n.inputs):
                continue
            bb = [backbone(i, self.target, self.weighted, self.g)[0] for i in n.inputs]
            if bb[0] is None and bb[1] is None:
                continue
            if bb[0] is not None and bb[1] is not None:
                fused = _fused_input(n, 0, 1)
            else:
                fused = 0 if bb[0] is not None else 1
            skip = 1 - fused
            cfg = self.recipe.resolve(n)
            if cfg.activation is None:
                continue
            if self.flows_to_quantized(n.outputs[0]):
                self.request(n.inputs[skip], n, skip, cfg.activation, "P4")

    def io_ops(self) -> None:
        """Quantize inputs and outputs of quantized ops (DQ -> op -> Q groups)."""
        tgt = self.target
        quantized: list[gs.Node] = []
        for n in self.g.nodes:
            if n.name in self.weighted:
                quantized.append(n)
            elif n.op in tgt.io_quantized_ops:
                cfg = self.recipe.resolve(n)
                if cfg.activation is None:
                    continue
                for k, i in enumerate(data_inputs(n)):
                    self.request(i, n, k, cfg.activation, tgt.io_rule)
                quantized.append(n)
        for n in quantized:
            cfg = self.recipe.resolve(n)
            if cfg.activation is None or not n.outputs:
                continue
            out = n.outputs[0]
            if len(out.outputs) == 1 and not is_graph_output(self.g, out) and \
                    out.outputs[0].op in tgt.fused_activations:
                out = out.outputs[0].outputs[0]
            for c in list(out.outputs):
                for k, i in enumerate(c.inputs):
                    if i is out:
                        self.request(out, c, k, cfg.activation, tgt.io_rule)

    def concat_groups(self) -> None:
        requested = {a.tensor for a in self.plan.acts}
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        def union(a: str, b: str) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        members: set[str] = set()
        # same_scale_ops (MaxPool for onnxruntime): input and output share one scale, which is exact (max
        # commutes with a monotonic quantizer) and what onnxruntime needs to run it on int8 data
        for n in self.g.nodes:
            if not n.outputs or not (n.op == "Concat" or n.op in self.target.same_scale_ops):
                continue
            if n.op != "Concat":
                ts = [n.inputs[0], n.outputs[0]]
            else:
                ts = [i for i in n.inputs if i.name and const_value(i) is None] + [n.outputs[0]]
            names = [t.name for t in ts]
            if not any(t in requested for t in names) and not any(self.flows_to_quantized(t) for t in ts[-1:]):
                continue
            for t in names:
                parent.setdefault(t, t)
                members.add(t)
            for t in names[1:]:
                union(names[0], t)
        groups: dict[str, list[str]] = {}
        for t in sorted(members):
            groups.setdefault(find(t), []).append(t)
        spec_of = {a.tensor: a.spec for a in self.plan.acts}
        for root, ts in sorted(groups.items()):
            if len(ts) < 2:
                continue
            self.plan.groups.append(ts)
            spec = next((spec_of[t] for t in ts if t in spec_of), None)
            if spec is None:
                continue
            for t in ts:
                if t not in spec_of:
                    self.plan.stats_only[t] = spec

    def build(self) -> Plan:
        for step in self.target.placement:
            if step not in STEPS:
                raise RecipeError(f"target {self.target.name}: unknown placement step '{step}'",
                                  hint="steps: " + ", ".join(STEPS))
            getattr(self, STEPS[step])()
        return self.plan


#: placement step name (used in Target.placement) -> planner method
STEPS = {"weighted": "weighted_ops", "recurrent": "recurrent", "io-ops": "io_ops", "pooling": "pooling",
         "residual": "residuals", "concat-groups": "concat_groups"}


def make_plan(graph: gs.Graph, recipe: Recipe, diagnostics: DiagnosticEngine | None = None) -> Plan:
    """The plan of the model and of every If/Loop/Scan body in it (each placed with its own graph's rules;
    a body's Q/DQ stay inside the body, on outer-scope tensors too)."""
    from ..ir.graph import iter_graphs

    plan = Plan(get_target(recipe.target), recipe)
    shared = {"first": True}
    for g in iter_graphs(graph):
        _Planner(g, recipe, diagnostics, plan, shared).build()
    return plan
