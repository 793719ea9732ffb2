"""The float type of everything that is not quantized: fp16 or bf16 float parts written into the graph, with fp32
islands chosen from measured ranges, and fp16/bf16 models brought to fp32 for the passes.

(Over 500 lines on purpose: one rewrite, its islands, its Cast rules, and the scopes that run float32-only work
on typed graphs, read top to bottom.)

TensorRT 11 builds every network strongly typed: each layer runs in the type the ONNX file gives it.  A Q/DQ model
whose float parts are float32 runs its softmaxes, normalizations, residual Adds and every layer left float in
fp32.  :func:`retype` rewrites a graph so that each node *computes in* one float type:

* **the compute type** of a node is the target type (``fp16``, ``bf16`` or ``fp32``) unless it is an *island*
  kept fp32 (below) or a node the rewrite does not touch (If/Loop/Scan with their bodies, custom-domain ops, ops
  whose data is not float: shape paths, indices, integer arithmetic);
* a node's **data inputs and outputs** (those bound to the type variable of its first output in the ONNX schema:
  qcompiler/ir/dtypes.py) take its compute type; other inputs keep theirs (Resize's scales, a Pow exponent);
* **constants** are stored in the type their consumers compute in (one converted copy per type, shared);
* a **DequantizeLinear** writes the type its consumers compute in: its scale is stored in that type (so a
  weight DQ feeds an fp16 Conv directly, nothing between them); a **QuantizeLinear** reads whatever type its input
  has, its scale stored in that type.  Activation scales are rounded once to values the target type holds
  exactly, so a Q and its DQ keep one scale whatever their storage types;
* **Casts** only where a tensor is read in another type than it was made in (one per tensor and type, shared);
  an existing float-to-float Cast takes the type its consumers want, and a Cast that changes nothing, or a pair
  that undoes itself exactly (fp16 -> fp32 -> fp16), is removed;
* **graph inputs and outputs** keep their declared types (``keep_io``): a Cast after an input, a Cast producing
  an output under its own name; without ``keep_io`` float inputs and outputs become the target type.

**Islands** (kept fp32), each with its reason:

* a data input or output whose measured largest magnitude (calibration samples) is above ``limit`` (fp16: 2^14,
  a 4x margin under fp16's largest value 65504), or was not finite (an additive ``-inf``/``finfo.min`` mask);
* an op that squares what it reads on the way (normalizations, ``ReduceSumSquare``, ``ReduceL2``,
  ``LpNormalization``) whose input magnitude squared is above ``limit``;
* a constant data input that the target type cannot hold: it would overflow to inf, or nonzero values would
  become zero;
* an op whose schema at the model's opset does not take the type (Conv takes bf16 from opset 22 on).

fp16 to fp32 (``target="fp32"``) is the same rewrite with no islands: it brings an fp16 model, or fp16 weights
behind Casts, to float32 for the passes (statistics are then computed in float32), and back at the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..ir.dtypes import ELEM, FLOAT_TYPES, TypeGroup, float_kind, op_typing
from ..ir.edit import Namer
from ..ir.graph import iter_graphs

#: ops that square their input on the way to the output (their intermediate, not their output, overflows)
SQUARING = frozenset({"LayerNormalization", "GroupNormalization", "InstanceNormalization", "ReduceSumSquare",
                      "ReduceL2", "LpNormalization", "SimplifiedLayerNormalization"})
#: fp16's smallest normal value: a scale below it is stored with few significant bits
FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)


@dataclass
class Island:
    node: str
    op: str
    reason: str


@dataclass
class RetypeResult:
    target: str
    islands: list[Island] = field(default_factory=list)
    casts: int = 0  # Cast nodes added
    casts_removed: int = 0  # Casts that changed nothing, or pairs that undid each other
    nodes_retyped: int = 0  # nodes now computing in the target type (that did not before)
    constants: int = 0  # constants stored in another type
    untouched: list[str] = field(default_factory=list)  # nodes left as they are (subgraphs, custom ops)

    @property
    def changed(self) -> bool:
        return bool(self.casts or self.casts_removed or self.nodes_retyped or self.constants)


def _fixed(n: gs.Node, opset: int) -> bool:
    """Nodes the rewrite leaves in their own types: subgraph holders, custom domains, ops without a schema."""
    if any(isinstance(v, gs.Graph) or (isinstance(v, (list, tuple)) and any(isinstance(x, gs.Graph) for x in v))
           for v in n.attrs.values()):
        return True
    if n.domain not in ("", "ai.onnx", None):
        return True
    typing = op_typing(n.op, "", opset)
    # an output type no input shares is set by an attribute (ConstantOfShape's value, RandomNormal's dtype,
    # LayerNormalization's stash_type for its optional Mean): the node writes it as it is, its consumers get a Cast
    return typing is None or any(not grp.inputs and any(k < len(n.outputs) and n.outputs[k].name for k in grp.outputs)
                                 for grp in typing.groups)


def _groups(n: gs.Node, opset: int) -> list[tuple[TypeGroup, list[int], list[int]]]:
    """Each type group of ``n`` with the input and output indices bound to it (named tensors only)."""
    typing = op_typing(n.op, "", opset)
    if typing is None:
        return []
    out = []
    for grp in typing.groups:
        ins = [k for k in range(len(n.inputs)) if n.inputs[k].name and typing.group_of_input(k) is grp]
        outs = [k for k in range(len(n.outputs)) if typing.group_of_output(k) is grp]
        if ins or outs:
            out.append((grp, ins, outs))
    return out


def _float_groups(n: gs.Node, opset: int) -> list[tuple[TypeGroup, list[int], list[int]]]:
    """The groups of ``n`` that bind a float tensor (fp32, fp16 or bf16) now."""
    return [(grp, ins, outs) for grp, ins, outs in _groups(n, opset)
            if any(_kind_of(n.inputs[k]) for k in ins) or any(_kind_of(n.outputs[k]) for k in outs)]


def _kind_of(t: gs.Tensor) -> str | None:
    if isinstance(t, gs.Constant):
        return float_kind(t.dtype)
    return float_kind(t.dtype)


def _holds(values: np.ndarray, kind: str) -> str | None:
    """Why ``kind`` cannot hold these float values (None when it can)."""
    v = np.asarray(values, np.float64)
    if not v.size or kind == "fp32":
        return None
    finite = np.isfinite(v)
    big = float(np.max(np.abs(v[finite]))) if finite.any() else 0.0
    top = float(np.finfo(np.float16).max) if kind == "fp16" else 3.38e38
    if big > top:
        return f"a constant up to {big:.3g} overflows {kind} (largest {top:.5g})"
    conv = v.astype(FLOAT_TYPES[kind]).astype(np.float64)
    lost = (v != 0) & (conv == 0)
    if lost.any():
        smallest = float(np.min(np.abs(v[lost])))
        return f"{int(lost.sum())} nonzero constant value(s) (smallest {smallest:.3g}) become 0 in {kind}"
    return None


def find_islands(graph: gs.Graph, target: str, ranges: dict[str, float], limit: float, opset: int) -> dict[str, str]:
    """Top-level nodes kept fp32 when the rest computes in ``target``: node name -> reason (module docstring).
    ``ranges``: tensor name -> largest magnitude seen on the calibration samples (inf when not finite)."""
    out: dict[str, str] = {}
    if target == "fp32":
        return out
    for n in graph.nodes:
        if n.op in ("QuantizeLinear", "DequantizeLinear", "Cast") or _fixed(n, opset):
            continue
        groups = _float_groups(n, opset)
        if not groups:
            continue  # not a float computation
        if not any(target in grp.allows for grp, _, _ in groups):
            out[n.name] = f"{n.op} takes no {target} at opset {opset}"
            continue
        ins = [n.inputs[k] for grp, i, _ in groups for k in i]
        outs = [k for grp, _, o in groups for k in o]
        why = None
        for t in ins:  # a constant the type cannot hold (the most specific reason, so said first)
            if isinstance(t, gs.Constant) and float_kind(t.dtype) is not None:
                why = _holds(t.values, target)
                if why:
                    break
        for t in ins + [n.outputs[k] for k in outs]:
            if why:
                break
            r = ranges.get(t.name)
            if r is not None and not np.isfinite(r):
                why = f"'{t.name}' is not finite on the calibration data (a -inf mask?)"
            elif r is not None and r > limit:
                why = f"'{t.name}' reaches {r:.4g} (above {limit:g})"
        if why is None and n.op in SQUARING and ins:
            r = ranges.get(ins[0].name)
            if r is not None and r * r > limit:
                why = f"{n.op} squares '{ins[0].name}' (up to {r:.4g}, so {r * r:.4g} on the way)"
        if why:
            out[n.name] = why
    return out


class _Retyper:
    def __init__(self, graph: gs.Graph, target: str, islands: dict[str, str], keep_io: bool, opset: int):
        self.g = graph
        self.target = target
        self.islands = islands
        self.keep_io = keep_io
        self.opset = opset
        self.names = Namer(graph)
        ops = {n.name: n.op for n in graph.nodes}
        self.res = RetypeResult(target, [Island(k, ops.get(k, "?"), v) for k, v in islands.items()])
        self.top = {id(n) for n in graph.nodes}
        self.orig: dict[int, str] = {}  # id(tensor) -> its float kind before the rewrite
        for sub in iter_graphs(graph):
            for t in sub.tensors().values():
                k = _kind_of(t)
                if k is not None:
                    self.orig[id(t)] = k
        self.cur: dict[int, str] = dict(self.orig)  # id(tensor) -> its float kind now
        self.casts: dict[tuple[int, str], gs.Variable] = {}
        self.consts: dict[tuple[int, str], gs.Constant] = {}
        self.new_nodes: list[gs.Node] = []
        self.outputs = {id(t) for t in graph.outputs}

    # -- what each node computes in ---------------------------------------------------------
    def compute(self, n: gs.Node) -> str | None:
        """The type ``n`` computes in after the rewrite, None for nodes whose types stay as they are."""
        if id(n) not in self.top or n.op in ("QuantizeLinear", "DequantizeLinear", "Cast") or \
                _fixed(n, self.opset) or not _float_groups(n, self.opset):
            return None
        return "fp32" if n.name in self.islands else self.target

    def want_at(self, c: gs.Node, t: gs.Tensor) -> str | None:
        """The type consumer ``c`` reads ``t`` in (None: any float type will do)."""
        if c.op == "QuantizeLinear" and c.inputs and c.inputs[0] is t:
            return None  # a Q reads any float type (its scale follows)
        if c.op == "Cast" and self._float_cast(c):
            w = self.wants(c.outputs[0])
            return next(iter(w)) if len(w) == 1 else None
        if c.op == "Shape" or c.op == "Size":
            return None
        ct = self.compute(c)
        if ct is None:
            return self.orig.get(id(t), "fp32")
        for grp, ins, outs in _float_groups(c, self.opset):
            if any(c.inputs[k] is t for k in ins):
                if ct not in grp.allows:
                    return self.orig.get(id(t), "fp32")
                return ct if outs else None
        return None

    def wants(self, t: gs.Tensor) -> set[str]:
        """The types ``t``'s consumers read it in."""
        out = {w for c in t.outputs if (w := self.want_at(c, t)) is not None}
        if id(t) in self.outputs and id(t) in self.orig:
            out.add(self.io_type(t))
        return out

    def io_type(self, t: gs.Tensor) -> str:
        return self.orig.get(id(t), "fp32") if self.keep_io else self.target

    @staticmethod
    def _float_cast(n: gs.Node) -> bool:
        return n.op == "Cast" and int(n.attrs.get("to", 0)) in ELEM.values()

    # -- edits --------------------------------------------------------------------------------
    def converted(self, c: gs.Constant, kind: str) -> gs.Constant:
        key = (id(c), kind)
        if key not in self.consts:
            base = re.sub(r"_(fp16|bf16|fp32)$", "", c.name)  # w_fp16 -> w_fp32, not w_fp16_fp32
            self.consts[key] = gs.Constant(self.names(f"{base}_{kind}"),
                                           np.asarray(c.values).astype(FLOAT_TYPES[kind]))
            self.res.constants += 1
        return self.consts[key]

    def cast(self, t: gs.Tensor, kind: str) -> gs.Variable:
        key = (id(t), kind)
        if key not in self.casts:
            out = gs.Variable(self.names(f"{t.name}_{kind}"), dtype=FLOAT_TYPES[kind],
                              shape=getattr(t, "shape", None))
            self.new_nodes.append(gs.Node("Cast", self.names(f"{t.name}_cast_{kind}"), attrs={"to": ELEM[kind]},
                                          inputs=[t], outputs=[out]))
            self.cur[id(out)] = kind
            self.orig[id(out)] = kind
            self.casts[key] = out
            self.res.casts += 1
        return self.casts[key]

    def read_as(self, n: gs.Node, k: int, kind: str) -> None:
        """Make input ``k`` of ``n`` a tensor of type ``kind``."""
        t = n.inputs[k]
        if isinstance(t, gs.Constant):
            if float_kind(t.dtype) not in (None, kind):
                n.inputs[k] = self.converted(t, kind)
            return
        have = self.cur.get(id(t))
        if have is not None and have != kind:
            n.inputs[k] = self.cast(t, kind)

    def set_type(self, t: gs.Tensor, kind: str) -> None:
        if isinstance(t, gs.Variable):
            t.dtype = FLOAT_TYPES[kind]
        self.cur[id(t)] = kind

    def scale_as(self, n: gs.Node, kind: str) -> None:
        """Store a Q/DQ scale in ``kind`` (activation scales are already exact in the target type)."""
        s = n.inputs[1]
        if isinstance(s, gs.Constant) and float_kind(s.dtype) != kind:
            n.inputs[1] = self.converted(s, kind)

    # -- the rewrite --------------------------------------------------------------------------
    def split_by_want(self, n: gs.Node) -> list[gs.Node]:
        """A DQ or float Cast whose consumers want different types becomes one copy per type (each feeding the
        consumers of its type), so every copy writes one type."""
        out = n.outputs[0]
        if id(out) in self.outputs:
            return [n]
        by: dict[str, list[gs.Node]] = {}
        for c in list(out.outputs):
            w = self.want_at(c, out) or self.orig.get(id(out), "fp32")
            by.setdefault(w, []).append(c)
        if len(by) <= 1:
            return [n]
        copies = [n]
        for w, users in list(by.items())[1:]:
            t2 = gs.Variable(self.names(f"{out.name}_{w}"), dtype=out.dtype, shape=out.shape)
            m = gs.Node(n.op, self.names(f"{n.name}_{w}"), attrs=dict(n.attrs), inputs=list(n.inputs), outputs=[t2])
            self.top.add(id(m))
            self.orig[id(t2)] = self.orig.get(id(out), "fp32")
            self.cur[id(t2)] = self.cur.get(id(out), "fp32")
            for c in users:
                for k, i in enumerate(c.inputs):
                    if i is out:
                        c.inputs[k] = t2
            copies.append(m)
        return copies

    def node(self, n: gs.Node) -> None:
        ct = self.compute(n)
        if ct is None:  # as it was: inputs in the types it was made for (Shape and Size take any)
            if n.op in ("Shape", "Size"):
                return
            for k, t in enumerate(n.inputs):
                want = self.orig.get(id(t))
                if want is not None and not isinstance(t, gs.Constant):
                    self.read_as(n, k, want)
            return
        changed = False
        for grp, ins, outs in _float_groups(n, self.opset):
            if ct not in grp.allows:  # this variable cannot take it: as it was
                kind = self.orig.get(id(n.outputs[outs[0]])) if outs else None
                for k in ins:
                    self.read_as(n, k, kind or self.orig.get(id(n.inputs[k])) or "fp32")
                continue
            if not outs:  # inputs only (a comparison): leave them if they agree, else all in ct
                kinds = {self.cur.get(id(n.inputs[k])) or _kind_of(n.inputs[k]) for k in ins}
                if len(kinds) == 1 and not any(isinstance(n.inputs[k], gs.Constant) for k in ins):
                    continue
            for k in ins:
                self.read_as(n, k, ct)
            for k in outs:
                if self.cur.get(id(n.outputs[k])) != ct:
                    self.set_type(n.outputs[k], ct)
                    changed = True
        self.res.nodes_retyped += changed

    def run(self) -> RetypeResult:
        g = self.g
        for t in g.inputs:  # graph inputs: their declared type, or the target's (keep_io=False)
            if id(t) in self.orig and self.io_type(t) != self.orig[id(t)]:
                self.set_type(t, self.io_type(t))
        nodes: list[gs.Node] = []
        for n in list(g.nodes):
            nodes += self.split_by_want(n) if (n.op == "DequantizeLinear" or self._float_cast(n)) else [n]
        for n in nodes:
            if n.op == "QuantizeLinear":
                self.scale_as(n, self.cur.get(id(n.inputs[0])) or float_kind(n.inputs[0].dtype) or "fp32")
            elif n.op == "DequantizeLinear" or self._float_cast(n):
                w = self.wants(n.outputs[0])
                kind = next(iter(w)) if len(w) == 1 else self.orig.get(id(n.outputs[0]), "fp32")
                if n.op == "DequantizeLinear":
                    self.scale_as(n, kind)
                elif isinstance(n.inputs[0], gs.Constant) and id(n.outputs[0]) not in self.outputs:
                    # a constant behind a Cast (fp16 weights of a mixed model): the constant in that type
                    c = self.converted(n.inputs[0], kind)
                    for user in list(n.outputs[0].outputs):
                        for k, x in enumerate(user.inputs):
                            if x is n.outputs[0]:
                                user.inputs[k] = c
                    n.outputs.clear()
                    self.res.casts_removed += 1
                    continue
                elif int(n.attrs["to"]) != ELEM[kind]:
                    n.attrs["to"] = ELEM[kind]
                if self.cur.get(id(n.outputs[0])) != kind:
                    self.set_type(n.outputs[0], kind)
            else:
                self.node(n)
        # readers inside If/Loop/Scan bodies see outer tensors in the types the bodies were made for
        for sub in list(iter_graphs(g))[1:]:
            for n in sub.nodes:
                for k, t in enumerate(n.inputs):
                    if id(t) in self.cur and self.cur[id(t)] != self.orig.get(id(t)) and not isinstance(t, gs.Constant):
                        n.inputs[k] = self.cast(t, self.orig[id(t)])
        # graph outputs in their declared types (or the target's): a Cast makes the output under its own name
        for t in list(g.outputs):
            if id(t) not in self.orig or not t.inputs:
                continue
            want = self.io_type(t)
            if self.cur.get(id(t)) == want:
                continue
            inner = gs.Variable(self.names(f"{t.name}_{self.cur[id(t)]}"), dtype=t.dtype, shape=t.shape)
            p = t.inputs[0]
            p.outputs[p.outputs.index(t)] = inner
            for c in list(t.outputs):
                for k, x in enumerate(c.inputs):
                    if x is t:
                        c.inputs[k] = inner
            self.cur[id(inner)] = self.cur[id(t)]
            t.dtype = FLOAT_TYPES[want]
            self.cur[id(t)] = want
            self.new_nodes.append(gs.Node("Cast", self.names(f"{t.name}_cast_out"), attrs={"to": ELEM[want]},
                                          inputs=[inner], outputs=[t]))
            self.res.casts += 1
        g.nodes = [n for n in nodes if n.outputs] + self.new_nodes
        self.res.casts_removed += _drop_idle_casts(g, self.cur)
        g.cleanup(remove_unused_graph_inputs=False).toposort()
        return self.res


def _drop_idle_casts(g: gs.Graph, cur: dict[int, str]) -> int:
    """Remove Casts to the type their input already has, and fp16/bf16 -> fp32 -> same pairs (exact round trips);
    never one that produces a graph output."""
    outs = {id(t) for t in g.outputs}
    removed = 0
    for n in list(g.nodes):
        if n.op != "Cast" or not n.inputs or not n.outputs or id(n.outputs[0]) in outs:
            continue
        src, dst = n.inputs[0], n.outputs[0]
        to = next((k for k, v in ELEM.items() if v == int(n.attrs.get("to", 0))), None)
        have = cur.get(id(src))
        if to is None or have is None:
            continue
        target = None
        if have == to:
            target = src
        else:
            p = src.inputs[0] if src.inputs else None
            if p is not None and p.op == "Cast" and p.inputs and cur.get(id(p.inputs[0])) == to and \
                    have == "fp32" and to in ("fp16", "bf16"):
                target = p.inputs[0]  # x:fp16 -> fp32 -> fp16 gives x back exactly
        if target is None:
            continue
        for c in list(dst.outputs):
            for k, x in enumerate(c.inputs):
                if x is dst:
                    c.inputs[k] = target
        n.inputs.clear()
        n.outputs.clear()
        removed += 1
    g.nodes = [n for n in g.nodes if n.outputs]
    return removed


def round_activation_scales(graph: gs.Graph, target: str) -> int:
    """Activation Q/DQ scales rounded to values ``target`` holds exactly (stored as they were), so a Q reading
    fp32 and its DQ writing fp16 keep one scale; returns how many changed.  Weight scales are rounded by the DQ's
    own conversion.  Scales stay positive (fp16: at least its smallest subnormal)."""
    if target == "fp32":
        return 0
    dt = FLOAT_TYPES[target]
    tiny = float(np.finfo(np.float16).smallest_subnormal) if target == "fp16" else 1e-38
    changed = 0
    seen: dict[int, gs.Constant] = {}
    for n in graph.nodes:
        if n.op not in ("QuantizeLinear", "DequantizeLinear") or len(n.inputs) < 2:
            continue
        if n.op == "DequantizeLinear" and isinstance(n.inputs[0], gs.Constant):
            continue  # a weight: its scale is converted with the DQ
        s = n.inputs[1]
        if not isinstance(s, gs.Constant) or float_kind(s.dtype) != "fp32":
            continue
        if id(s) in seen:
            n.inputs[1] = seen[id(s)]
            continue
        v = np.asarray(s.values)
        r = np.asarray(np.maximum(v.astype(dt).astype(np.float32), tiny), np.float32)
        if not np.array_equal(r, v):
            new = gs.Constant(s.name + f"_{target}_exact", r)
            seen[id(s)] = new
            n.inputs[1] = new
            changed += 1
        else:
            seen[id(s)] = s
    return changed


def retype(graph: gs.Graph, target: str, *, islands: dict[str, str] | None = None, keep_io: bool = True,
           opset: int | None = None) -> RetypeResult:
    """Rewrite ``graph`` (top level; subgraph bodies stay as they are) so that every float computation outside
    ``islands`` runs in ``target`` (module docstring)."""
    op = int(opset if opset is not None else (graph.opset or 13))
    round_activation_scales(graph, target)
    r = _Retyper(graph, target, islands or {}, keep_io, op)
    res = r.run()
    res.untouched = sorted(n.name for n in graph.nodes if _fixed(n, op))
    return res


def float_types_used(graph: gs.Graph) -> dict[str, int]:
    """How many float tensors of each type the graph holds (top level)."""
    out: dict[str, int] = {}
    for t in graph.tensors().values():
        k = _kind_of(t)
        if k is not None:
            out[k] = out.get(k, 0) + 1
    return out


def emulated(graph: gs.Graph, kinds: tuple[str, ...] = ("bf16",)) -> gs.Graph:
    """A copy of a graph whose ``kinds`` parts (bf16 by default; add fp16) run as TensorRT computes them:
    float32 compute, every tensor that was of such a kind rounded to it where it is made (a Cast there and back),
    constants and scales widened exactly.  TensorRT runs bf16/fp16 layers with float32 accumulation and the type's
    storage (its int8 layers in integers); onnxruntime's CPU kernels lack bf16 and run fp16 convolutions with less
    precise accumulation (DB's text detector: 15.4 dB against FP32 where fp16 storage alone gives 26.3, as the
    float32 graph's 26.6).  Graphs without those kinds come back as a plain copy."""
    from ..ir.graph import copy_graph

    g = copy_graph(graph)
    was = {t.name: kd for t in g.tensors().values()
           if isinstance(t, gs.Variable) and (kd := _kind_of(t)) in kinds}
    if not was and not any(isinstance(t, gs.Constant) and _kind_of(t) in kinds for t in g.tensors().values()):
        return g
    retype(g, "fp32", keep_io=True)
    names = Namer(g)
    io = {id(t) for t in g.inputs} | {id(t) for t in g.outputs}
    extra = []
    for t in list(g.tensors().values()):
        if t.name not in was or not isinstance(t, gs.Variable) or id(t) in io or _kind_of(t) != "fp32":
            continue
        kind = was[t.name]
        mid = gs.Variable(names(f"{t.name}_{kind}"), dtype=FLOAT_TYPES[kind], shape=t.shape)
        back = gs.Variable(names(t.name + "_rounded"), dtype=np.float32, shape=t.shape)
        users = list(t.outputs)
        extra += [gs.Node("Cast", names(f"{t.name}_to_{kind}"), attrs={"to": ELEM[kind]}, inputs=[t],
                          outputs=[mid]),
                  gs.Node("Cast", names(f"{t.name}_from_{kind}"), attrs={"to": ELEM["fp32"]}, inputs=[mid],
                          outputs=[back])]
        for c in users:
            for k, x in enumerate(c.inputs):
                if x is t:
                    c.inputs[k] = back
    g.nodes += extra
    g.toposort()
    return g


def float_target(graph: gs.Graph) -> str | None:
    """The float type most float computations of ``graph`` write (None when that is float32)."""
    counts: dict[str, int] = {}
    for n in graph.nodes:
        if n.op in ("QuantizeLinear", "Cast") or not n.outputs:
            continue
        k = _kind_of(n.outputs[0])
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    best = max(counts, key=lambda k: (counts[k], k)) if counts else None
    return None if best in (None, "fp32") else best


class computing_in_fp32:
    """``with computing_in_fp32(graph):`` the graph computes in float32 inside (fine-tuning, reports and
    sensitivity scans of a compiled fp16/bf16 model), and on leaving it gets its float type back, with the
    nodes that computed in float32 before (its islands) kept so."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.target: str | None = None
        self.islands: dict[str, str] = {}

    def __enter__(self) -> "computing_in_fp32":
        self.target = float_target(self.graph)
        if self.target is not None:
            self.islands = {n.name: "float32 in the model" for n in self.graph.nodes
                            if n.op not in ("QuantizeLinear", "DequantizeLinear", "Cast") and n.outputs
                            and _kind_of(n.outputs[0]) == "fp32"}
            retype(self.graph, "fp32")
        return self

    def __exit__(self, *exc) -> None:
        if self.target is not None:
            retype(self.graph, self.target, islands=self.islands)


def has_other_floats(graph: gs.Graph) -> bool:
    """The graph holds fp16 or bf16 anywhere that can be seen without shape inference: constants, declared
    tensors, inputs and outputs, Casts to those types."""
    for sub in iter_graphs(graph):
        for t in sub.tensors().values():
            if _kind_of(t) in ("fp16", "bf16"):
                return True
        for n in sub.nodes:
            if n.op == "Cast" and int(n.attrs.get("to", 0)) in (ELEM["fp16"], ELEM["bf16"]):
                return True
    return False


def fp32_view(graph: gs.Graph) -> gs.Graph:
    """``graph`` itself when it computes in float32, else a float32 copy (weights shared): for measurements that
    do not change the graph (sensitivity scans, reports)."""
    if float_target(graph) is None:
        return graph
    from ..ir.graph import copy_graph

    g = copy_graph(graph)
    retype(g, "fp32")
    return g


def in_fp32(call):
    """For a pass's ``call`` that works on float32 graphs only (the recovery passes, strip-qdq): on a graph whose
    float parts are fp16/bf16 it runs in float32 and the float type (with its fp32 islands) is written back, so
    ``trt-int8,gptq`` works as ``trt-int8{float=fp32},gptq,float-type`` would."""
    import functools

    @functools.wraps(call)
    def run(self, graph: gs.Graph, ctx):
        scope = computing_in_fp32(graph)
        with scope:
            res = call(self, graph, ctx)
        if scope.target is not None:
            res.modified = True
        return res
    return run
