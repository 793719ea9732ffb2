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


def test_a_batch_of_one_example_exports_a_free_batch(tmp_path):
    """torch.export fixes a dim of size 1; the example is traced twice over so the batch stays free, and a
    DataLoader of batches of 8 calibrates the model exported from a one-image example."""
    from qcompiler.torch import export_module

    m, x = _net(), _images()
    one = x[:1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # NCHW over NHWC memory, as photos come
    src = tmp_path / "m.onnx"
    diags = DiagnosticEngine()
    export_module(m, (one,), src, exporter="dynamo", diagnostics=diags)
    dim0 = onnx.load(str(src)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value, dim0
    assert not [d for d in diags if d.code == "QC301"]
    qcompiler.compile_torch(m, (one,), tmp_path / "t.onnx", calib_data=_loader(x, 8), progress=False)
    assert lint_model(tmp_path / "t.onnx").n_errors == 0


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
    import qcompiler.build as build

    assert doc["versions"]["qcompiler-source"] == build.source_hash()
    with pytest.MonkeyPatch.context() as mp:  # the same version number, other code: another compiler
        mp.setattr(build, "source_hash", lambda: "another-checkout")
        assert not qcompiler.compile_model(src, out, "trt-int8", **kw).up_to_date
    np.savez(calib, x=x.numpy() * 2)  # new data: rebuilt
    assert not qcompiler.compile_model(src, out, "trt-int8", **kw).up_to_date
    assert not qcompiler.compile_model(src, out, "trt-int8", **kw, rebuild=True).up_to_date


def _photos(n: int, size: int) -> torch.Tensor:
    """Real photographs (scikit-image's samples), crops resized to ``size``, ImageNet-normalised."""
    ski = pytest.importorskip("skimage")
    from skimage import data as skd
    from skimage.transform import resize

    imgs = [skd.astronaut(), skd.chelsea(), skd.coffee(), skd.rocket(), skd.hubble_deep_field()]
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        im = imgs[k % len(imgs)]
        h, w = im.shape[:2]
        s = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = resize(im[y:y + s, x:x + s], (size, size), anti_aliasing=True).astype(np.float32)
        out.append((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
    del ski
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2-full", "efficientnet-b0"])
def test_architectures_through_compile_torch_equal_the_cli_path(zoo, tmp_path, name):
    """The zoo's ImageNet-shaped architectures (random weights) with a DataLoader of real photos: lint-clean, run,
    and the same model as exporting and compiling the file with the same photos from an .npz."""
    from qcompiler.torch import export_module

    entry = zoo.get(name)
    torch.manual_seed(0)
    m = entry.build().eval()
    x = _photos(32, entry.input_shape[-1])
    out = tmp_path / "t.onnx"
    qcompiler.compile_torch(m, (x[:1],), out, calib_data=_loader(x, 8), progress=False)
    assert lint_model(out).n_errors == 0
    qm = qcompiler.torch.OnnxModule(out)
    with torch.no_grad():
        y, y0 = qm(x[:4]), m(x[:4])
    assert torch.isfinite(y).all() and y.shape == y0.shape
    src, npz, out2 = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "f.onnx"
    export_module(m, (x[:1],), src)
    np.savez(npz, **{onnx.load(str(src), load_external_data=False).graph.input[0].name: x.numpy()})
    qcompiler.compile_model(src, out2, "trt-int8", calib_data=str(npz), progress=False)
    assert _graph_bytes(out) == _graph_bytes(out2)


@pytest.mark.slow
def test_a_bert_encoder_from_its_config_with_a_dataloader_of_sentences(tmp_path):
    """A transformers BERT-class encoder built from its config (random weights), token ids of real sentences (the
    standard library's sources) in a DataLoader of dicts: exported by the dynamo exporter, compiled, lint-clean,
    runs, agrees with the module."""
    transformers = pytest.importorskip("transformers")
    import inspect
    import string

    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=256, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    enc = Encoder(model).eval()
    import textwrap

    words = " ".join(inspect.getsource(mod) for mod in (string, textwrap)).split()  # thousands of real words
    ids = np.array([sum(map(ord, w)) % 997 + 2 for w in words], np.int64)
    seq = 32
    batches = [{"input_ids": torch.from_numpy(ids[k:k + 4 * seq].reshape(4, seq)),
                "attention_mask": torch.ones(4, seq, dtype=torch.long)} for k in range(0, 8 * 4 * seq, 4 * seq)]
    out = tmp_path / "bert.onnx"
    qcompiler.compile_torch(enc, (batches[0]["input_ids"], batches[0]["attention_mask"]), out,
                            calib_data=batches, progress=False)
    assert lint_model(out).n_errors == 0
    qm = qcompiler.torch.OnnxModule(out)
    with torch.no_grad():
        y, y0 = qm(**batches[-1]), enc(**batches[-1])
    cos = torch.nn.functional.cosine_similarity(y.float().flatten(1), y0.flatten(1)).mean()
    assert cos > 0.98, float(cos)
