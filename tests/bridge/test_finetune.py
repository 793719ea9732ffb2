"""The torch bridge on Q/DQ graphs: fidelity, exact fake-quant, write-back, AdaRound and LSQ, the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from qcompiler.api import compile_model  # noqa: E402
from qcompiler.bridge.fakequant import FakeQuant  # noqa: E402
from qcompiler.bridge.finetune import adaround, collect_inputs, lsq, reference_graph  # noqa: E402
from qcompiler.bridge.module import GraphModule  # noqa: E402
from qcompiler.calib import as_data_source  # noqa: E402
from qcompiler.diagnostics import DiagnosticEngine  # noqa: E402
from qcompiler.ir import load_model  # noqa: E402
from qcompiler.ir.query import const_value  # noqa: E402
from qcompiler.quant.lint import lint_model  # noqa: E402
from qcompiler.testing import run, sqnr_db  # noqa: E402

from ..builders import qdq_model  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, zoo):
    d = tmp_path_factory.mktemp("bridge")
    out = {}
    w4 = d / "w4.yaml"
    w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    for name in ("resnet", "mobilenetv2", "transformer"):
        src, calib = zoo.onnx_path(name), zoo.calibration_npz(name, 128)
        for tag, cfg in (("int8", None), ("w4", str(w4))):
            dst = d / f"{name}.{tag}.onnx"
            compile_model(str(src), str(dst), "trt-int8", calib_data=str(calib), config=cfg)
            out[(name, tag)] = (src, dst, calib)
    return out


def test_fake_quant_equals_onnxruntime_qdq():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 5, 5)) * 3).astype(np.float32)
    x.flat[:6] = [0.5, 1.5, 2.5, -0.5, -1.5, 127.5 * 0.05]  # ties: round half to even
    for zp, dtype in ((np.int8(0), np.int8), (np.uint8(128), np.uint8)):
        scale = np.float32(0.05)
        m = qdq_model(scale, zp, opset=13, shape=list(x.shape), ir=7)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        ref = ort.InferenceSession(m.SerializeToString(), so).run(None, {"x": x})[0]
        info = np.iinfo(dtype)
        fq = FakeQuant("q", scale, float(zp), int(info.min), int(info.max))
        with torch.no_grad():
            got = fq(torch.as_tensor(x)).numpy()
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "transformer"])
def test_module_matches_onnxruntime(compiled, digits, name):
    src, dst, _ = compiled[(name, "int8")]
    x = digits.load()["x_test"][:128]
    with torch.no_grad():
        fp = GraphModule(load_model(str(src)))({"input": torch.as_tensor(x)})["logits"].numpy()
        qd = GraphModule(load_model(dst))({"input": torch.as_tensor(x)})["logits"].numpy()
    ref_fp = run(load_model(str(src)), {"input": x})["logits"]
    ref_q = run(load_model(dst), {"input": x})["logits"]
    np.testing.assert_allclose(fp, ref_fp, rtol=1e-4, atol=1e-5 * np.abs(ref_fp).max())
    # fake-quant: identical per Q/DQ; end to end only rounding flips from float differences in convs,
    # far below the quantization error itself
    assert sqnr_db(ref_q, qd) > sqnr_db(ref_fp, ref_q) + 3.0
    assert np.mean(qd.argmax(1) == ref_q.argmax(1)) >= 0.99


def test_write_back_without_training_is_identity(compiled, tmp_path):
    _, dst, _ = compiled[("resnet", "int8")]
    g = load_model(dst)
    before = {n.name: [np.asarray(const_value(i)).copy() if const_value(i) is not None else None for i in n.inputs]
              for n in g.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")}
    GraphModule(g).write_back()
    for n in g.nodes:
        if n.name in before:
            for a, i in zip(before[n.name], n.inputs):
                b = const_value(i)
                if a is not None:
                    np.testing.assert_array_equal(a, b, err_msg=n.name)


def _w4_setup(compiled, name):
    src, dst, calib = compiled[(name, "w4")]
    qdq = load_model(dst)
    ref = reference_graph(load_model(str(src)), qdq, DiagnosticEngine())
    batches = collect_inputs(as_data_source(str(calib), batch_size=32), ref, 128)
    return src, qdq, ref, batches


def test_adaround_recovers_w4(compiled, digits, tmp_path):
    src, qdq, ref, batches = _w4_setup(compiled, "resnet")
    x = digits.load()["x_test"]
    before = sqnr_db(run(ref, {"input": x})["logits"], run(qdq, {"input": x})["logits"])
    res = adaround(qdq, ref, batches, iters=200, seed=0)
    after = sqnr_db(run(ref, {"input": x})["logits"], run(qdq, {"input": x})["logits"])
    assert res.layers >= 8 and res.loss_after < res.loss_before
    assert after > before + 6.0, (before, after)
    out = tmp_path / "ada.onnx"
    from qcompiler.ir import save_model

    save_model(qdq, out)
    assert lint_model(out).n_errors == 0
    ints = [onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert max(int(np.abs(a).max()) for a in ints) <= 7  # still a 4-bit grid


def test_lsq_is_deterministic_and_lowers_the_loss(compiled, tmp_path):
    outs = []
    for _ in range(2):
        _, qdq, ref, batches = _w4_setup(compiled, "resnet")
        res = lsq(qdq, ref, batches, iters=40, seed=3)
        assert res.loss_after < res.loss_before
        from qcompiler.ir import save_model

        p = tmp_path / f"lsq{len(outs)}.onnx"
        save_model(qdq, p)
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]


def test_finetune_cli_and_pipeline_pass(compiled, zoo, tmp_path, digits):
    from qcompiler.cli import main

    src, dst, calib = compiled[("mobilenetv2", "w4")]
    out = tmp_path / "ft.onnx"
    assert main(["finetune", str(dst), "--fp32", str(src), "--calib-data", str(calib), "--method", "adaround",
                 "--iters", "60", "-o", str(out)]) == 0
    assert lint_model(out).n_errors == 0
    assert digits.evaluate(str(out)) >= digits.evaluate(str(dst)) - 0.5
    w4 = tmp_path / "w4.yaml"
    w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    out2 = tmp_path / "pipe.onnx"
    res = compile_model(str(zoo.onnx_path("resnet")), str(out2), "trt-int8{finetune=lsq}", config=str(w4),
                        calib_data=str(zoo.calibration_npz("resnet", 64)))
    assert any(r.name == "lsq" for r in res.result.records)
    assert lint_model(out2).n_errors == 0


def test_adaround_logs_each_layer(zoo, tmp_path, capsys, w4):
    """In a log (stderr is not a terminal under pytest) AdaRound says what it is doing: one line per layer with
    its reconstruction error before and after, the iterations it took, elapsed time and time left."""
    from qcompiler.cli import main
    from qcompiler.ir import load_model

    src, calib = zoo.onnx_path("mobilenetv2"), str(zoo.calibration_npz("mobilenetv2", 32))
    rtn = tmp_path / "rtn.onnx"
    compile_model(src, rtn, "trt-int8{guard=off}", calib_data=calib, config=w4)
    assert main(["finetune", str(rtn), "--fp32", str(src), "--calib-data", calib, "--method", "adaround",
                 "-o", str(tmp_path / "a.onnx")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[adaround]") and "layers (" in line]
    assert len(lines) >= 10 and all("error" in line and "iterations)" in line and "left" in line for line in lines)
    g = load_model(tmp_path / "a.onnx")
    assert any(n.op == "DequantizeLinear" for n in g.nodes)


def test_run_until_frees_dead_tensors(zoo):
    """Running a model layer after layer holds only the live tensors, and gives each layer the inputs a full
    forward gives it."""
    import torch

    from qcompiler.ir import load_model

    g = load_model(zoo.onnx_path("resnet"))
    m = GraphModule(g)
    x = {"input": torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32))}
    convs = [n.name for n in g.nodes if n.op == "Conv"]
    full = m(x, capture=set(convs))["__captured__"]
    env, pos, sizes = m.start(x), 0, []
    for name in convs:
        pos, ins = m.run_until(env, pos, name)
        assert torch.equal(ins[0], full[name][0][0])
        sizes.append(len(env))
    assert max(sizes) < len(g.tensors()) / 3  # dead tensors were dropped
