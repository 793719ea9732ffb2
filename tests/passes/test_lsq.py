"""lsq (pass): learned step sizes inside a pipeline, after insert-qdq, deterministic; needs its FP32 reference.
(The fake-quant math and training: tests/bridge/test_finetune.py.)"""

from __future__ import annotations

import pytest

from qcompiler.api import compile_model
from qcompiler.bridge.results import FinetuneResult
from qcompiler.diagnostics import FactOrderError
from qcompiler.pm import PassManager
from qcompiler.quant.lint import lint_model

pytest.importorskip("torch")


def test_in_a_pipeline_deterministic_and_lint_clean(zoo, tmp_path):
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 64))
    outs = []
    for k in range(2):
        out = tmp_path / f"lsq{k}.onnx"
        res = compile_model(src, out, "trt-int8{finetune=lsq}", calib_data=calib)
        report = res.context.state.require(FinetuneResult)
        assert report.method == "lsq" and report.loss_after <= report.loss_before
        assert lint_model(out).n_errors == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_needs_the_fp32_reference():
    with pytest.raises(FactOrderError, match="requires 'fp32-reference'"):
        PassManager("lsq").check_facts({"quantized"})
    PassManager("calibrate,insert-qdq,lsq").check_facts(set())
