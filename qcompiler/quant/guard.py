"""The accuracy guard: find the few activation tensors int8 cannot carry and repair them, within a budget, fast.

(Over 500 lines on purpose: one algorithm, its points, switchable graph, search and remedies, read top to bottom;
how outputs are judged is qcompiler/quant/judge.py.)

After ``insert-qdq`` the quantized model is compared with the FP32 one on a few calibration samples, output part
by output part, each by what its user consumes (qcompiler/quant/judge.py: SQNR for values, decision disagreement
for probabilities, top-class changes for class distributions, F1 of the decoded detections for a raw detection
head, matched rows for end-to-end detectors), as a health in dB.  When every part is at or above the threshold the
model is healthy and nothing changes: one quantized run over ``samples`` samples (their FP32 outputs are the ones
calibration kept).  A worst part within ``margin`` dB under the threshold is judged again on as many samples more
before anything is searched: a decision measure moves by a whole flipped decision on a few samples, and sampling
noise must not buy float layers.  A remedy is kept only when the worst part gains at least ``min_gain`` dB.

Otherwise every quantization point (an activation tensor, or the tensors sharing one scale) gets switches in one
onnxruntime session: its DequantizeLinear output is replaced by

    x + m * ((DQ(Q(x)) + sum_j a_j * (DQ_j(Q_j(x)) - DQ(Q(x)))) - x)

where ``m`` (input ``qc_guard_mask``) returns the point to float and each ``a_j`` (input ``qc_guard_alt``)
swaps in another range computed from the same statistics (min_max, percentile, mse), so every remedy of every
point can be tried without another session.  The search runs on the ``search_samples`` samples that fared worst,
within ``runs`` sample-runs (by default as many as calibration used: the guard costs about what calibration did):

1. *who*: group testing.  The error of the failing parts adds up, to first order, over independent noise sources,
   so "only this group quantized" measures the group's share (beyond the weights' own error, measured once with
   every activation float).  Starting from all points (in graph order), the group with the largest share is
   split in two: the first half is run, the second half's share is the rest, and a half with at least ``tau`` of
   the total goes on, down to single points (the culprits).  ``k`` culprits among ``n`` points cost about
   ``k log2(n / k)`` runs, not ``n``.
2. *another range*, free: each culprit alone with each of its other ranges; the ranges that lower its share are
   checked together on the judge samples and kept when the worst part improves.
3. *float*, most share per MAC first (a floor of 0.5 % of the MACs), prefix by prefix, each prefix checked on the
   judge samples, within ``budget`` (a fraction of the quantized layers' MACs) and ``max_steps`` checks, until
   every part is ``margin`` dB above the threshold; the best prefix is kept.

Weights are not searched (they are per-channel); a weighted layer whose input returns to float returns to
float entirely.  Everything is decided from counts, never from time, so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError, DiagnosticEngine
from ..ir.edit import Namer
from ..ir.graph import copy_graph, iter_graphs
from ..ir.layers import LayerGeometry, LayerKind
from ..ir.query import const_value, producer
from ..ir.runtime import Session
from ..ir.shapes import infer_shapes
from .emit import QParams, activation_qparams
from .judge import Judge, output_parts
from .strip import unquantize
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
    gain: float = 0.0  # the share of the error this range removes, the point quantized alone


@dataclass
class Point:
    """One quantization point: the activation tensors sharing a scale, the weighted layers that go float with
    them, what that costs, and the other ranges it may take."""

    tensors: list[str]
    layers: list[str]
    macs: float
    index: int = -1
    gain: float = 0.0  # its share of the failing parts' error (1: all of one part's), quantized alone
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
    runs: int = 0  # sample-runs of the quantized or FP32 model the guard made
    forms: dict[str, str] = field(default_factory=dict)  # part -> its form (qcompiler/quant/judge.py)
    culprits: list[str] = field(default_factory=list)  # the points the search found, largest share first


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
    for t in qs:  # graph order: the search's halves are regions of the graph
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


def _feeds(data, graph: gs.Graph, n: int, diagnostics: DiagnosticEngine | None = None) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` samples of the calibration data, as the feed dicts to run (one per batch)."""
    return [{k: np.ascontiguousarray(v) for k, v in b.feeds.items()}
            for b in data.limited(n).batches(graph, diagnostics)]


def _rows(feed: dict[str, np.ndarray]) -> int:
    """Samples in one feed: the largest leading dim of its inputs (1 for scalars)."""
    return max((int(np.shape(v)[0]) for v in feed.values() if np.ndim(v) > 0), default=1)


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
              samples: int = 4, search_samples: int = 1, runs: int = 32, max_steps: int = 6, margin: float = 2.0,
              tau: float = 0.05, min_gain: float = 0.25, range_of: RangeOf | None = None,
              diagnostics: DiagnosticEngine | None = None,
              threads: int | None = None,
              kept: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None) -> GuardResult:
    """Decide which points get which remedy (module docstring); the graph is not changed here.  ``sqnr`` is the
    health threshold (dB) of every part; ``runs`` bounds the search's runs.  ``kept``: (feeds, FP32 outputs)
    calibration kept from its own run; when they hold ``samples`` samples, the FP32 model is not run again."""
    parts = output_parts(reference)
    forms = {p.name: p.form for p in parts}
    # the healthy case first, and cheaply: the FP32 outputs calibration kept (or one FP32 run) and one run of the
    # quantized graph as it is
    used = 0
    names = [o.name for o in reference.outputs]
    feeds: list[dict[str, np.ndarray]] = []
    ref: list[dict[str, np.ndarray]] = []
    if kept and sum(_rows(f) for f, _ in kept) >= samples:
        for f, o in kept:
            if sum(_rows(x) for x in feeds) >= samples:
                break
            feeds.append(f)
            ref.append({k: o[k] for k in names})
    else:
        feeds = _feeds(data, reference, samples)
        ref, _ = _reference_run(reference, feeds, threads)
        used += len(feeds)
    judge = Judge(parts, ref)
    q_sess = Session(qdq, opt_level="basic", threads=threads)
    try:
        q_out = _run(q_sess, feeds)
    finally:
        q_sess.close()
    before = judge.health(q_out)
    worst0 = min(before.values())
    used += len(feeds)
    if sqnr - margin <= worst0 < sqnr:
        # just under the threshold on a few samples (a decision measure moves a point per flipped decision):
        # as many samples again before searching, so sampling noise does not buy float layers
        more = _feeds(data, reference, 2 * samples)[len(feeds):]
        if more:
            more_ref, _ = _reference_run(reference, more, threads)
            q_sess = Session(qdq, opt_level="basic", threads=threads)
            try:
                q_out += _run(q_sess, more)
            finally:
                q_sess.close()
            used += 2 * len(more)
            feeds, ref = feeds + more, ref + more_ref
            judge = Judge(parts, ref)
            before = judge.health(q_out)
            worst0 = min(before.values())
    if worst0 >= sqnr:
        return GuardResult(True, worst0, worst0, before, before, evaluations=1, runs=used, forms=forms)
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
        return GuardResult(False, worst0, worst0, before, before, evaluations=1, runs=used, forms=forms,
                           note="no activation quantization point to repair")
    failing = [p for p, v in before.items() if v < sqnr + margin]
    per_feed = judge.per_feed_health(q_out)
    search = sorted(sorted(range(len(feeds)), key=lambda k: (per_feed[k], k))[:max(1, search_samples)])
    n_alt = sum(len(p.alternatives) for p in points)
    sess = Session(switchable(qdq, points), opt_level="basic", threads=threads)
    evaluations = 1
    everything = {p.index for p in points}
    try:
        def run_with(floated: set[int], alts: set[int], on: list[int]) -> dict[str, tuple[float, float]]:
            nonlocal evaluations, used
            evaluations += 1
            used += len(on)
            m = np.ones(len(points), np.float32)
            m[list(floated)] = 0.0
            a = np.zeros(max(n_alt, 1), np.float32)
            a[list(alts)] = 1.0
            return judge.measure(_run(sess, [feeds[k] for k in on], {GUARD_INPUT: m, GUARD_ALT: a}), on)

        base = run_with(set(), set(), search)
        # the weights stay quantized whatever the switches say: their error is the floor every share stands on
        floor_err = run_with(everything, set(), search)
        scale = {p: max(base[p][1] - floor_err[p][1], 1e-30) for p in failing}

        def share(quantized: set[int], alts: set[int] | None = None) -> float:
            """What ``quantized`` points (alone, the others float) add to the failing parts' error beyond the
            weights', in units of what all of them add."""
            r = run_with(everything - quantized, alts or set(), search)
            return float(sum((r[p][1] - floor_err[p][1]) / scale[p] for p in failing))

        start = used  # the budget is the search's: the healthy check above is not counted

        def left() -> int:
            return runs - (used - start)

        # 1. who: group testing on the points in graph order.  Of a group's two halves only the first is run;
        # the second's share is the rest (shares add up to first order), so each level costs one run.
        total_share = float(len(failing))
        stack: list[tuple[float, list[Point]]] = [(total_share, list(points))]
        culprits: list[tuple[Point, float]] = []
        while stack and left() >= len(search):
            stack.sort(key=lambda e: (e[0], -e[1][0].index))
            s_g, group = stack.pop()
            if len(group) == 1:
                culprits.append((group[0], s_g))
                continue
            half = len(group) // 2
            s1 = share({p.index for p in group[:half]})
            for sub, s in ((group[:half], s1), (group[half:], s_g - s1)):
                if s >= tau * total_share:
                    stack.append((s, sub))
        culprits += [(g[0], s) for s, g in stack if len(g) == 1]  # singles the budget left on the stack
        culprits.sort(key=lambda e: (-e[1], e[0].index))
        for p, s in culprits:
            p.gain = s
        goal = sqnr + margin
        decisions: list[Decision] = []
        current, worst = before, worst0

        def check(floated: set[int], alts: set[int]) -> dict[str, float]:
            r = run_with(floated, alts, list(range(len(feeds))))
            return {k: v[0] for k, v in r.items()}

        # 2. another range, free: each culprit alone with each of its other ranges
        picks: list[tuple[Point, Alternative]] = []
        for p, s in culprits:
            best: tuple[float, Alternative | None] = (s, None)
            for alt in p.alternatives:
                if left() < len(search) + len(feeds):
                    break
                s_alt = share({p.index}, {alt.index})
                alt.gain = s - s_alt
                if s_alt < best[0] - 0.1 * s:
                    best = (s_alt, alt)
            if best[1] is not None:
                picks.append((p, best[1]))
        alts: set[int] = set()
        chosen_alt: set[int] = set()
        steps = 0
        if picks:
            trial = check(set(), {a.index for _, a in picks})
            steps += 1
            w = min(trial.values())
            if w > worst + min_gain:
                alts = {a.index for _, a in picks}
                chosen_alt = {p.index for p, _ in picks}
                for p, a in picks:
                    decisions.append(Decision(p.tensors, f"range={a.method}", [], 0.0, worst, w))
                current, worst = trial, w
        # 3. float, most share per MAC first, prefix by prefix within the budget; the best prefix wins
        floor = 5e-3 * total
        order = sorted((p for p, s in culprits if p.index not in chosen_alt and p.macs <= budget * total),
                       key=lambda p: (-p.gain / (p.macs + floor), p.index))
        floated: list[Point] = []
        spent = 0.0
        best_prefix: tuple[float, int, dict[str, float]] = (worst, 0, current)
        for p in order:
            if steps >= max_steps or best_prefix[0] >= goal:
                break
            if spent + p.macs > budget * total:
                continue
            floated.append(p)
            spent += p.macs
            trial = check({q.index for q in floated}, alts)
            steps += 1
            w = min(trial.values())
            if w > best_prefix[0] + min_gain:
                best_prefix = (w, len(floated), trial)
        chosen = floated[:best_prefix[1]]
        for p in chosen:
            decisions.append(Decision(p.tensors, "float", p.layers, p.macs / total, worst, best_prefix[0]))
        if chosen:
            current, worst = best_prefix[2], best_prefix[0]
        frac = sum(p.macs for p in chosen) / total
        return GuardResult(False, worst0, worst, before, current, decisions, frac, evaluations, points=points,
                           runs=used, forms=forms, culprits=[p.tensors[0] for p, _ in culprits])
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
    unquantize(graph, reference, floats, layers)
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


def summary(result: GuardResult) -> dict[str, Any]:
    return {"healthy_before": result.healthy_before, "worst_before_db": round(result.worst_before, 2),
            "worst_after_db": round(result.worst_after, 2), "float_macs_fraction": result.float_macs_fraction,
            "evaluations": result.evaluations, "runs": result.runs, "forms": dict(result.forms),
            "culprits": list(result.culprits),
            "parts_before_db": {k: round(v, 2) for k, v in result.parts_before.items()},
            "parts_after_db": {k: round(v, 2) for k, v in result.parts_after.items()},
            "decisions": [{"tensors": d.tensors, "remedy": d.remedy, "layers": d.layers,
                           "macs_fraction": d.macs_fraction, "worst_before_db": round(d.worst_before, 2),
                           "worst_after_db": round(d.worst_after, 2)} for d in result.decisions]}
