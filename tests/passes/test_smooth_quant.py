"""smooth-quant: exact in FP32, flattens activation channels, then quantizes better."""

from __future__ import annotations


import pytest

from qcompiler.api import compile_model
from qcompiler.calib import as_data_source
from qcompiler.ir import copy_graph, load_model
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.quant.lint import lint_model
from qcompiler.testing import assert_outputs_close

@pytest.fixture
def w4(tmp_path):
    p = tmp_path / "w4.yaml"
    p.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    return str(p)

def test_smooth_quant_is_exact_and_flattens_activation_channels(zoo, digits):
    g = load_model(zoo.onnx_path("transformer"))
    run_pipeline(g, "cleanup,fold-constants", PassContext())
    ref = copy_graph(g)
    x = digits.calibration_samples(64)
    ctx = PassContext(calib_data=as_data_source({"input": x}))
    res = run_pipeline(g, "smooth-quant{alpha=0.5}", ctx, verify_each=True)
    assert res.records[0].stats["sites"] >= 2  # the qkv and fc1 linears after each LayerNorm
    assert_outputs_close(ref, g, {"input": digits.load()["x_test"][:32]}, rtol=1e-4)
    assert any("channel range ratio" in d.message for d in ctx.diagnostics)


def test_smooth_quant_then_quantize(zoo, digits, tmp_path):
    src = zoo.onnx_path("transformer")
    out = tmp_path / "sq.onnx"
    compile_model(str(src), str(out), "cleanup,fold-constants,smooth-quant,calibrate,insert-qdq,cleanup",
                  calib_data=str(zoo.calibration_npz("transformer", 128)))
    assert lint_model(out).n_errors == 0
    assert digits.evaluate(str(out)) >= digits.evaluate(str(src)) - 1.0


def _ln_graph(post_ln: bool, with_shape: bool):
    """x -> LayerNormalization (2 outlier channels) -> MatMul -> ...; post-LN: the LN output also feeds the
    residual Add (a Mul must be inserted); with_shape: a Shape reads it too (shape-only: the LN still absorbs)."""
    import numpy as np

    from ..builders import G

    b = G(seed=3)
    x = b.input("x", ["N", 8, 16])
    gamma = np.ones(16, np.float32)
    gamma[[2, 9]] = 30.0
    ln = b.node("LayerNormalization", [x, b.init(gamma, name="gamma"), b.init(np.zeros(16, np.float32), "beta")],
                axis=-1, name="ln")
    h = b.node("MatMul", [ln, b.init(b.rand(16, 16, scale=0.3), name="w1")], name="mm1")
    h2 = b.node("MatMul", [ln, b.init(b.rand(16, 16, scale=0.3), name="w2")], name="mm2")
    y = b.node("Add", [h, h2])
    if post_ln:
        y = b.node("Add", [y, ln], name="residual")
    if with_shape:
        y = b.node("Reshape", [y, b.node("Shape", [ln], name="shape")])
    b.output(y)
    return b.graph()


@pytest.mark.parametrize("post_ln, with_shape, how", [(False, False, "1/s in ln"), (False, True, "1/s in ln"),
                                                      (True, False, "inserted Mul")])
def test_post_ln_gets_a_mul_and_shape_readers_do_not_block(post_ln, with_shape, how):
    """Pre-LN: the LayerNormalization takes 1/s (a Shape reading its output does not block that).  Post-LN: the
    residual Add keeps reading the LN output, so a Mul goes in front of the two MatMuls only.  Exact either way,
    and the channel ranges the MatMuls see are flattened."""
    import numpy as np

    from qcompiler.ir.query import op_histogram

    g = _ln_graph(post_ln, with_shape)
    ref = copy_graph(g)
    x = np.random.default_rng(0).standard_normal((32, 8, 16)).astype(np.float32)
    ctx = PassContext(calib_data=as_data_source({"x": x}))
    res = run_pipeline(g, "smooth-quant", ctx, verify_each=True)
    assert res.records[0].stats["sites"] == 1
    assert res.records[0].stats["inserted_mul"] == (1 if post_ln else 0)
    remark = next(d.message for d in ctx.diagnostics if d.code == "QC301")
    assert how in remark and "mm1, mm2" in remark
    ratio_before, ratio_after = (float(v.rstrip("x)")) for v in remark.split("ratio ")[1].split(" -> "))
    assert ratio_before > 10 and ratio_after < ratio_before / 3
    assert op_histogram(g).get("Mul", 0) == (1 if post_ln else 0)
    assert_outputs_close(ref, g, {"x": x[:4]}, rtol=1e-4, atol=1e-5)
    # a second run finds nothing left to move
    again = run_pipeline(g, "smooth-quant", ctx)
    assert not again.records[0].modified


def test_min_ratio_leaves_even_channels_alone():
    import numpy as np

    g = _ln_graph(False, False)
    x = np.random.default_rng(0).standard_normal((32, 8, 16)).astype(np.float32)
    ctx = PassContext(calib_data=as_data_source({"x": x}))
    res = run_pipeline(g, "smooth-quant{min-ratio=1000 quiet=true}", ctx)
    assert not res.records[0].modified and not [d for d in ctx.diagnostics if d.severity >= 2]


@pytest.mark.parametrize("act, how", [("Relu", "1/s in conv1"), ("silu", "inserted Mul")])
def test_conv_sites(act, how):
    """layers=all: a Conv reading Relu(conv1) takes s and conv1 takes 1/s (Relu commutes with positive factors);
    after a SiLU a Mul is inserted.  Exact.  The graph input's channels are even (below min-ratio): untouched."""
    import numpy as np

    from ..builders import G

    b = G(seed=4)
    x = b.input("x", ["N", 8, 6, 6])
    w1 = b.rand(8, 8, 3, 3, scale=0.3)
    w1[3] *= 40.0  # one output channel far larger than the others
    c1 = b.node("Conv", [x, b.init(w1, name="w1"), b.init(b.rand(8, scale=0.1), name="b1")], pads=[1, 1, 1, 1],
                name="conv1")
    a = b.node("Relu", [c1]) if act == "Relu" else b.node("Mul", [c1, b.node("Sigmoid", [c1])])
    y = b.node("Conv", [a, b.init(b.rand(8, 8, 3, 3, scale=0.3), name="w2")], pads=[1, 1, 1, 1], name="conv2")
    b.output(y)
    g = b.graph()
    ref = copy_graph(g)
    xs = np.random.default_rng(0).standard_normal((16, 8, 6, 6)).astype(np.float32)
    ctx = PassContext(calib_data=as_data_source({"x": xs}))
    res = run_pipeline(g, "smooth-quant{layers=all min-ratio=8}", ctx, verify_each=True)
    assert res.records[0].stats["sites"] == 1  # the input x has even channels: left alone
    assert how in next(d.message for d in ctx.diagnostics if d.code == "QC301")
    assert_outputs_close(ref, g, {"x": xs[:4]}, rtol=1e-4, atol=1e-5)
