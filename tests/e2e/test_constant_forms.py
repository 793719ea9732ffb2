"""Constants are constants whatever their form: every pass, run alone, gives on a zoo model rewritten with its
constants as Constant nodes, behind Identity nodes, or also listed as graph inputs exactly what it gives on the
plain-initializer form (same outputs bit for bit on real data, same operators)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompiler.calib.data import as_data_source
from qcompiler.ir import import_model
from qcompiler.ir.query import op_histogram
from qcompiler.pm import PassContext, default_registry, run_pipeline
from qcompiler.testing import run
from qcompiler.zoo import forms

#: what a pass that needs earlier facts runs after (its own pipeline prefix); the rest run alone
PREFIX = {"insert-qdq": "calibrate", "bias-correct": "calibrate,insert-qdq", "adaround": "calibrate,insert-qdq",
          "lsq": "calibrate,insert-qdq", "mixed-precision": "calibrate,insert-qdq", "guard": "calibrate,insert-qdq",
          "gptq": "calibrate,insert-qdq"}
OPTIONS = {"adaround": "{iters=4 max-samples=8}", "lsq": "{iters=4 max-samples=8}",
           "mixed-precision": "{target-sqnr=60 max-samples=8}", "bias-correct": "{max-samples=8}",
           "smooth-quant": "{max-samples=8}", "absorb-bias": "{max-samples=8}", "gptq": "{max-samples=8}",
           "awq": "{max-samples=8 block-size=16}"}
PASSES = sorted(default_registry().passes())


def _pipeline(p: str) -> str:
    return ",".join(x for x in (PREFIX.get(p), p + OPTIONS.get(p, "")) if x)


@pytest.fixture(scope="module", params=["resnet", "mobilenetv2", "transformer"])
def model(request, zoo):
    name = request.param
    calib = str(zoo.calibration_npz(name, 16))
    return name, onnx.load(zoo.onnx_path(name)), calib, {"input": np.load(calib)["input"][:8]}


def _result(m: onnx.ModelProto, pipeline: str, calib: str, x):
    g = import_model(m)
    run_pipeline(g, pipeline, PassContext(calib_data=as_data_source(calib)))
    return op_histogram(g), run(g, x)


@pytest.mark.parametrize("form", [f for f in forms.CONSTANT_FORMS if f != "initializers"])
def test_every_pass_alone_gives_the_same_result_on_every_form(model, form):
    name, m, calib, x = model
    rewritten = forms.rewrite(m, form)
    assert rewritten.SerializeToString() != m.SerializeToString()
    differ = []
    for p in PASSES:
        if p in ("adaround", "lsq") and name != "resnet":
            continue  # torch fine-tuning: one model is enough here (the bridge has its own tests)
        pipe = _pipeline(p)
        ops0, y0 = _result(m, pipe, calib, x)
        ops1, y1 = _result(rewritten, pipe, calib, x)
        if ops0 != ops1 or any(not np.array_equal(y0[k], y1[k]) for k in y0):
            differ.append(f"{pipe}: ops {ops0 == ops1}, outputs "
                          f"{max(float(np.max(np.abs(y0[k] - y1[k]))) for k in y0):.3g}")
    assert not differ, f"{name} in form {form}:\n" + "\n".join(differ)
