"""gptq as a pass: re-rounds the weights insert-qdq stored (never worse than round-to-nearest on its objective),
re-quantizes to other bits or per-block grids, stays deterministic, lint-clean and runnable in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.api import compile_model
from qcompiler.ir import load_model
from qcompiler.ir.query import op_histogram
from qcompiler.passes.gptq import GPTQReport
from qcompiler.quant.lint import lint_model
from qcompiler.testing import run, sqnr_db


def _sqnr(src, out, digits):
    x = digits.load()["x_test"][:128]
    return sqnr_db(run(load_model(src), {"input": x})["logits"], run(load_model(out), {"input": x})["logits"])


@pytest.mark.parametrize("inputs", ["quantized", "fp32", "sequential"])
def test_gptq_beats_round_to_nearest_at_w4(zoo, digits, w4, tmp_path, inputs):
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 128))
    rtn, g = tmp_path / "rtn.onnx", tmp_path / "gptq.onnx"
    compile_model(src, rtn, "trt-int8{guard=off}", calib_data=calib, config=w4)
    res = compile_model(src, g, f"trt-int8{{guard=off}},gptq{{inputs={inputs}}}", calib_data=calib, config=w4)
    rep = res.context.state.get(GPTQReport)
    assert len(rep.layers) >= 8 and all(after <= before for before, after in rep.layers.values())
    assert _sqnr(src, g, digits) > _sqnr(src, rtn, digits) + 5  # 14.7 -> 25-31 dB measured
    assert lint_model(g).n_errors == 0
    w = next(n for n in load_model(g).nodes if n.op == "DequantizeLinear" and n.inputs[0].name.endswith("_w_gptq"))
    assert np.abs(w.inputs[0].values.astype(int)).max() <= 7  # still on the s4 grid


def test_deterministic(zoo, w4, tmp_path):
    src, calib = zoo.onnx_path("mobilenetv2"), str(zoo.calibration_npz("mobilenetv2", 64))
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out in (a, b):
        compile_model(src, out, "trt-int8{guard=off},gptq", calib_data=calib, config=w4)
    assert a.read_bytes() == b.read_bytes()


def test_bits_and_blocks_requantize(zoo, digits, tmp_path):
    """gptq{bits=4 block-size=16} on the transformer's MatMul/Gemm weights: blocked int4 (opset 21 DQ with
    block_size along the reduction axis), runs in onnxruntime close to FP32; block-size on a conv is refused."""
    src, calib = zoo.onnx_path("transformer"), str(zoo.calibration_npz("transformer", 64))
    out = tmp_path / "b.onnx"
    recipe = tmp_path / "lin.yaml"
    recipe.write_text("op_types:\n  Conv: float\n")
    compile_model(src, out, "trt-int8{guard=off smooth=off},gptq{bits=4 block-size=16}", calib_data=calib,
                  config=str(recipe))
    g = load_model(out)
    assert int(g.opset) >= 21
    blocked = [n for n in g.nodes if n.op == "DequantizeLinear" and n.attrs.get("block_size") == 16]
    assert blocked and all(n.inputs[0].values.dtype.name == "int4" for n in blocked)
    assert lint_model(out).n_errors == 0
    assert _sqnr(src, out, digits) > 20
    with pytest.raises(Exception, match="block-size is for MatMul/Gemm"):
        compile_model(zoo.onnx_path("resnet"), tmp_path / "c.onnx", "trt-int8{guard=off},gptq{block-size=16}",
                      calib_data=str(zoo.calibration_npz("resnet", 32)))
    assert op_histogram(g).get("QuantizeLinear", 0) > 0


def test_finetune_cli_gptq(zoo, digits, w4, tmp_path, capsys):
    """qcompiler finetune --method gptq on a W4 file: the grid is read back from the graph; beats RTN."""
    from qcompiler.cli import main

    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 64))
    rtn, out = tmp_path / "rtn.onnx", tmp_path / "g.onnx"
    compile_model(src, rtn, "trt-int8{guard=off}", calib_data=calib, config=w4)
    assert main(["finetune", str(rtn), "--fp32", str(src), "--calib-data", calib, "--method", "gptq", "-o",
                 str(out)]) == 0
    assert "[gptq]" in capsys.readouterr().err  # progress lines in a log
    assert _sqnr(src, out, digits) > _sqnr(src, rtn, digits) + 5
    assert lint_model(out).n_errors == 0
