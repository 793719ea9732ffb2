"""Issue #16's goals on the stand-ins (models/hard.py), with the default pipelines: a YOLOv8-style detector, a
post-LN BERT-class encoder with a padding mask, a streaming VAD whose layers all sit inside If branches.

Slow: the three models are trained on first use (about ten minutes on two cores, then cached)."""

from __future__ import annotations

import pytest

from qcompiler.api import compile_model
from qcompiler.ir import load_model
from qcompiler.ir.graph import iter_graphs
from qcompiler.passes.guard import GuardReport
from qcompiler.quant.lint import lint_model

pytestmark = pytest.mark.slow

GOALS = {"detector": lambda r: r["metric"] >= 0.95, "encoder": lambda r: r["metric"] >= 0.99,
         "vad-if": lambda r: r["metric"] >= r["fp32_metric"] - 1.0}


@pytest.fixture(scope="module")
def hard():
    pytest.importorskip("torch")
    from qcompiler.zoo import hard as h

    return h


@pytest.mark.parametrize("name", ["detector", "encoder", "vad-if"])
@pytest.mark.parametrize("pipeline", ["trt-int8", "trt-fp8"])
def test_defaults_meet_the_goal(hard, name, pipeline, tmp_path):
    m = hard.get(name)
    src = m.onnx_path()
    out = tmp_path / "q.onnx"
    res = compile_model(src, out, pipeline, calib_data=str(m.calib_data(128)))
    ev = m.evaluate(src, out)  # runs in onnxruntime
    assert GOALS[name](ev), ev
    assert lint_model(out, fp8=pipeline == "trt-fp8").n_errors == 0
    g = load_model(out)
    assert sum(n.op == "DequantizeLinear" for sub in iter_graphs(g) for n in sub.nodes) > 0
    rep = res.context.state.get(GuardReport)
    assert rep is not None and rep.result.float_macs_fraction <= 0.02
    if name == "vad-if":  # every layer sits in a branch: quantized there
        bodies = [sub for sub in iter_graphs(g) if sub is not g]
        assert all(any(n.op == "DequantizeLinear" for n in b.nodes) for b in bodies)
