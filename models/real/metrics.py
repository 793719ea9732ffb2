"""Task metrics of the development set, each comparing a quantized model's result with the FP32 model's own
(what a user consumes: detections after threshold and NMS, decoded strings, masks, embeddings, tokens)."""

from __future__ import annotations

import numpy as np

from qcompiler.quant.judge import decode_head, f1
from qcompiler.quant.numerics import sqnr_db

__all__ = ["sqnr_db", "decode_head", "f1"]




# ------------------------------------------------------------------------------------------------
# detections (boxes x0, y0, x1, y1 with a class and a score)
# ------------------------------------------------------------------------------------------------


def yolo_detections(out: np.ndarray, conf: float = 0.3, iou: float = 0.45) -> np.ndarray:
    """Ultralytics-style decode of one raw head output ``[4 + C, anchors]`` (cx, cy, w, h, class scores already
    through a sigmoid): the best class per anchor above ``conf``, class-aware NMS at ``iou``.  Rows of
    ``[x0, y0, x1, y1, score, class]`` (the guard's own decoder, qcompiler/quant/judge.py, at this threshold)."""
    return decode_head(out, conf, iou)


def match_f1(ref: list[np.ndarray], got: list[np.ndarray], iou: float = 0.5, classes: bool = True) -> float:
    """F1 of ``got`` detections against ``ref`` (rows starting x0, y0, x1, y1, [score, class]) over all images:
    greedy matching by IoU, same class when ``classes``.  Both empty everywhere: 1.0."""
    return f1(ref, got, iou, classes)


# ------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> list[str]:
    """Greedy CTC decodes of ``[N, T, C]`` probabilities (class 0 is blank; class i is ``charset[i - 1]``)."""
    out = []
    for seq in probs.argmax(-1):
        chars, prev = [], 0
        for k in seq:
            k = int(k)
            if k != prev and k != 0:
                chars.append(charset[k - 1] if k - 1 < len(charset) else "")
            prev = k
        out.append("".join(chars))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def word_accuracy(ref: list[str], got: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(ref, got)])) if ref else 1.0


def char_error_rate(ref: list[str], got: list[str]) -> float:
    return sum(edit_distance(a, b) for a, b in zip(ref, got)) / max(sum(len(a) for a in ref), 1)


# ------------------------------------------------------------------------------------------------
# masks and regions
# ------------------------------------------------------------------------------------------------


def mask_iou(ref: np.ndarray, got: np.ndarray) -> float:
    """IoU of two boolean masks (summed over all images); both empty: 1.0."""
    inter = np.logical_and(ref, got).sum()
    union = np.logical_or(ref, got).sum()
    return float(inter / union) if union else 1.0


def region_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.6, min_size: int = 3) -> np.ndarray:
    """Text regions of a DB probability map ``[H, W]``: connected components of ``prob > thresh`` whose mean
    probability is at least ``box_thresh``, as boxes (x0, y0, x1, y1) - the package's post-processing without
    the polygon unclip, which scales every box alike and so does not change which boxes match."""
    from scipy import ndimage

    lab, n = ndimage.label(prob > thresh)
    if n == 0:
        return np.zeros((0, 4))
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        ys, xs = sl
        if ys.stop - ys.start < min_size or xs.stop - xs.start < min_size:
            continue
        region = lab[sl] == k
        if prob[sl][region].mean() < box_thresh:
            continue
        out.append([xs.start, ys.start, xs.stop, ys.stop])
    return np.asarray(out, np.float64).reshape(-1, 4)


# ------------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------------


def cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    return (ref * got).sum(-1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)


def topk_overlap(ref: np.ndarray, got: np.ndarray, k: int = 5) -> float:
    """Mean overlap of each row's ``k`` nearest other rows (cosine) between two embedding sets."""
    def nearest(e):
        e = np.asarray(e, np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]

    a, b = nearest(ref), nearest(got)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
