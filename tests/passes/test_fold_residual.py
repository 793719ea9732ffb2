"""fold-residual: identity at the kernel centre, both Add orders, groups, dilation; refusals."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from qcompiler.ir import copy_graph
from qcompiler.ir.query import op_histogram
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close

from ..builders import G

TOL = dict(rtol=1e-4, atol=1e-6)


def _run(g):
    ref = copy_graph(g)
    ctx = PassContext()
    res = run_pipeline(g, "fold-residual", ctx, verify_each=True)
    return ref, ctx, res


@pytest.mark.parametrize("order", ["conv-first", "x-first"])
@pytest.mark.parametrize("k,dil,group", [(3, 1, 1), (5, 1, 1), (3, 2, 1), (3, 1, 4), (1, 1, 1), (3, 1, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_folds(order, k, dil, group, bias):
    b = G()
    x = b.input("x", [2, 8, 7, 7])
    c = b.conv(x, 8, 8, k=k, dilation=dil, group=group, bias=bias)
    y = b.add(c, x) if order == "conv-first" else b.add(x, c)
    b.output(y)
    g = b.graph()
    ref, _, res = _run(g)
    assert res.records[0].stats == {"folded": 1}
    assert op_histogram(g) == {"Conv": 1}
    assert_outputs_close(ref, g, **TOL)
    assert not run_pipeline(g, "fold-residual", PassContext()).records[0].modified


def test_1d_and_3d():
    for dims in (1, 3):
        b = G()
        x = b.input("x", [1, 4] + [5] * dims)
        y = b.add(b.conv(x, 4, 4, k=3, dims=dims), x)
        b.output(y)
        g = b.graph()
        ref, _, res = _run(g)
        assert res.records[0].stats == {"folded": 1}
        assert_outputs_close(ref, g, **TOL)


def _residual():
    b = G()
    x = b.input("x", [1, 4, 8, 8])
    b.output(b.add(b.conv(x, 4, 4, k=3), x))
    return b.graph()


@pytest.mark.parametrize("case,fragment", [
    ("stride", "strides"),
    ("channels", "needs Cout == Cin"),
    ("size", "changes the spatial size"),
    ("consumer", "other consumers"),
    ("weight", "not a constant"),
])
def test_refusals_have_reasons(case, fragment):
    if case == "consumer":
        b = G()
        x = b.input("x", [1, 4, 8, 8])
        c = b.conv(x, 4, 4, k=3)
        b.output(b.add(b.add(c, x), c))
        g = b.graph()
    else:
        g = _residual()
        conv = next(n for n in g.nodes if n.op == "Conv")
        if case == "stride":
            conv.attrs["strides"] = [2, 2]
        elif case == "size":
            conv.attrs["pads"] = [2, 2, 2, 2]
        elif case == "channels":
            conv.inputs[1] = gs.Constant("w_narrow", np.zeros((4, 2, 3, 3), np.float32))
        else:
            w = gs.Variable("w_in", dtype=np.float32, shape=[4, 4, 3, 3])
            g.inputs.append(w)
            conv.inputs[1] = w
    ctx = PassContext()
    res = run_pipeline(g, "fold-residual", ctx)  # these graphs are deliberately invalid: no verify-each
    assert not res.records[0].modified
    assert any(fragment in d.message for d in ctx.diagnostics), [d.message for d in ctx.diagnostics]
