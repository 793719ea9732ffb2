"""The accuracy guard: find the few activation tensors int8 cannot carry and repair them, within a budget.

After ``insert-qdq`` the quantized model is compared with the FP32 one on a few calibration samples.  Each
output is judged by the parts the user consumes: an output made by a ``Concat`` (a detector's boxes beside its
class scores) is judged part by part (each by the lower of its SQNR over all samples and its mean per-sample
SQNR), so scores cannot hide behind pixel coordinates.  When every part is at or
above ``sqnr`` dB the model is healthy and nothing changes (the common case: one FP32 and one quantized run).

Otherwise every quantization point (an activation tensor, or the tensors sharing one scale) gets switches in one
onnxruntime session: its DequantizeLinear output is replaced by

    x + m * ((DQ(Q(x)) + sum_j a_j * (DQ_j(Q_j(x)) - DQ(Q(x)))) - x)

where ``m`` (input ``qc_guard_mask``) returns the point to float and each ``a_j`` (input ``qc_guard_alt``)
swaps in another range computed from the same statistics (min_max, percentile, mse: the observer that suits the
tensor), so every remedy of every point can be tried without another session.  Two remedies per point:

* another range: free (no float compute), tried first when it helps;
* float: the weighted layers reading the point go float too, which costs their MACs.

A scan on ``scan_samples`` samples quantizes each point alone (everything else float): what it costs on the
worst output part on its own, and what each of its other ranges gains there.  In isolation, so that points that
only hurt together (a huge activation that ruins the next layers' ranges too) are still seen.  Then:

1. the best other range of every point where it helps on its own, checked together (free);
2. float, most damage per MAC first (a floor of 0.5 % of the MACs), one more point per step, each prefix
   checked on the evaluation samples, within ``budget`` (a fraction of the quantized layers' MACs, counted at
   the evaluation inputs' shapes) and ``max_steps`` checks, until every part is ``margin`` dB above the
   threshold; the best prefix is kept.

Weights are not searched (they are per-channel); a weighted layer whose input returns to float returns to
float entirely.

Cost: healthy models pay two runs on ``samples`` samples; unhealthy ones a scan of ``remedies x scan_samples``
sample-runs and a few checks, all in one session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError, DiagnosticEngine
from ..ir.edit import Namer, replace_all_uses
from ..ir.io import copy_graph, iter_graphs
from ..ir.layers import LayerGeometry, LayerKind
from ..ir.query import const_value, producer, rank
from ..ir.runtime import Session
from ..ir.shapes import infer_shapes
from .emit import QParams, activation_qparams
from .plan import Plan

GUARD_INPUT = "qc_guard_mask"
GUARD_ALT = "qc_guard_alt"
#: ranges a point may switch to (computed from its calibration statistics; those needing a histogram only when
#: one was collected)
ALTERNATIVES = ("min_max", "percentile", "mse")


@dataclass
class Alternative:
    method: str
    qparams: QParams
    index: int = -1
    gain: float = 0.0  # what this range gains over the current one, the point quantized alone (dB)


@dataclass
class Point:
    """One quantization point: the activation tensors sharing a scale, the weighted layers that go float with
    them, what that costs, and the other ranges it may take."""

    tensors: list[str]
    layers: list[str]
    macs: float
    index: int = -1
    gain: float = 0.0  # what it costs quantized alone, everything else float (dB of the worst output part)
    alternatives: list[Alternative] = field(default_factory=list)


@dataclass
class Decision:
    tensors: list[str]
    remedy: str  # "float" or "range=<method>"
    layers: list[str]
    macs_fraction: float
    worst_before: float
    worst_after: float


@dataclass
class GuardResult:
    healthy_before: bool
    worst_before: float
    worst_after: float
    parts_before: dict[str, float]
    parts_after: dict[str, float]
    decisions: list[Decision] = field(default_factory=list)
    float_macs_fraction: float = 0.0
    evaluations: int = 0
    note: str = ""
    points: list[Point] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# outputs, judged by part
# --------------------------------------------------------------------------------------------


def output_parts(reference: gs.Graph) -> dict[str, list[tuple[str, int, int, int]]]:
    """output -> [(part name, axis, start, stop)]: an output produced by a Concat with static part sizes is
    judged per concatenated input (boxes and scores apart); any other output is one part."""
    out: dict[str, list[tuple[str, int, int, int]]] = {}
    if not any(getattr(producer(o), "op", None) == "Concat" for o in reference.outputs):
        return {o.name: [(o.name, 0, 0, -1)] for o in reference.outputs}
    g = copy_graph(reference)
    infer_shapes(g)
    for o in g.outputs:
        p = producer(o)
        parts = [(o.name, 0, 0, -1)]
        r = rank(o)
        if p is not None and p.op == "Concat" and len(p.inputs) > 1 and r is not None:
            axis = int(p.attrs.get("axis", 0)) % r
            sizes = []
            for i in p.inputs:
                shp = i.shape
                d = shp[axis] if shp is not None and len(shp) > axis else None
                sizes.append(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None)
            if axis > 0 and all(s is not None for s in sizes):
                parts, start = [], 0
                for s in sizes:
                    assert s is not None
                    parts.append((f"{o.name}[{start}:{start + s}]", axis, start, start + s))
                    start += s
        out[o.name] = parts
    return out


class Judge:
    """SQNR of every output part against the FP32 outputs on the evaluation feeds: per sample, averaged in dB, so
    a few samples with large outputs (a rare huge activation) cannot hide what happens to all the others."""

    def __init__(self, parts: dict[str, list[tuple[str, int, int, int]]], ref: list[dict[str, np.ndarray]]):
        self.parts = parts
        self.ref = ref

    @staticmethod
    def _slice(x: np.ndarray, axis: int, a: int, b: int) -> np.ndarray:
        if b < 0 or x.ndim <= axis:
            return x
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(a, b)
        return x[tuple(idx)]

    @staticmethod
    def _per_sample(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)

    def sqnr(self, got: list[dict[str, np.ndarray]], limit: int | None = None) -> dict[str, float]:
        """Per part: the lower of the SQNR over all samples (rare large outputs weigh most) and the mean of the
        per-sample SQNRs in dB (every sample weighs the same): a failure of either kind shows."""
        vals: dict[str, list[float]] = {}
        tot_sig: dict[str, float] = {}
        tot_noise: dict[str, float] = {}
        for r, g in list(zip(self.ref, got))[:limit]:
            for o, ps in self.parts.items():
                for name, ax, a, b in ps:
                    x = self._per_sample(self._slice(r[o], ax, a, b))
                    y = self._per_sample(self._slice(g[o], ax, a, b))
                    sig = np.sum(x ** 2, axis=1)
                    noise = np.sum((x - y) ** 2, axis=1)
                    tot_sig[name] = tot_sig.get(name, 0.0) + float(sig.sum())
                    tot_noise[name] = tot_noise.get(name, 0.0) + float(noise.sum())
                    keep = sig > 0
                    db = 10 * np.log10(sig[keep] / np.maximum(noise[keep], sig[keep] * 1e-20))
                    vals.setdefault(name, []).extend(np.clip(db, -50.0, 200.0).tolist())
        out = {}
        for name, v in vals.items():
            s, n = tot_sig[name], tot_noise[name]
            whole = 200.0 if n <= 0 else (-50.0 if s <= 0 else min(200.0, float(10 * np.log10(s / n))))
            out[name] = min(whole, float(np.mean(v)) if v else 200.0)
        return out


# --------------------------------------------------------------------------------------------
# points and their remedies
# --------------------------------------------------------------------------------------------


def _activation_qs(graph: gs.Graph) -> dict[str, list[gs.Node]]:
    """Activation tensor name -> its QuantizeLinear nodes (in any graph of the model)."""
    out: dict[str, list[gs.Node]] = {}
    for g in iter_graphs(graph):
        for n in g.nodes:
            if n.op == "QuantizeLinear" and const_value(n.inputs[0]) is None:
                out.setdefault(n.inputs[0].name, []).append(n)
    return out


#: (tensors of a point, method) -> the (lo, hi) range that method gives them, or None (no histogram, ...)
RangeOf = Callable[[list[str], str], "tuple[float, float] | None"]


def _alternatives(group: list[str], spec, range_of: RangeOf | None,
                  current: tuple[float, float] | None) -> list[Alternative]:
    """Other ranges for a point that differ from the current one."""
    if range_of is None or spec is None:
        return []
    out: list[Alternative] = []
    cur = max(abs(current[0]), abs(current[1])) if current is not None else None
    for method in ALTERNATIVES:
        r = range_of(group, method)
        if r is None:
            continue
        lo, hi = r
        if cur is not None and abs(max(abs(lo), abs(hi)) - cur) <= 0.15 * max(cur, 1e-12):
            continue  # within 15 % of the current range: not a different choice
        qp = activation_qparams(spec, lo, hi)
        if any(np.allclose(x.qparams.scale, qp.scale, rtol=1e-6) for x in out):
            continue
        out.append(Alternative(method, qp))
    return out


def points_of(qdq: gs.Graph, plan: Plan, macs: dict[str, float], range_of: RangeOf | None = None,
              ranges: dict[str, tuple[float, float]] | None = None) -> list[Point]:
    """The points: activation tensors quantized in ``qdq``, merged by the plan's shared-scale groups."""
    qs = _activation_qs(qdq)
    layer_inputs: dict[str, list[str]] = {}
    weighted = {w.node for w in plan.weights}
    int32_bias = {w.node for w in plan.weights if w.bias_index is not None}
    spec_of = {a.tensor: a.spec for a in plan.acts}
    for a in plan.acts:
        for consumer, _ in a.edges:
            if consumer in weighted:
                layer_inputs.setdefault(a.tensor, []).append(consumer)
    seen: set[str] = set()
    points = []
    for t in sorted(qs):
        if t in seen:
            continue
        group = [x for x in plan.group_of(t) if x in qs] or [t]
        seen |= set(group)
        layers = sorted({n for x in group for n in layer_inputs.get(x, [])})
        p = Point(group, layers, float(sum(macs.get(n, 0.0) for n in layers)))
        spec = next((spec_of[x] for x in group if x in spec_of), None)
        if not (set(layers) & int32_bias):  # an int32 bias is scaled by the input scale: keep that one
            p.alternatives = _alternatives(group, spec, range_of, (ranges or {}).get(t))
        points.append(p)
    j = 0
    for k, p in enumerate(points):
        p.index = k
        for alt in p.alternatives:
            alt.index = j
            j += 1
    return points


def switchable(qdq: gs.Graph, points: list[Point]) -> gs.Graph:
    """A copy of ``qdq`` with inputs ``qc_guard_mask`` [points] (0 returns a point to float) and ``qc_guard_alt``
    [alternatives] (1 swaps in that range), mixed as in the module docstring."""
    g = copy_graph(qdq)
    names = Namer(g)
    n_alt = sum(len(p.alternatives) for p in points)
    mask = gs.Variable(GUARD_INPUT, dtype=np.float32, shape=[len(points)])
    alt = gs.Variable(GUARD_ALT, dtype=np.float32, shape=[max(n_alt, 1)])
    g.inputs += [mask, alt]
    qs = _activation_qs(g)
    graph_of = {id(n): sub for sub in iter_graphs(g) for n in sub.nodes}

    def pick(vec: gs.Variable, index: int, base: str) -> tuple[gs.Node, gs.Variable]:
        idx = gs.Constant(names(f"{base}_idx"), np.array(index, np.int64))
        v = gs.Variable(names(base), dtype=np.float32, shape=[])
        return gs.Node("Gather", names(base + "_gather"), inputs=[vec, idx], outputs=[v]), v

    def node(op: str, ins: list, base: str, **attrs) -> tuple[gs.Node, gs.Variable]:
        out = gs.Variable(names(base), dtype=np.float32)
        return gs.Node(op, names(base + "_" + op.lower()), attrs=attrs, inputs=ins, outputs=[out]), out

    for p in points:
        for t in p.tensors:
            for q in qs.get(t, []):
                sub = graph_of[id(q)]
                x = q.inputs[0]
                new: list[gs.Node] = []
                gm, m = pick(mask, p.index, f"qc_guard_m{p.index}")
                new.append(gm)
                for dq in [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
                    d = dq.outputs[0]
                    consumers = list(d.outputs)  # before the switch's own nodes read d
                    eff: gs.Tensor = d
                    for a in p.alternatives:
                        ga, av = pick(alt, a.index, f"qc_guard_a{a.index}")
                        s = gs.Constant(names(f"qc_guard_s{a.index}"), np.asarray(a.qparams.scale))
                        z = gs.Constant(names(f"qc_guard_z{a.index}"), np.asarray(a.qparams.zero_point))
                        qa = gs.Variable(names(f"qc_guard_q{a.index}"), dtype=q.outputs[0].dtype)
                        attrs = {"saturate": 1} if a.qparams.spec.fp8 else {}
                        n_q = gs.Node("QuantizeLinear", names(f"qc_guard_Q{a.index}"), attrs=attrs,
                                      inputs=[x, s, z], outputs=[qa])
                        n_dq, da = node("DequantizeLinear", [qa, s, z], f"qc_guard_dq{a.index}")
                        n_d, dd = node("Sub", [da, d], f"qc_guard_ad{a.index}")
                        n_m, dm = node("Mul", [dd, av], f"qc_guard_am{a.index}")
                        n_e, e2 = node("Add", [eff, dm], f"qc_guard_ae{a.index}")
                        new += [ga, n_q, n_dq, n_d, n_m, n_e]
                        eff = e2
                    n1, diff = node("Sub", [eff, x], d.name + "_qc_diff")
                    n2, scaled = node("Mul", [diff, m], d.name + "_qc_scaled")
                    n3, mixed = node("Add", [x, scaled], d.name + "_qc_mixed")
                    mixed.shape = d.shape
                    new += [n1, n2, n3]
                    for c in consumers:
                        for k, i in enumerate(c.inputs):
                            if i is d:
                                c.inputs[k] = mixed
                    for k, o in enumerate(sub.outputs):
                        if o is d:
                            sub.outputs[k] = mixed
                sub.nodes.extend(new)
    for sub in iter_graphs(g):
        sub.toposort()
    return g


# --------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------


def _weight_shape(n: gs.Node) -> tuple[int, ...] | None:
    w = n.inputs[1] if len(n.inputs) > 1 else None
    if w is None:
        return None
    if isinstance(w, gs.Constant):
        return tuple(w.shape)
    p = producer(w)  # a weight behind a DequantizeLinear
    if p is not None and p.op == "DequantizeLinear" and isinstance(p.inputs[0], gs.Constant):
        return tuple(p.inputs[0].shape)
    return None


def layer_macs(graph: gs.Graph, out_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, float]:
    """Multiply-accumulates per weighted layer for one sample: weight elements times output positions (from
    ``out_shapes``, the layer outputs' shapes on real inputs, else from shape inference; unknown dims count 1)."""
    shapes = dict(out_shapes or {})
    if not shapes:
        g = copy_graph(graph)
        infer_shapes(g)
        graph = g
    out: dict[str, float] = {}
    for sub in iter_graphs(graph):
        for n in sub.nodes:
            ws = _weight_shape(n)
            geo = LayerGeometry.of(n, ws) if ws is not None else None
            if geo is None or not n.outputs:
                continue
            shp = shapes.get(n.outputs[0].name) or n.outputs[0].shape
            positions = 1.0
            if shp:
                dims = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shp]
                if geo.kind.is_conv:
                    positions = float(np.prod(np.asarray(dims[2:], np.float64))) if len(dims) > 2 else 1.0
                else:
                    positions = float(np.prod(np.asarray(dims[1:-1], np.float64))) if len(dims) > 2 else 1.0
            out[n.name] = float(np.prod(geo.weight_shape)) * positions
    return out


# --------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------


def _feeds(data, graph: gs.Graph, n: int) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` samples of the calibration data, as the feed dicts to run (one per batch)."""
    return [{k: np.ascontiguousarray(v) for k, v in b.feeds.items()} for b in data.limited(n).batches(graph, None)]


def _run(sess: Session, feeds: list[dict[str, np.ndarray]], extra: dict[str, np.ndarray] | None = None,
         limit: int | None = None) -> list[dict[str, np.ndarray]]:
    return [sess.run_dict({**{k: v for k, v in f.items() if k in sess.input_names}, **(extra or {})})
            for f in feeds[:limit]]


def _reference_run(reference: gs.Graph, feeds, threads: int | None, with_shapes: bool = False):
    """FP32 outputs on the feeds and, with ``shapes``, the output shape of every top-level weighted layer (for
    its MACs; exposing them costs memory and time, so only when the model is unhealthy)."""
    if not with_shapes:
        sess = Session(reference, opt_level="all", threads=threads)  # float: onnxruntime may fuse freely
        try:
            return _run(sess, feeds), {}
        except CalibrationError:
            raise
        except Exception as exc:
            # calibration runs only what its statistics need; this is the first run of the whole model
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CalibrationError(f"the FP32 model does not run on the calibration data: {msg}", code="QC406",
                                   hint="check the model with onnxruntime on these inputs; the output guard "
                                        "compares the model's outputs, so the whole model must run") from None
        finally:
            sess.close()
    g = copy_graph(reference)
    ts = g.tensors()
    layer_outs = [n.outputs[0].name for n in g.nodes if LayerKind.of(n.op) is not None and n.outputs
                  and n.outputs[0].name not in {o.name for o in g.outputs}]
    model_outs = [o.name for o in g.outputs]
    g.outputs = list(g.outputs) + [ts[t] for t in layer_outs]
    sess = Session(g, threads=threads)
    try:
        res = _run(sess, feeds)
    finally:
        sess.close()
    shapes: dict[str, tuple[int, ...]] = {}
    for r in res[:1]:
        for name, v in r.items():
            shapes[name] = (1,) + tuple(v.shape[1:])
    return [{k: r[k] for k in model_outs} for r in res], shapes


def run_guard(qdq: gs.Graph, reference: gs.Graph, plan: Plan, data, *, sqnr: float = 20.0, budget: float = 0.02,
              samples: int = 16, scan_samples: int = 4, max_steps: int = 8, margin: float = 5.0,
              range_of: RangeOf | None = None, diagnostics: DiagnosticEngine | None = None,
              threads: int | None = None) -> GuardResult:
    """Decide which points get which remedy (see the module docstring); the graph is not changed here."""
    feeds = _feeds(data, reference, samples)
    parts = output_parts(reference)
    # the healthy case first, and cheaply: one FP32 run and one run of the quantized graph as it is
    ref, _ = _reference_run(reference, feeds, threads)
    judge = Judge(parts, ref)
    q_sess = Session(qdq, opt_level="basic", threads=threads)
    try:
        before = judge.sqnr(_run(q_sess, feeds))
    finally:
        q_sess.close()
    worst0 = min(before.values())
    if worst0 >= sqnr:
        return GuardResult(True, worst0, worst0, before, before, evaluations=1)
    shapes = _reference_run(reference, feeds[:1], threads, with_shapes=True)[1]
    macs = layer_macs(reference, shapes)
    ranges: dict[str, tuple[float, float]] = {}
    if range_of is not None:
        for act in plan.acts:
            r = range_of(plan.group_of(act.tensor), "current")
            if r is not None:
                ranges[act.tensor] = r
    points = points_of(qdq, plan, macs, range_of, ranges)
    total = float(sum(macs.get(w.node, 0.0) for w in plan.weights)) or 1.0
    if not points:
        return GuardResult(False, worst0, worst0, before, before, evaluations=1,
                           note="no activation quantization point to repair")
    scan_feeds = _feeds(data, reference, max(1, min(scan_samples, samples)))
    scan_judge = Judge(parts, _reference_run(reference, scan_feeds, threads)[0])
    n_alt = sum(len(p.alternatives) for p in points)
    sess = Session(switchable(qdq, points), opt_level="basic", threads=threads)
    evaluations = 1
    try:
        def evaluate(floated: set[int], alts: set[int], scan: bool = False) -> dict[str, float]:
            nonlocal evaluations
            evaluations += 1
            m = np.ones(len(points), np.float32)
            m[list(floated)] = 0.0
            a = np.zeros(max(n_alt, 1), np.float32)
            a[list(alts)] = 1.0
            extra = {GUARD_INPUT: m, GUARD_ALT: a}
            if scan:
                return scan_judge.sqnr(_run(sess, scan_feeds, extra))
            return judge.sqnr(_run(sess, feeds, extra))

        # the scan, on a few samples: each point quantized alone (everything else float), as it is and with each
        # other range.  In isolation, so that points that only hurt together are still seen.
        every = {p.index for p in points}
        clean = min(evaluate(every, set(), scan=True).values())
        for p in points:
            alone = min(evaluate(every - {p.index}, set(), scan=True).values())
            p.gain = clean - alone  # what this point costs on its own (dB)
            for alt in p.alternatives:
                alt.gain = min(evaluate(every - {p.index}, {alt.index}, scan=True).values()) - alone
        goal = sqnr + margin
        decisions: list[Decision] = []
        current, worst = before, worst0
        steps = 0
        # 1. other ranges, free: the best of each point that helps on its own, checked together
        alts: set[int] = set()
        picks = []
        for p in points:
            best = max(p.alternatives, key=lambda a: a.gain, default=None)
            if best is not None and best.gain > 0.5:
                picks.append((p, best))
        if picks:
            trial = evaluate(set(), {a.index for _, a in picks})
            steps += 1
            w = min(trial.values())
            if w > worst + 0.05:
                alts = {a.index for _, a in picks}
                for p, a in sorted(picks, key=lambda pa: -pa[1].gain):
                    decisions.append(Decision(p.tensors, f"range={a.method}", [], 0.0, worst, w))
                current, worst = trial, w
            else:
                picks = []
        chosen_alt = {p.index for p, _ in picks}
        # 2. float, most damage per MAC first (a floor of 0.5 % of the MACs), prefix by prefix within the budget;
        # the best prefix wins (points that only hurt together are floated together)
        floor = 5e-3 * total
        order = sorted((p for p in points if p.gain > 0.1 and p.index not in chosen_alt and p.macs <= budget * total),
                       key=lambda p: (-p.gain / (p.macs + floor), p.index))
        floated: list[Point] = []
        used = 0.0
        best_prefix: tuple[float, int, dict[str, float]] = (worst, 0, current)
        for p in order:
            if steps >= max_steps or best_prefix[0] >= goal:
                break
            if used + p.macs > budget * total:
                continue
            floated.append(p)
            used += p.macs
            trial = evaluate({q.index for q in floated}, alts)
            steps += 1
            w = min(trial.values())
            if w > best_prefix[0] + 0.05:
                best_prefix = (w, len(floated), trial)
        kept = floated[:best_prefix[1]]
        for p in kept:
            decisions.append(Decision(p.tensors, "float", p.layers, p.macs / total, worst, best_prefix[0]))
        if kept:
            current, worst = best_prefix[2], best_prefix[0]
        used = sum(p.macs for p in kept)
        return GuardResult(False, worst0, worst, before, current, decisions, used / total, evaluations,
                           points=points)
    finally:
        sess.close()


def apply_decisions(graph: gs.Graph, reference: gs.Graph, result: GuardResult, plan: Plan) -> None:
    """Carry out the decisions on the quantized ``graph`` in place: float points read the float tensor again and
    their layers get the FP32 weights back; a new range replaces the scale and zero point of the point's
    QuantizeLinear/DequantizeLinear pairs."""
    floats = {t for d in result.decisions if d.remedy == "float" for t in d.tensors}
    layers = {n for d in result.decisions if d.remedy == "float" for n in d.layers}
    new_ranges: dict[str, QParams] = {}
    if result.points:
        by_tensor = {t: p for p in result.points for t in p.tensors}
        for d in result.decisions:
            if d.remedy.startswith("range="):
                p = by_tensor[d.tensors[0]]
                a = next(x for x in p.alternatives if x.method == d.remedy.split("=", 1)[1])
                for t in d.tensors:
                    new_ranges[t] = a.qparams
    apply_float(graph, reference, floats, layers)
    if new_ranges:
        names = Namer(graph)
        for g in iter_graphs(graph):
            for q in [n for n in g.nodes if n.op == "QuantizeLinear" and n.inputs[0].name in new_ranges]:
                qp = new_ranges[q.inputs[0].name]
                s = gs.Constant(names(q.inputs[0].name + "_scale"), np.asarray(qp.scale))
                z = gs.Constant(names(q.inputs[0].name + "_zero_point"), np.asarray(qp.zero_point))
                q.inputs[1], q.inputs[2] = s, z
                for dq in q.outputs[0].outputs:
                    if dq.op == "DequantizeLinear":
                        dq.inputs[1], dq.inputs[2] = s, z
        graph.cleanup(remove_unused_graph_inputs=False)
    for n in layers:
        plan.float_nodes[n] = "kept float by the guard"


def apply_float(graph: gs.Graph, reference: gs.Graph, tensors: set[str], layers: set[str]) -> None:
    """Return ``tensors`` to float in the quantized ``graph`` (their consumers read the float tensor again) and
    give ``layers`` their FP32 weights (and biases) back.  In place."""
    ref_nodes = {n.name: n for g in iter_graphs(reference) for n in g.nodes}
    for g in iter_graphs(graph):
        for q in [n for n in g.nodes if n.op == "QuantizeLinear" and n.inputs[0].name in tensors]:
            x = q.inputs[0]
            for dq in [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
                replace_all_uses(g, dq.outputs[0], x)
        for n in g.nodes:
            if n.name not in layers:
                continue
            rn = ref_nodes.get(n.name)
            for k in range(1, len(n.inputs)):
                p = producer(n.inputs[k])
                if p is not None and p.op == "DequantizeLinear" and rn is not None and k < len(rn.inputs):
                    v = const_value(rn.inputs[k])
                    n.inputs[k] = gs.Constant(n.inputs[k].name + "_float", np.asarray(v)) if v is not None \
                        else rn.inputs[k]
    graph.cleanup(remove_unused_graph_inputs=False)


def summary(result: GuardResult) -> dict[str, Any]:
    return {"healthy_before": result.healthy_before, "worst_before_db": round(result.worst_before, 2),
            "worst_after_db": round(result.worst_after, 2), "float_macs_fraction": result.float_macs_fraction,
            "evaluations": result.evaluations,
            "parts_before_db": {k: round(v, 2) for k, v in result.parts_before.items()},
            "parts_after_db": {k: round(v, 2) for k, v in result.parts_after.items()},
            "decisions": [{"tensors": d.tensors, "remedy": d.remedy, "layers": d.layers,
                           "macs_fraction": d.macs_fraction, "worst_before_db": round(d.worst_before, 2),
                           "worst_after_db": round(d.worst_after, 2)} for d in result.decisions]}
