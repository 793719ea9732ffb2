"""Determinism: the same model, data and pipeline give byte-identical output, for every named pipeline."""

from __future__ import annotations

import pytest

from qcompiler.api import compile_model

PIPELINES = ["trt-int8", "trt-fp8", "ort-int8", "trt-int8{cle=true calib=entropy}", "fp32-prep"]


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "transformer"])
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_byte_identical(zoo, tmp_path, name, pipeline):
    src = str(zoo.onnx_path(name))
    calib = str(zoo.calibration_npz(name, 64))
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.onnx"
        compile_model(src, str(out), pipeline, calib_data=calib)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
