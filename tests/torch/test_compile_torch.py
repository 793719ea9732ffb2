"""The torch front end: compile_torch (dynamo and TorchScript exports), calibration from a DataLoader, a Dataset or
iterables of tensors/tuples/dicts, a saved .pt2 on the command line, MODULE:FUNCTION data, OnnxModule, and the
build-system features (up to date, depfile, manifest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import qcompiler  # noqa: E402
from qcompiler.diagnostics import DiagnosticEngine, QCompilerError  # noqa: E402
from qcompiler.quant.lint import lint_model  # noqa: E402


class Net(torch.nn.Module):
    """conv -> BN -> ReLU -> conv(stride 2) -> BN -> ReLU -> mean -> Linear: BatchNorm, a residual-free CNN."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.c2, self.b2 = torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(y.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    m = Net()
    for bn in (m.b1, m.b2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _images(n=48):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _loader(x, batch=16):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                                       batch_size=batch)


def _graph_bytes(path) -> bytes:
    """The model without its build key (compiles from in-memory data record none)."""
    m = onnx.load(str(path))
    keep = [p for p in m.metadata_props if p.key != "qcompiler.build_key"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    return m.SerializeToString(deterministic=True)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_compile_torch_matches_export_then_compile(tmp_path, exporter):
    """A DataLoader (with labels) calibrates; the result is lint-clean, runs, agrees with the module, and is the
    same model as exporting the module and compiling the file with the same data from an .npz."""
    m, x = _net(), _images()
    out = tmp_path / "t.onnx"
    res = qcompiler.compile_torch(m, (x[:2],), out, calib_data=_loader(x), exporter=exporter, progress=False)
    assert lint_model(out).n_errors == 0
    assert res.pipeline == "trt-int8"
    qm = qcompiler.torch.OnnxModule(out)
    with torch.no_grad():
        y, y0 = qm(x[:16]), m(x[:16])
    assert isinstance(y, torch.Tensor) and (y.argmax(1) == y0.argmax(1)).float().mean() >= 0.9
    # the CLI path: the user exports, writes the data to a file, compiles
    from qcompiler.torch import export_module

    src, npz, out2 = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "f.onnx"
    export_module(m, (x[:2],), src, exporter=exporter)
    np.savez(npz, x=x.numpy())
    qcompiler.compile_model(src, out2, "trt-int8", calib_data=str(npz), progress=False)
    assert _graph_bytes(out) == _graph_bytes(out2)


def test_dataset_iterables_and_dicts_calibrate_alike(tmp_path):
    """A Dataset (single samples, batched here), a list of (tensor, label) tuples and a list of dicts are the same
    data: the same scales, so the same model."""
    m, x = _net(), _images()
    forms = {"dataset": torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
             "tuples": [(x[i:i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, len(x), 8)],
             "dicts": [{"x": x[i:i + 8]} for i in range(0, len(x), 8)]}
    outs = {}
    for k, data in forms.items():
        outs[k] = tmp_path / f"{k}.onnx"
        qcompiler.compile_torch(m, (x[:2],), outs[k], calib_data=data, progress=False)
    assert _graph_bytes(outs["dataset"]) == _graph_bytes(outs["tuples"]) == _graph_bytes(outs["dicts"])


def test_a_module_that_cannot_be_exported_is_a_clear_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.histc(x, 4)  # no ONNX conversion in either exporter

    with pytest.raises(QCompilerError, match=r"cannot export Bad to ONNX: dynamo: .*; torchscript: ") as e:
        qcompiler.compile_torch(Bad(), (torch.randn(2, 4),), tmp_path / "b.onnx", calib_data=[torch.randn(2, 4)])
    assert e.value.diagnostic.code == "QC203" and not (tmp_path / "b.onnx").exists()


def test_onnx_module_takes_torch_tensors_by_position_or_name_and_converts_float_types(tmp_path):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    from qcompiler.torch import export_module

    m, x = _net(), _images(4)
    src = tmp_path / "m.onnx"
    export_module(m, (x[:2],), src)
    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), tmp_path / "h.onnx")
    qm = qcompiler.torch.OnnxModule(tmp_path / "h.onnx")
    y = qm(x)  # float32 in, the model takes fp16
    assert y.dtype == torch.float16 and y.shape == (4, 10)
    assert torch.equal(qm(x=x), y)
    with pytest.raises(TypeError, match="missing"):
        qm()


def test_cli_compiles_a_saved_exported_program_with_module_function_data(tmp_path):
    m, x = _net(), _images(8)
    ep = torch.export.export(m, (x[:2],), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(ep, tmp_path / "net.pt2")
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def loader():\n"
        "    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))\n"
        "    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)\n")
    cmd = [sys.executable, "-m", "qcompiler", "compile", "net.pt2", "-o", "net.int8.onnx", "--pipeline", "trt-int8",
           "--calib-data", "mydata:loader", "--depfile", "net.d", "--progress", "off"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert lint_model(tmp_path / "net.int8.onnx").n_errors == 0
    assert (tmp_path / "net.d").read_text().split(":")[1].split() == ["\\", "net.pt2"]
    r = subprocess.run(cmd[:-4] + ["--calib-data", "nosuchmodule:loader"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "cannot import it" in r.stderr


def test_up_to_date_outputs_are_left_alone_and_inputs_are_listed(tmp_path):
    """The same model, data, recipe and pipeline: the output keeps its bytes and mtime and the run says so;
    a changed input rebuilds; the depfile and the manifest name every input."""
    from qcompiler.torch import export_module

    src, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    x = _images(16)
    export_module(_net(), (x[:2],), src, exporter="torchscript")
    np.savez(calib, x=x.numpy())
    out, dep, man = tmp_path / "q.onnx", tmp_path / "q.d", tmp_path / "q.json"
    kw = dict(calib_data=str(calib), depfile=str(dep), manifest=str(man), progress=False)
    r1 = qcompiler.compile_model(src, out, "trt-int8", **kw)
    assert not r1.up_to_date
    stamp, data = os.stat(out).st_mtime_ns, out.read_bytes()
    diags = DiagnosticEngine()
    r2 = qcompiler.compile_model(src, out, "trt-int8", diagnostics=diags, **kw)
    assert r2.up_to_date and os.stat(out).st_mtime_ns == stamp and out.read_bytes() == data
    assert any(d.code == "QC140" and "up to date" in d.message for d in diags)
    deps = dep.read_text()
    assert str(src) in deps and str(calib) in deps
    doc = json.loads(man.read_text())
    assert doc["up_to_date"] and set(doc["inputs"]) == {str(src), str(calib)}
    assert doc["pipeline"] == "trt-int8" and doc["versions"]["qcompiler"]
    np.savez(calib, x=x.numpy() * 2)  # new data: rebuilt
    assert not qcompiler.compile_model(src, out, "trt-int8", **kw).up_to_date
    assert not qcompiler.compile_model(src, out, "trt-int8", **kw, rebuild=True).up_to_date
