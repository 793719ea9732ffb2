"""The qcompiler command line: commands, exit codes, and the bad-input matrix (clear message, non-zero
exit, no output file, input unchanged)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from qcompiler.cli import main

from ..builders import G


def _sha(p):
    return hashlib.sha1(open(p, "rb").read()).hexdigest()


@pytest.fixture
def model(tmp_path):
    b = G()
    x = b.input("input", ["N", 3, 8, 8])
    b.output(b.relu(b.bn(b.conv(b.relu(b.bn(b.conv(x, 3, 16), 16)), 16, 16), 16)))
    p = tmp_path / "m.onnx"
    onnx.save(b.model(), p)
    return p


@pytest.fixture
def calib(tmp_path):
    p = tmp_path / "calib.npz"
    np.savez(p, input=np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    return p


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "compile" in out and "lint-trt" in out
    for cmd in ("compile", "pipeline", "passes", "inspect", "lint-trt", "report", "finetune", "demo"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_pipeline_print_check_and_errors(capsys):
    assert main(["pipeline", "--print", "cleanup,repeat{max-steps=2}(fold-constants,cleanup)"]) == 0
    assert capsys.readouterr().out.strip() == "cleanup,repeat{max-steps=2}(fold-constants,cleanup)"
    assert main(["pipeline", "--print", "  cleanup ,repeat{max-steps=2}( fold-constants , cleanup)"]) == 0
    assert capsys.readouterr().out.strip() == "cleanup,repeat{max-steps=2}(fold-constants,cleanup)"
    assert main(["pipeline", "--check", "fold-bn,cle{max-iters=20}"]) == 0
    assert main(["pipeline", "--print", "cleanup,fold-constnts"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'fold-constants'" in err and "^" in err
    assert main(["pipeline", "--check", "calibrate,cle,insert-qdq"]) == 2
    assert "invalidates" in capsys.readouterr().err
    assert main(["pipeline", "--print", "trt-int8", "--expand", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(p.get("pass") == "insert-qdq" for p in data["pipeline"])


def test_passes_list_and_describe(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("fold-bn", "merge-conv1x1", "fold-residual", "cle", "calibrate", "insert-qdq", "trt-int8"):
        assert name in out
    assert main(["passes", "describe", "cle"]) == 0
    out = capsys.readouterr().out
    assert "max-iters" in out and "invalidates: calibrated" in out and "sqrt" in out
    assert main(["passes", "describe", "clee"]) == 2


def test_compile_inspect_and_determinism(model, calib, tmp_path, capsys):
    before = _sha(model)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out in (a, b):
        assert main(["compile", str(model), "-o", str(out), "--pipeline", "trt-int8", "--calib-data", str(calib),
                     "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert _sha(model) == before
    assert main(["inspect", str(a), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["qdq"]["quantize"] > 0 and info["opset"][""] >= 13
    assert main(["lint-trt", str(a)]) == 0


def test_compile_dump_ir_timing_and_json_diagnostics(model, calib, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["compile", str(model), "-o", str(out), "--pipeline", "fold-bn,cle", "--dump-ir", str(tmp_path / "d"),
                 "--timing", "--diagnostics-format", "json", "-v"]) == 0
    err = capsys.readouterr().err
    assert "timing:" in err
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names[:2] == ["00-input.onnx", "00-input.txt"] and "02-cle.txt" in names


def _bad(args, capsys, code_expected, fragment, out=None, inp=None):
    before = _sha(inp) if inp is not None and os.path.exists(inp) else None
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == code_expected, err
    assert fragment in err, err
    if out is not None:
        assert not os.path.exists(out)
        assert not any(n.startswith(".qc-") for n in os.listdir(os.path.dirname(out) or "."))
    if before is not None:
        assert _sha(inp) == before


def test_bad_input_matrix(model, calib, tmp_path, capsys):
    out = str(tmp_path / "out.onnx")
    P = ["--pipeline", "cleanup"]
    # model files
    _bad(["compile", str(tmp_path / "missing.onnx"), "-o", out, *P], capsys, 1, "does not exist", out)
    (tmp_path / "empty.onnx").write_bytes(b"")
    _bad(["compile", str(tmp_path / "empty.onnx"), "-o", out, *P], capsys, 1, "is empty", out)
    data = model.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    _bad(["compile", str(tmp_path / "trunc.onnx"), "-o", out, *P], capsys, 1, "not a valid ONNX model", out)
    (tmp_path / "rand.onnx").write_bytes(os.urandom(4096))
    _bad(["compile", str(tmp_path / "rand.onnx"), "-o", out, *P], capsys, 1, "QC202", out)
    t = onnx.numpy_helper.from_array(np.zeros(3, np.float32), "t")
    (tmp_path / "tensor.onnx").write_bytes(t.SerializeToString())
    _bad(["compile", str(tmp_path / "tensor.onnx"), "-o", out, *P], capsys, 1, "QC202", out)
    # fails the checker
    m = onnx.load(model)
    m.graph.node[0].input[0] = "nowhere"
    onnx.save(m, tmp_path / "broken.onnx")
    _bad(["compile", str(tmp_path / "broken.onnx"), "-o", out, *P], capsys, 1, "nowhere", out)
    # unknown op domain
    m = onnx.load(model)
    m.graph.node[-1].domain = "com.example"
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(m, tmp_path / "domain.onnx")
    _bad(["compile", str(tmp_path / "domain.onnx"), "-o", out, *P], capsys, 1, "com.example", out)
    # output paths
    _bad(["compile", str(model), "-o", str(model), *P], capsys, 2, "is the input model", None, model)
    _bad(["compile", str(model), "-o", str(tmp_path / "nodir" / "x.onnx"), *P], capsys, 1, "does not exist")
    # pipelines
    _bad(["compile", str(model), "-o", out, "--pipeline", "fold-bn,clee"], capsys, 2, "did you mean 'cle'", out, model)
    _bad(["compile", str(model), "-o", out, "--pipeline", "cle{max-iters=x}"], capsys, 2, "expected an integer", out)
    _bad(["compile", str(model), "-o", out, "--pipeline", "cle{max-iter=3}"], capsys, 2,
         "did you mean 'max-iters'", out)
    _bad(["compile", str(model), "-o", out, "--pipeline", "fold-bn,,cle"], capsys, 2, "expected a pass name", out)
    _bad(["compile", str(model), "-o", out, "--pipeline", "calibrate,cle,insert-qdq", "--calib-data", str(calib)],
         capsys, 2, "invalidates", out)
    _bad(["compile", str(model), "-o", out, "--pipeline", "insert-qdq"], capsys, 2, "add 'calibrate'", out)
    # calibration data
    bad = tmp_path / "bad.npz"
    np.savez(bad, wrong=np.zeros((2, 3, 8, 8), np.float32))
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--calib-data", str(bad)], capsys, 1,
         "no data for model input 'input'", out)
    np.savez(bad, input=np.zeros((2, 3, 9, 8), np.float32))
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--calib-data", str(bad)], capsys, 1,
         "dim 2 = 9", out)
    np.savez(bad, input=np.zeros((2, 3, 8, 8), np.int64))
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--calib-data", str(bad)], capsys, 1,
         "is int64; the model expects float32", out)
    x = np.zeros((4, 3, 8, 8), np.float32)
    x[2, 0, 0, 0] = np.inf
    np.savez(bad, input=x)
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--calib-data", str(bad)], capsys, 1,
         "NaN or Inf in sample 2", out)
    np.savez(bad, input=np.zeros((0, 3, 8, 8), np.float32))
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--calib-data", str(bad)], capsys, 1,
         "no usable samples", out)
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8"], capsys, 1, "needs calibration data", out)
    # recipes
    rp = tmp_path / "r.yaml"
    rp.write_text("globl: {}\n")
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--config", str(rp), "--calib-data",
          str(calib)], capsys, 1, "did you mean 'global'", out)
    rp.write_text("global:\n  weight: {dtype: s99}\n")
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--config", str(rp), "--calib-data",
          str(calib)], capsys, 1, "s99", out)
    rp.write_text("global:\n  activation: {dtype: u8, qscheme: per_tensor_affine}\n")
    _bad(["compile", str(model), "-o", out, "--pipeline", "trt-int8", "--config", str(rp), "--calib-data",
          str(calib)], capsys, 1, "rule R2", out)


def test_recipe_pattern_matching_nothing_is_a_warning(model, calib, tmp_path, capsys):
    rp = tmp_path / "r.yaml"
    rp.write_text("patterns:\n  '*/no/such/*': float\n")
    out = tmp_path / "o.onnx"
    assert main(["compile", str(model), "-o", str(out), "--pipeline", "trt-int8", "--config", str(rp),
                 "--calib-data", str(calib)]) == 0
    assert "matches no node" in capsys.readouterr().err
    assert out.exists()
    # a build system that wants warnings to fail the build: --Werror (exit 1, nothing written)
    out2 = tmp_path / "o2.onnx"
    assert main(["compile", str(model), "-o", str(out2), "--pipeline", "trt-int8", "--config", str(rp),
                 "--calib-data", str(calib), "--Werror"]) == 1
    err = capsys.readouterr().err
    assert "matches no node" in err and "--Werror" in err and not out2.exists()
    assert main(["compile", str(model), "-o", str(out2), "--pipeline", "trt-int8", "--calib-data", str(calib),
                 "--Werror"]) == 0 and out2.exists()


def test_already_quantized_input(model, calib, tmp_path, capsys):
    q = tmp_path / "q.onnx"
    assert main(["compile", str(model), "-o", str(q), "--pipeline", "trt-int8", "--calib-data", str(calib), "-q"]) == 0
    _bad(["compile", str(q), "-o", str(tmp_path / "qq.onnx"), "--pipeline", "trt-int8", "--calib-data", str(calib)],
         capsys, 1, "already contains QuantizeLinear", str(tmp_path / "qq.onnx"), q)


def test_input_shape_option(tmp_path, capsys):
    b = G()
    x = b.input("input", ["N", 3, "H", "W"])
    b.output(b.relu(b.conv(x, 3, 8)))
    p = tmp_path / "dyn.onnx"
    onnx.save(b.model(), p)
    out = tmp_path / "o.onnx"
    assert main(["compile", str(p), "-o", str(out), "--pipeline", "infer-shapes", "--input-shape",
                 "input:1x3x16x16"]) == 0
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 16
    assert main(["compile", str(p), "-o", str(out), "--pipeline", "cleanup", "--input-shape", "inp:1x3x16x16"]) == 2
    assert "not a model input" in capsys.readouterr().err
    assert main(["compile", str(p), "-o", str(out), "--pipeline", "cleanup", "--input-shape", "input:1x4x16x16"]) == 2


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "qcompiler")
    if not os.path.exists(exe):
        pytest.skip("console script not installed")
    r = subprocess.run([exe, "pipeline", "--print", "cleanup"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "cleanup"
    r = subprocess.run([exe, "compile"], capture_output=True, text=True)
    assert r.returncode == 2


@pytest.mark.parametrize("name", ["resnet", "resnet-bottleneck", "mobilenetv2", "conv1x1", "transformer", "decoder"])
def test_compile_cleanup_fold_constants_on_zoo_is_exact_and_deterministic(zoo, tmp_path, name, capsys):
    """The foundation's acceptance check: `qcompiler compile` with cleanup,fold-constants on every zoo
    model gives the input's outputs (relative 1e-5) and byte-identical files when run twice."""
    from qcompiler.testing import assert_outputs_close

    src = str(zoo.onnx_path(name))
    before = _sha(src)
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.onnx"
        assert main(["compile", src, "-o", str(out), "--pipeline", "cleanup,fold-constants"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert _sha(src) == before
    assert_outputs_close(src, str(tmp_path / "0.onnx"), rtol=1e-5)
