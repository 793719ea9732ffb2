"""absorb-bias: exact where the lower bound holds, reduces L1's output range, refuses padded L2s."""

from __future__ import annotations

import numpy as np

from qcompiler.calib import as_data_source
from qcompiler.ir import copy_graph
from qcompiler.ir.query import const_value
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close, run

from ..builders import G


def _model(pad2: int = 0):
    b = G(seed=3)
    x = b.input("x", [None, 4, 8, 8])
    c1 = b.conv(x, 4, 8, k=3, bias=True)
    # large positive biases: pre-activations stay well above zero
    for t in b.inits:
        if t.name == b.inits[-1].name:
            import onnx

            t.CopyFrom(onnx.numpy_helper.from_array(np.full(8, 6.0, np.float32), t.name))
    y = b.conv(b.relu(c1), 8, 4, k=1 if pad2 == 0 else 3, pad=pad2)
    b.output(y)
    return b.graph()


def test_data_source_is_exact_on_data_and_shrinks_range():
    g = _model()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 4, 8, 8)) * 0.5).astype(np.float32)
    ref = copy_graph(g)
    ctx = PassContext(calib_data=as_data_source({"x": x}, batch_size=8))
    res = run_pipeline(g, "absorb-bias", ctx, verify_each=True)
    assert res.records[0].stats["pairs"] == 1 and res.records[0].stats["source"] == "data"
    b1_before = const_value(next(n for n in ref.nodes if n.op == "Conv").inputs[2])
    b1_after = const_value(next(n for n in g.nodes if n.op == "Conv").inputs[2])
    assert np.all(b1_after <= b1_before) and np.any(b1_after < b1_before - 1.0)
    assert_outputs_close(ref, g, {"x": x}, rtol=1e-5)


def test_bn_source_uses_fold_bn_statistics():
    b = G(seed=5)
    x = b.input("x", [2, 4, 8, 8])
    c1 = b.conv(x, 4, 8, k=3, bias=False)
    # BN with mean far above 3 sigma: c = beta - 3|gamma| > 0
    gamma = b.init(np.full(8, 0.5, np.float32), "gamma")
    beta = b.init(np.full(8, 5.0, np.float32), "beta")
    mean = b.init(np.zeros(8, np.float32), "mean")
    var = b.init(np.ones(8, np.float32), "var")
    h = b.node("BatchNormalization", [c1, gamma, beta, mean, var])
    b.output(b.conv(b.relu(h), 8, 4, k=1))
    g = b.graph()
    ctx = PassContext()
    res = run_pipeline(g, "fold-bn,absorb-bias{source=bn}", ctx)
    assert res.records[1].stats["pairs"] == 1


def test_padded_second_layer_is_refused():
    g = _model(pad2=1)
    x = np.random.default_rng(0).standard_normal((8, 4, 8, 8)).astype(np.float32)
    ctx = PassContext(calib_data=as_data_source({"x": x}))
    res = run_pipeline(g, "absorb-bias", ctx)
    assert not res.records[0].modified
    assert any("pads with zeros" in d.message for d in ctx.diagnostics)
    assert run(g, {"x": x})  # still runs
