"""The guard's judge: each output part gets the form its producers say, and a health in dB that follows what a
user of that form consumes (thresholded scores, top classes, decoded detections, matched rows)."""

from __future__ import annotations

import numpy as np

from qcompiler.quant.judge import Judge, decode_head, f1, output_parts
from qcompiler.testing import run

from ..builders import G


def _head(anchors: int = 64, classes: int = 3):
    """x [1, 8, A] -> boxes (Mul by 100) and sigmoid scores, Concat on axis 1: a raw YOLO-style head."""
    b = G(seed=3)
    x = b.input("x", [1, 8, anchors])
    boxes = b.node("Mul", [b.node("Slice", [x, b.init(np.array([0], np.int64), name="s0"),
                                            b.init(np.array([4], np.int64), name="e0"),
                                            b.init(np.array([1], np.int64), name="a0")]),
                           b.init(np.float32(100.0), name="k")])
    logits = b.node("Slice", [x, b.init(np.array([4], np.int64), name="s1"),
                              b.init(np.array([4 + classes], np.int64), name="e1"),
                              b.init(np.array([1], np.int64), name="a1")])
    y = b.node("Concat", [boxes, b.node("Sigmoid", [logits])], axis=1, name="out")
    b.output(y)
    return b.graph(), y


def test_forms_are_read_from_the_producers():
    g, y = _head()
    assert [(p.name, p.form) for p in output_parts(g)] == [(y, "detections")]
    b = G(seed=1)
    x = b.input("x", ["N", 8, 16])
    b.output(b.node("Softmax", [x], axis=-1))
    b.output(b.node("Reshape", [b.node("Sigmoid", [x]), b.init(np.array([0, -1], np.int64), name="shp")]))
    b.output(b.node("Softmax", [x], axis=1))
    b.output(b.node("Add", [x, x]))
    forms = [p.form for p in output_parts(b.graph())]
    assert forms == ["classes", "probabilities", "probabilities", "values"]


def test_rows_picked_by_topk_are_matched_not_compared_in_order():
    b = G(seed=2)
    x = b.input("x", [1, 32, 6])
    score = b.node("Reshape", [b.node("Slice", [x, b.init(np.array([4], np.int64), name="s"),
                                                b.init(np.array([5], np.int64), name="e"),
                                                b.init(np.array([2], np.int64), name="a")]),
                               b.init(np.array([1, 32], np.int64), name="shp")])
    _vals, idx = b.node("TopK", [score, b.init(np.array([8], np.int64), name="k")], 2, axis=1)
    rows = b.node("Gather", [b.node("Squeeze", [x, b.init(np.array([0], np.int64), name="ax0")]),
                             b.node("Squeeze", [idx, b.init(np.array([0], np.int64), name="ax1")])], axis=0)
    y = b.node("Unsqueeze", [rows, b.init(np.array([0], np.int64), name="ax2")])
    b.output(y)
    g = b.graph()
    parts = output_parts(g)
    assert [p.form for p in parts] == ["rows"]
    xs = np.random.default_rng(0).standard_normal((1, 32, 6)).astype(np.float32)
    ref = run(g, {"x": xs})
    swapped = {y: ref[y][:, ::-1].copy()}  # the same rows in another order: nothing lost
    assert Judge(parts, [ref]).health([swapped])[parts[0].name] > 100
    noisy = {y: ref[y] + 0.3}
    assert Judge(parts, [ref]).health([noisy])[parts[0].name] < 20


def test_probabilities_weigh_decisions_not_the_sea_of_zeros():
    """A score map that is mostly zero: noise on the zeros costs nothing, one score moving across the
    thresholds costs in proportion to how far it moves."""
    b = G(seed=4)
    x = b.input("x", [1, 1000])
    y = b.node("Sigmoid", [x])
    b.output(y)
    g = b.graph()
    parts = output_parts(g)
    z = np.full((1, 1000), -12.0, np.float32)
    z[0, :10] = 3.0  # ten confident detections
    ref = run(g, {"x": z})
    j = Judge(parts, [ref])
    quiet = {y: ref[y] + np.float32(0.02) * (ref[y] < 0.05)}  # every near-zero score up by 0.02 (< 0.1)
    assert j.health([quiet])[y] == 200.0
    flipped = {y: ref[y].copy()}
    flipped[y][0, 0] = 0.05  # one of ten detections lost
    h = j.health([flipped])[y]
    assert 8 < h < 13  # D = 0.95 / (10 * 0.95 + 9 * 0.95) ~ 0.05: 13 dB; about one in ten decisions


def test_classes_count_changed_top_classes():
    b = G(seed=5)
    x = b.input("x", [4, 50, 10])
    y = b.node("Softmax", [x], axis=2)
    b.output(y)
    g = b.graph()
    xs = np.random.default_rng(1).standard_normal((4, 50, 10)).astype(np.float32) * 3
    ref = run(g, {"x": xs})
    got = {y: ref[y].copy()}
    k = ref[y][0, 0].argmax()
    got[y][0, 0, k] = 0.0  # one position of 200 changes its top class
    h = Judge(output_parts(g), [ref]).health([got])[y]
    assert abs(h - 10 * np.log10(200)) < 1e-6


def test_detections_are_decoded_and_matched():
    g, y = _head()
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1, 8, 64)).astype(np.float32)
    xs[0, 4:] = -8.0
    xs[0, :4] = np.abs(xs[0, :4]) + 0.2
    for a in (3, 20, 41):  # three confident, far-apart objects
        xs[0, 0:2, a] = a / 10.0
        xs[0, 4 + a % 3, a] = 4.0
    ref = run(g, {"x": xs})
    dets = decode_head(ref[y][0])
    assert len(dets) == 3
    j = Judge(output_parts(g), [ref])
    assert j.health([{y: ref[y].copy()}])[y] > 30
    lost = {y: ref[y].copy()}
    lost[y][0, 4:, 41] = 0.01  # one of three objects lost: F1 = 0.8
    assert abs(j.health([lost])[y] - 10 * np.log10(5)) < 1e-6
    assert f1([dets], [decode_head(lost[y][0])]) == 0.8
