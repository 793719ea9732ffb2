"""Models from other exporters (models/exotic.py) through the named pipelines: each compiles, stays
valid, passes lint-trt, keeps its subgraphs, and computes what the FP32 model computes (up to int8)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qcompiler.api import compile_model
from qcompiler.diagnostics import DiagnosticEngine
from qcompiler.ir import load_model
from qcompiler.ir.query import op_histogram
from qcompiler.quant.lint import lint_model
from qcompiler.testing import assert_outputs_close, run, sqnr_db

NAMES = ["paddle-opset12", "tf-nhwc-opset11", "identity-shared", "if-subgraph", "loop-subgraph", "residual-opset21"]


@pytest.fixture(scope="module")
def exotic():
    pytest.importorskip("torch")
    from qcompiler.zoo import exotic as ex

    return ex


def _files(ex, name, tmp_path):
    m = ex.build(name)
    src = tmp_path / f"{name}.onnx"
    onnx.save(m, src)
    shape = ex.input_shape(m)
    x = np.random.default_rng(0).standard_normal([16] + shape[1:]).astype(np.float32)
    calib = tmp_path / f"{name}.npz"
    np.savez(calib, **{m.graph.input[0].name: x})
    return src, calib, {m.graph.input[0].name: x[:4]}


@pytest.mark.parametrize("name", NAMES)
def test_fp32_prep_is_exact(exotic, name, tmp_path):
    src, _, feeds = _files(exotic, name, tmp_path)
    out = tmp_path / "prep.onnx"
    compile_model(str(src), str(out), "tidy,fp32-prep", verify_each=True)
    assert "BatchNormalization" not in op_histogram(load_model(out))
    assert_outputs_close(src, out, feeds, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_trt_int8(exotic, name, tmp_path):
    src, calib, feeds = _files(exotic, name, tmp_path)
    out = tmp_path / "int8.onnx"
    diags = DiagnosticEngine()
    compile_model(str(src), str(out), "trt-int8", calib_data=str(calib), diagnostics=diags, verify_each=True)
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 13
    assert lint_model(out).n_errors == 0
    g = load_model(out)
    hist = op_histogram(g)
    assert hist.get("QuantizeLinear", 0) >= 1
    ref, got = run(load_model(src), feeds), run(g, feeds)
    k = next(iter(ref))
    assert sqnr_db(ref[k], got[k]) > 25.0
    if name in ("if-subgraph", "loop-subgraph"):
        assert hist.get("If", 0) + hist.get("Loop", 0) == 1  # subgraph kept, still runs
    if name.endswith(("opset11", "opset12")):
        assert any(d.code == "QC305" for d in diags)  # upgraded to 13 with a remark


def test_layers_inside_if_branches_are_quantized(exotic, tmp_path):
    """Both branches' convs get their Q/DQ inside the branch (on the outer tensor they read), lint-trt checks the
    bodies, and the quantized model computes what the FP32 one does."""
    from qcompiler.ir.graph import iter_graphs

    src, calib, feeds = _files(exotic, "if-subgraph", tmp_path)
    out = tmp_path / "o.onnx"
    compile_model(str(src), str(out), "trt-int8", calib_data=str(calib))
    g = load_model(out)
    for body in iter_graphs(g):
        if body is g:
            continue
        conv = next(n for n in body.nodes if n.op == "Conv")
        assert [i.inputs[0].op if i.inputs else None for i in conv.inputs[:2]] == ["DequantizeLinear"] * 2, body.name
    assert lint_model(out).n_errors == 0
    ref, got = run(load_model(src), feeds), run(g, feeds)
    k = next(iter(ref))
    assert sqnr_db(ref[k], got[k]) > 25.0


def test_dynamo_exporter(exotic, tmp_path):
    pytest.importorskip("onnxscript")
    m = exotic.build("dynamo-resnet")
    src = tmp_path / "dyn.onnx"
    onnx.save(m, src)
    from qcompiler.zoo import digits, zoo

    out = tmp_path / "dyn.int8.onnx"
    compile_model(str(src), str(out), "trt-int8", calib_data=str(zoo.calibration_npz("resnet", 64)))
    assert lint_model(out).n_errors == 0
    assert digits.evaluate(str(out)) >= digits.evaluate(str(src)) - 0.5


@pytest.mark.parametrize("reconcile", [True, False])
def test_declared_shapes_are_hints(tmp_path, monkeypatch, reconcile):
    """An output declared 'shape {}' (rank 0) while it is rank 3, and a value_info claiming a MatMul output is rank 2
    (so its BatchNormalization would look foldable along the wrong axis): the compiler corrects both (QC212
    remarks), never folds the BatchNormalization into the MatMul, and writes a checker-valid model.  Without the
    correction (reconcile=False) the wrong declaration steers fold-bn and the outputs change: the test can fail."""
    import onnx
    from onnx import TensorProto, helper

    from qcompiler import api
    from qcompiler.diagnostics import DiagnosticEngine, QCompilerError
    from qcompiler.ir import load_model
    from qcompiler.testing import max_relative_error, run

    from ..builders import G

    if not reconcile:  # both places that correct declarations: the import and compile
        import qcompiler.ir.shapes as shapes

        monkeypatch.setattr(api, "reconcile_shapes", lambda g: [])
        monkeypatch.setattr(shapes, "reconcile_shapes", lambda g: [])
    b = G(12)
    x = b.input("image", ["batch", 3, 4, 4])
    c = b.relu(b.conv(x, 3, 16))
    t = b.node("Transpose", [b.node("Reshape", [c, b.init(np.array([0, 16, -1], np.int64))])], perm=[0, 2, 1])
    mm = b.matmul(t, 16, 16)  # [batch, 16 positions, 16 channels]
    y = b.node("BatchNormalization", [mm, *(b.init(v) for v in (1 + b.rand(16), b.rand(16), b.rand(16),
                                                                  np.ones(16, np.float32)))])
    b.output(b.node("Softmax", [y], axis=2), shape=[])
    m = b.model(infer_outputs=False)
    m.graph.value_info.append(helper.make_tensor_value_info(mm, TensorProto.FLOAT, ["batch", 16]))  # wrong: rank 2
    onnx.checker.check_model(m)
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(m, src)
    diags = DiagnosticEngine()
    compile_model(src, out, "cleanup,fold-bn,cleanup", diagnostics=diags)
    feeds = {"image": np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    name = m.graph.output[0].name
    try:
        err = max_relative_error(run(load_model(src), feeds)[name], run(load_model(out), feeds)[name])
    except QCompilerError:  # the wrong rank written back makes onnxruntime refuse the model
        err = float("inf")
    if not reconcile:
        assert err > 1e-3  # the declaration lied and fold-bn believed it: wrong numbers or an unloadable model
        return
    fixed = [d.message for d in diags if d.code == "QC212"]
    assert any("was declared [], inference gives [batch,16,16]" in f for f in fixed)
    assert any(f"'{mm}' was declared [batch,16]" in f for f in fixed)
    assert err < 1e-5
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_a_declared_element_type_that_lies_is_corrected(tmp_path):
    """onnxconverter-common's fp16 models with float32 IO declare the output float16 while a Cast to float makes it
    (onnxruntime runs them; strict ONNX inference refuses them): the declaration is corrected with a QC212 remark,
    the model compiles, and the written file is valid."""
    import onnx
    from onnx import TensorProto

    from qcompiler.diagnostics import DiagnosticEngine

    from ..builders import G

    b = G(17)
    x = b.input("x", ["N", 8])
    h = b.node("Cast", [x], to=TensorProto.FLOAT16)
    y = b.node("Relu", [b.node("MatMul", [h, b.init(b.rand(8, 8).astype(np.float16))])])
    b.node("Cast", [y], outputs=["y"], to=TensorProto.FLOAT)
    b.output("y", dtype=TensorProto.FLOAT16)  # the lie
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(b.model(infer_outputs=False), src)
    diags = DiagnosticEngine()
    compile_model(src, out, "tidy", diagnostics=diags)
    assert any(d.code == "QC212" and "'y' was declared float16, inference gives float32" in d.message
               for d in diags)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert onnx.load(out).graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
