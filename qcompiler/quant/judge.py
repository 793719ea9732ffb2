"""How the guard judges a quantized model's outputs: by what the user consumes, part by part.

An output (or each part of an output made by a ``Concat`` with static part sizes) gets a *form*, read from the
ops that produce it, and a measure of that form, always reported as a *health in dB* (higher is better, the
guard's threshold applies to every form alike):

=============  =====================================================  ==========================================
form           recognised by                                          health (dB)
=============  =====================================================  ==========================================
values         anything else (boxes, embeddings, logits, features)    SQNR: the lower of the SQNR over all
                                                                      samples and the mean per-sample SQNR
probabilities  a ``Sigmoid``/``HardSigmoid`` (through shape-only ops)  -10 log10 D, D the decision disagreement
                                                                      averaged over thresholds 0.1..0.9
classes        a ``Softmax`` whose axis is the output's last           -10 log10 of the share of positions whose
                                                                      top class changed
detections     ``[N, 4 + C, A]`` made by ``Concat`` of a 4-row part    -10 log10 (1 - F1) of the decoded
               and a probabilities part (a raw YOLO-style head)       detections (score 0.25, NMS 0.45, IoU 0.5)
rows           rows picked by ``TopK``/``NonMaxSuppression`` in the    SQNR after matching each FP32 row to its
               graph (end-to-end detectors: ``[N, K, F]``)             nearest quantized row (order is not signal)
=============  =====================================================  ==========================================

So 20 dB means an SQNR of 20 dB for values and at most 1 % disagreement for decisions (thresholded scores,
top classes, detections).  The *decision disagreement* of probabilities ``r`` (FP32) and ``g`` (quantized) is
``D = sum |c(r) - c(g)| / sum (c(r) + c(g))`` with ``c(x) = (clip(x, 0.1, 0.9) - 0.1) / 0.8``: the expected share
of elements on different sides of a threshold drawn uniformly from [0.1, 0.9], relative to the elements above it
(one minus the expected Dice coefficient).  Near-zero scores (most of a detector's anchors) weigh nothing; a
score moving across the thresholds weighs in proportion to how far it moves.

Each form also has a continuous *error* (noise over signal for values and rows; ``D`` for probabilities and
detections' scores; the probability error for classes) that adds up over independent noise sources: the guard's
search ranks quantization points by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..ir.graph import copy_graph
from ..ir.query import attr, producer, rank
from ..ir.shapes import infer_shapes
from .numerics import db, db_each

#: ops that move or reshape values without computing: a form is read through them
SHAPE_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Slice",
                       "Gather", "Expand", "Tile", "Split"})
#: ops whose output order depends on the data (rows of end-to-end detectors)
SELECT_OPS = frozenset({"TopK", "NonMaxSuppression"})
FORMS = ("values", "probabilities", "classes", "detections", "rows")
#: decision thresholds of the probabilities measure
LO, HI = 0.1, 0.9
#: the detection judge's decode: Ultralytics' default score threshold and NMS IoU, matched at IoU 0.5
DET_CONF, DET_NMS, DET_IOU = 0.25, 0.45, 0.5


@dataclass(frozen=True)
class Part:
    """One judged part: ``output[..., start:stop]`` along ``axis`` (``stop`` -1: the whole output)."""

    name: str
    output: str
    axis: int
    start: int
    stop: int
    form: str = "values"

    def take(self, x: np.ndarray) -> np.ndarray:
        if self.stop < 0 or x.ndim <= self.axis:
            return x
        idx = [slice(None)] * x.ndim
        idx[self.axis] = slice(self.start, self.stop)
        return x[tuple(idx)]


# ------------------------------------------------------------------------------------------------
# forms
# ------------------------------------------------------------------------------------------------


def _through_shape_ops(t: gs.Tensor, limit: int = 16) -> gs.Node | None:
    """The first producer of ``t`` that is not a shape-only op."""
    for _ in range(limit):
        p = producer(t)
        if p is None or p.op not in SHAPE_OPS or not p.inputs:
            return p
        t = p.inputs[0]
    return None


def _selects_rows(t: gs.Tensor, limit: int = 64) -> bool:
    """A TopK/NonMaxSuppression among the producers of ``t`` within ``limit`` nodes."""
    seen: set[int] = set()
    stack = [t]
    while stack and len(seen) < limit:
        cur = stack.pop()
        p = producer(cur)
        if p is None or id(p) in seen:
            continue
        seen.add(id(p))
        if p.op in SELECT_OPS:
            return True
        stack.extend(i for i in p.inputs if i.name and not isinstance(i, gs.Constant))
    return False


def form_of(t: gs.Tensor, out_rank: int | None) -> str:
    p = _through_shape_ops(t)
    if p is not None and p.op in ("Sigmoid", "HardSigmoid"):
        return "probabilities"
    if p is not None and p.op == "Softmax" and p.inputs:
        r = rank(p.inputs[0])
        axis = int(attr(p, "axis", -1))
        if r is not None and axis % r == r - 1:
            return "classes"
        return "probabilities"
    if out_rank == 3 and _selects_rows(t):
        return "rows"
    return "values"


def output_parts(reference: gs.Graph) -> list[Part]:
    """Every judged part of the model's outputs, with its form (module docstring).  An output made by a Concat
    (axis > 0) with static part sizes is judged per concatenated input; a Concat of a 4-row part and a
    probabilities part on axis 1 of a rank-3 output is a raw detection head, judged as one ``detections`` part."""
    g = copy_graph(reference)
    infer_shapes(g)
    out: list[Part] = []
    for o in g.outputs:
        p = producer(o)
        r = rank(o)
        if p is not None and p.op == "Concat" and len(p.inputs) > 1 and r is not None:
            axis = int(p.attrs.get("axis", 0)) % r
            sizes = []
            for i in p.inputs:
                shp = i.shape
                d = shp[axis] if shp is not None and len(shp) > axis else None
                sizes.append(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None)
            if axis > 0 and all(s is not None for s in sizes):
                forms = [form_of(i, r) for i in p.inputs]
                if r == 3 and axis == 1 and len(sizes) == 2 and sizes[0] == 4 and forms[1] == "probabilities":
                    out.append(Part(o.name, o.name, 0, 0, -1, "detections"))
                    continue
                start = 0
                for s, f in zip(sizes, forms):
                    assert s is not None
                    out.append(Part(f"{o.name}[{start}:{start + s}]", o.name, axis, start, start + s, f))
                    start += s
                continue
        out.append(Part(o.name, o.name, 0, 0, -1, form_of(o, r)))
    return out


# ------------------------------------------------------------------------------------------------
# detections (shared with the development set's metric)
# ------------------------------------------------------------------------------------------------


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (x0, y0, x1, y1)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (highest score first; ties by index)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        if len(order) == 1:
            break
        ious = iou_matrix(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou]
    return np.asarray(keep, np.int64)


def decode_head(out: np.ndarray, conf: float = DET_CONF, iou: float = DET_NMS) -> np.ndarray:
    """A raw head ``[4 + C, anchors]`` (cx, cy, w, h, class probabilities): the best class per anchor above
    ``conf``, class-aware NMS at ``iou``.  Rows of ``[x0, y0, x1, y1, score, class]``."""
    scores = out[4:].T
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    sel = best > conf
    if not sel.any():
        return np.zeros((0, 6))
    cx, cy, w, h = out[:4, sel]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float64)
    best, cls = best[sel].astype(np.float64), cls[sel]
    span = float(np.abs(boxes).max()) + 1.0
    keep = nms(boxes + cls[:, None] * 2 * span, best, iou)  # offset per class: one NMS, class-aware
    return np.concatenate([boxes[keep], best[keep, None], cls[keep, None].astype(np.float64)], 1)


def match_counts(ref: np.ndarray, got: np.ndarray, iou: float = DET_IOU, classes: bool = True) -> int:
    """Detections of ``got`` matched one-to-one to ``ref`` (greedy by IoU, same class when ``classes``)."""
    if not len(ref) or not len(got):
        return 0
    m = iou_matrix(ref[:, :4], got[:, :4])
    if classes:
        m = np.where(ref[:, None, 5] == got[None, :, 5], m, 0.0)
    used_r, used_g = set(), set()
    tp = 0
    for flat in np.argsort(-m, axis=None, kind="stable"):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < iou:
            break
        if i in used_r or j in used_g:
            continue
        used_r.add(i)
        used_g.add(j)
        tp += 1
    return tp


def f1(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], iou: float = DET_IOU, classes: bool = True) -> float:
    """F1 of ``got`` detections against ``ref`` over all images (both empty everywhere: 1.0)."""
    tp = sum(match_counts(r, g, iou, classes) for r, g in zip(ref, got))
    n = sum(len(r) for r in ref) + sum(len(g) for g in got)
    return 1.0 if n == 0 else 2 * tp / n


# ------------------------------------------------------------------------------------------------
# measures
# ------------------------------------------------------------------------------------------------


def _db(x: float) -> float:
    """A disagreement (a fraction) as health in dB, within [-50, 200]."""
    return float(np.clip(db(1.0, max(x, 1e-20)), -50.0, 200.0))


def _per_sample(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)


def _clip01(x: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(x, np.float64), LO, HI) - LO) / (HI - LO)


def _match_rows(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``g``'s rows reordered to match ``r``'s (greedy nearest, per sample): ``[K, F]`` each."""
    if r.ndim != 2 or r.shape != g.shape or not len(r):
        return g
    d = ((r[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    out = np.empty_like(g)
    used_r, used_g = set(), set()
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = divmod(int(flat), d.shape[1])
        if i in used_r or j in used_g:
            continue
        used_r.add(i)
        used_g.add(j)
        out[i] = g[j]
        if len(used_r) == len(r):
            break
    return out


class Judge:
    """Health (dB) and error of every part against the FP32 outputs ``ref`` (one dict of outputs per feed)."""

    def __init__(self, parts: list[Part], ref: list[dict[str, np.ndarray]]):
        self.parts = parts
        self.ref = ref
        self._ref_dets: dict[tuple[str, int], list[np.ndarray]] = {}

    @staticmethod
    def _dets(x: np.ndarray) -> list[np.ndarray]:
        return [decode_head(np.asarray(s, np.float64)) for s in x.reshape((-1,) + x.shape[-2:])]

    def _ref_detections(self, part: Part, k: int) -> list[np.ndarray]:
        key = (part.name, k)
        if key not in self._ref_dets:  # FP32's own detections do not change: decoded once
            self._ref_dets[key] = self._dets(self.ref[k][part.output])
        return self._ref_dets[key]

    def measure(self, got: list[dict[str, np.ndarray]], feeds: Sequence[int] | None = None) \
            -> dict[str, tuple[float, float]]:
        """part -> (health dB, error) over the feeds ``feeds`` (indices into ``ref``; all by default); ``got``
        holds the quantized outputs of those feeds, in that order."""
        idx = list(range(len(self.ref))) if feeds is None else list(feeds)
        out: dict[str, tuple[float, float]] = {}
        for part in self.parts:
            f = part.form
            if f == "detections":
                refs, gots = [], []
                num = den = 0.0
                for k, g in zip(idx, got):
                    refs += self._ref_detections(part, k)
                    gots += self._dets(g[part.output])
                    r_s, g_s = _clip01(self.ref[k][part.output][:, 4:]), _clip01(g[part.output][:, 4:])
                    num += float(np.abs(r_s - g_s).sum())
                    den += float((r_s + g_s).sum())
                dis = 1.0 - f1(refs, gots)
                out[part.name] = (_db(dis) if dis > 0 else 200.0, num / den if den > 0 else 0.0)
            elif f == "probabilities":
                num = den = 0.0
                for k, g in zip(idx, got):
                    r_s, g_s = _clip01(part.take(self.ref[k][part.output])), _clip01(part.take(g[part.output]))
                    num += float(np.abs(r_s - g_s).sum())
                    den += float((r_s + g_s).sum())
                dis = num / den if den > 0 else 0.0
                out[part.name] = (_db(dis) if den > 0 else 200.0, dis)
            elif f == "classes":
                flips = positions = 0
                sig = noise = 0.0
                for k, g in zip(idx, got):
                    x = np.asarray(part.take(self.ref[k][part.output]), np.float64)
                    y = np.asarray(part.take(g[part.output]), np.float64)
                    flips += int((x.argmax(-1) != y.argmax(-1)).sum())
                    positions += int(np.prod(x.shape[:-1]))
                    sig += float((x ** 2).sum())
                    noise += float(((x - y) ** 2).sum())
                rate = flips / max(positions, 1)
                out[part.name] = (_db(rate) if rate > 0 else 200.0, noise / sig if sig > 0 else 0.0)
            else:
                vals: list[float] = []
                tot_sig = tot_noise = 0.0
                for k, g in zip(idx, got):
                    x, y = part.take(self.ref[k][part.output]), part.take(g[part.output])
                    if f == "rows" and x.ndim == 3:
                        y = np.stack([_match_rows(a, b) for a, b in zip(x, y)])
                    x, y = _per_sample(x), _per_sample(y)
                    sig = np.sum(x ** 2, axis=1)
                    noise = np.sum((x - y) ** 2, axis=1)
                    tot_sig += float(sig.sum())
                    tot_noise += float(noise.sum())
                    keep = sig > 0
                    per = db_each(sig[keep], np.maximum(noise[keep], sig[keep] * 1e-20))  # per sample
                    vals.extend(np.clip(per, -50.0, 200.0).tolist())
                whole = float(np.clip(db(tot_sig, tot_noise), -50.0, 200.0))
                out[part.name] = (min(whole, float(np.mean(vals)) if vals else 200.0),
                                  tot_noise / tot_sig if tot_sig > 0 else 0.0)
        return out

    def health(self, got: list[dict[str, np.ndarray]], feeds: Sequence[int] | None = None) -> dict[str, float]:
        """part -> health (dB)."""
        return {k: v[0] for k, v in self.measure(got, feeds).items()}

    def per_feed_health(self, got: list[dict[str, np.ndarray]]) -> list[float]:
        """The worst part's health on each feed alone (the guard searches on the feeds that fare worst)."""
        return [min(self.health([g], [k]).values()) for k, g in enumerate(got)]
