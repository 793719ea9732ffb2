"""infer-shapes: element types and shapes recorded on every tensor; symbolic dims stay symbolic."""

from __future__ import annotations

import pytest

from qcompiler.diagnostics import QCompilerError
from qcompiler.pm import PassContext, run_pipeline

from ..builders import G


def test_shapes_recorded_and_symbolic_dims_kept():
    b = G()
    x = b.input("x", ["N", 3, 8, 8])
    y = b.relu(b.conv(x, 3, 4, stride=2, pad=1))
    b.output(b.node("GlobalAveragePool", [y]))
    g = b.graph()
    conv_out = next(n for n in g.nodes if n.op == "Conv").outputs[0]
    assert list(conv_out.shape) == ["N", 4, 4, 4]  # import fills the shapes inference gives (ir/shapes.py)
    conv_out.shape = conv_out.dtype = None  # as a pass that made a new tensor leaves it
    ctx = PassContext()
    res = run_pipeline(g, "infer-shapes", ctx)
    assert res.records[0].modified and "shapes-inferred" in ctx.facts
    assert list(conv_out.shape) == ["N", 4, 4, 4] and conv_out.dtype is not None
    assert not run_pipeline(g, "infer-shapes", PassContext()).records[0].modified


def test_strict_mode_reports_inference_errors():
    b = G()
    x = b.input("x", [2, 3])
    b.output(b.node("MatMul", [x, b.init(b.rand(4, 5))]))  # 3 vs 4: inconsistent
    g = b.graph(infer_outputs=False)
    run_pipeline(g, "infer-shapes", PassContext())  # lenient: nothing learned, no error
    with pytest.raises(QCompilerError, match="shape inference failed") as exc:
        run_pipeline(g, "infer-shapes{strict=true}", PassContext())
    assert exc.value.diagnostic.code == "QC208"
