"""Loading and saving: bad files, atomic writes, external data, ir_version, determinism."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from qcompiler.diagnostics import ModelLoadError, ModelSaveError
from qcompiler.ir import copy_graph, load_model, save_model, verify_graph
from qcompiler.ir.io import MAX_IR_VERSION, export_model
from qcompiler.ir.tensordata import ExternalValues
from qcompiler.testing import assert_outputs_close, random_feeds, run

from ..builders import parse


@pytest.mark.parametrize("content,code,fragment", [
    (None, "QC201", "does not exist"),
    (b"", "QC202", "is empty"),
    (b"\x08\x07\x12\x0bhello", "QC202", "not a valid ONNX model"),
    (bytes(range(256)) * 8, "QC202", "not a valid ONNX model"),
])
def test_bad_model_files(tmp_path, content, code, fragment):
    p = tmp_path / "m.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(p)
    assert info.value.code == code
    assert fragment in str(info.value)
    assert str(p) in str(info.value)


def test_truncated_model(tiny_model_path, tmp_path):
    data = tiny_model_path.read_bytes()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(p)
    assert "truncated" in str(info.value) or "not a valid ONNX model" in str(info.value)


def test_protobuf_that_is_not_a_model(tmp_path):
    t = onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32), "t")
    p = tmp_path / "tensor.pb"
    p.write_bytes(t.SerializeToString())
    with pytest.raises(ModelLoadError) as info:
        load_model(p)
    assert "not" in str(info.value)


def test_roundtrip_is_exact_and_deterministic(tiny_model_path, tmp_path):
    g = load_model(tiny_model_path)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_model(g, a)
    save_model(load_model(tiny_model_path), b)
    assert a.read_bytes() == b.read_bytes()
    assert_outputs_close(tiny_model_path, a, rtol=0, atol=0)


def test_ir_version_is_pinned(tmp_path):
    g = parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    g.qc_meta.ir_version = 14  # what onnx >= 1.23 stamps by default
    p = tmp_path / "m.onnx"
    save_model(g, p)
    m = onnx.load(p)
    assert m.ir_version <= MAX_IR_VERSION
    assert m.ir_version == 8  # the smallest IR for opset 17
    run(load_model(p), {"x": np.ones(2, np.float32)})


def test_refuses_to_overwrite_input(tiny_model_path):
    before = tiny_model_path.read_bytes()
    g = load_model(tiny_model_path)
    with pytest.raises(ModelSaveError):
        save_model(g, tiny_model_path)
    assert tiny_model_path.read_bytes() == before


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    g = load_model_from_text()
    out = tmp_path / "out.onnx"
    import qcompiler.ir.io as io

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(ModelSaveError) as info:
        save_model(g, out)
    assert "No space left" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_or_missing_folder(tmp_path):
    g = load_model_from_text()
    with pytest.raises(ModelSaveError):
        save_model(g, tmp_path / "nope" / "out.onnx")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not apply
            pytest.skip("root can write anywhere")
        with pytest.raises(ModelSaveError):
            save_model(g, ro / "out.onnx")
    finally:
        os.chmod(ro, 0o700)


def load_model_from_text():
    rng = np.random.default_rng(1)
    return parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,16] x) => (float[N,8] y) { y = Gemm <transB = 1> (x, w, b) }""",
        {"w": rng.standard_normal((8, 16)).astype(np.float32), "b": np.zeros(8, np.float32)})


def test_external_data_roundtrip_lazy_and_atomic(tmp_path):
    g = load_model_from_text()
    src = tmp_path / "src.onnx"
    save_model(g, src, external_data="always", size_threshold=16)
    assert (tmp_path / "src.onnx.data").exists()
    g2 = load_model(src)
    w = next(t for t in g2.tensors().values() if isinstance(t, gs.Constant) and t.name == "w")
    assert isinstance(w._values, ExternalValues)  # not read yet
    # default: external stays external, with a new data file next to the output
    out = tmp_path / "out.onnx"
    save_model(g2, out)
    assert (tmp_path / "out.onnx.data").exists()
    feeds = random_feeds(g, batch=3)
    assert_outputs_close(g, load_model(out), feeds, rtol=0, atol=0)
    # never: weights inline
    inline = tmp_path / "inline.onnx"
    save_model(load_model(src), inline, external_data="never")
    assert not (tmp_path / "inline.onnx.data").exists()
    assert_outputs_close(g, load_model(inline), feeds, rtol=0, atol=0)
    # the input's data file may not be reused as output
    with pytest.raises(ModelSaveError):
        save_model(load_model(src), tmp_path / "other.onnx", location="src.onnx.data")


def test_verify_a_model_whose_weights_stay_in_an_external_file(tmp_path, monkeypatch):
    """The checker looks for external files relative to the working directory: verification must not depend on
    it (a file written by onnx.save with any location name, verified from elsewhere)."""
    m = export_model(load_model_from_text())
    src = tmp_path / "m" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(m, src, save_as_external_data=True, all_tensors_to_one_file=True, location="model.weights",
                    size_threshold=0)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    g = load_model(src)
    verify_graph(g, full_check=True)
    save_model(g, tmp_path / "out.onnx", size_threshold=256)
    assert_outputs_close(load_model_from_text(), load_model(tmp_path / "out.onnx"), rtol=0, atol=0)
    # the output keeps big weights outside, small tensors inside (shape inference cannot read external data)
    out = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    where = {t.name: t.data_location for t in out.graph.initializer}
    assert where == {"w": onnx.TensorProto.EXTERNAL, "b": onnx.TensorProto.DEFAULT}


def test_missing_or_truncated_external_data(tmp_path):
    g = load_model_from_text()
    src = tmp_path / "src.onnx"
    save_model(g, src, external_data="always", size_threshold=16)
    data = (tmp_path / "src.onnx.data").read_bytes()
    (tmp_path / "src.onnx.data").write_bytes(data[:10])
    with pytest.raises(ModelLoadError) as info:
        load_model(src)
    assert info.value.code == "QC205" and "too short" in str(info.value)
    (tmp_path / "src.onnx.data").unlink()
    with pytest.raises(ModelLoadError) as info:
        load_model(src)
    assert info.value.code == "QC205" and "not found" in str(info.value)


def test_copy_graph_is_independent():
    g = load_model_from_text()
    c = copy_graph(g)
    c.nodes[0].name = "changed"
    assert g.nodes[0].name != "changed"


def test_verify_reports_dangling_and_unsorted():
    g = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)
                                         y = Neg(a) }""")
    g.nodes.reverse()
    with pytest.raises(Exception) as info:
        verify_graph(g)
    assert "topologically" in str(info.value)


@pytest.mark.parametrize("text, node, fragment", [
    # a Conv fed integers (a mutated dtype): checker-valid, but no runtime can run it
    ("""g (int32[1,2,4,4] x) => (float[1,2,4,4] y) { y = Conv <pads = [1, 1, 1, 1]> (x, w) }""", "Conv0",
     "unsupported type"),
    # a Gemm whose inner dimensions cannot match
    ("""g (float[1,5] x) => (float[1,3] y) { y = Gemm <transB = 1> (x, v) }""", "Gemm0", "mismatch"),
])
def test_type_problems_name_the_node_and_compile_refuses(tmp_path, text, node, fragment):
    from qcompiler.api import compile_model
    from qcompiler.ir.verify import type_problems

    rng = np.random.default_rng(0)
    g = parse('<ir_version: 8, opset_import: ["" : 17]>\n' + text,
              {"w": rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
               "v": rng.standard_normal((3, 4)).astype(np.float32)})
    for i, n in enumerate(g.nodes):
        n.name = f"{n.op}{i}"
    verify_graph(g)  # onnx.checker alone lets it through
    problems = type_problems(g)
    assert len(problems) == 1 and problems[0].node == node and fragment in problems[0].message
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    save_model(g, src)
    with pytest.raises(ModelLoadError) as info:
        compile_model(src, out, "tidy")
    assert info.value.code == "QC203" and "not valid" in str(info.value) and not out.exists()


def test_type_problems_ignore_wrong_declarations():
    """A declared output or value_info shape that inference contradicts is a hint, not a type error."""
    from qcompiler.ir.verify import type_problems

    g = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[7] y) { y = Relu(x) }""")
    assert type_problems(g) == []
