"""adaround (pass): learned rounding inside a pipeline, after insert-qdq; needs its FP32 reference and data.
(The rounding itself: tests/bridge/test_finetune.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.api import compile_model
from qcompiler.bridge.results import FinetuneResult
from qcompiler.diagnostics import CalibrationError, FactOrderError
from qcompiler.ir import load_model
from qcompiler.pm import PassManager
from qcompiler.quant.lint import lint_model
from qcompiler.testing import run, sqnr_db

pytest.importorskip("torch")


def test_in_a_pipeline_it_lowers_the_error_of_w4(zoo, digits, tmp_path):
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 64))
    w4 = tmp_path / "w4.yaml"
    w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    plain, ada = tmp_path / "plain.onnx", tmp_path / "ada.onnx"
    compile_model(src, plain, "trt-int8", config=str(w4), calib_data=calib)
    res = compile_model(src, ada, "trt-int8,adaround{iters=100 max-samples=64}", config=str(w4), calib_data=calib)
    report = res.context.state.require(FinetuneResult)
    assert report.method == "adaround" and report.layers >= 8 and report.loss_after <= report.loss_before
    x = {"input": digits.load()["x_test"]}
    ref = run(load_model(src), x)["logits"]
    assert sqnr_db(ref, run(load_model(ada), x)["logits"]) > sqnr_db(ref, run(load_model(plain), x)["logits"])
    assert lint_model(ada).n_errors == 0
    ints = [np.asarray(n.inputs[0].values) for n in load_model(ada).nodes
            if n.op == "DequantizeLinear" and n.inputs[0].__class__.__name__ == "Constant"]
    assert ints and max(int(np.abs(a).max()) for a in ints) <= 7  # still on the 4-bit grid


def test_needs_the_fp32_reference_and_data(zoo, tmp_path):
    with pytest.raises(FactOrderError, match="requires 'fp32-reference'"):
        PassManager("adaround").check_facts({"quantized"})
    with pytest.raises(CalibrationError, match="fine-tuning needs calibration data"):
        compile_model(zoo.onnx_path("resnet"), tmp_path / "x.onnx", "trt-int8,adaround",
                      allow_random_calibration=True)
