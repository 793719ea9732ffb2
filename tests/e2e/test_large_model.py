"""Models over 2 GB: load lazily, run passes, calibrate and save with external data (sparse file)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from qcompiler.api import compile_model
from qcompiler.ir import load_model
from qcompiler.ir.tensordata import ExternalValues

from ..builders import G


def _big_model(tmp_path, gib: float = 2.1):
    """A Gather from a >2 GB embedding table held in a sparse external data file, then a small conv net."""
    rows = int(gib * 2**30) // (4 * 256)
    table = onnx.TensorProto()
    table.name, table.data_type = "table", TensorProto.FLOAT
    table.dims.extend([rows, 256])
    table.data_location = TensorProto.EXTERNAL
    nbytes = rows * 256 * 4
    for k, v in (("location", "big.onnx.data"), ("offset", "0"), ("length", str(nbytes))):
        e = table.external_data.add()
        e.key, e.value = k, v
    with open(tmp_path / "big.onnx.data", "wb") as f:  # sparse: no disk blocks for the zeros
        f.truncate(nbytes)
    rng = np.random.default_rng(0)
    b = G(17)
    b.input("ids", ["N"], TensorProto.INT64)
    b.tensor(table)
    b.init((0.1 * rng.standard_normal((8, 1, 3, 3))).astype(np.float32), name="w")
    b.init(np.array([-1, 1, 16, 16], np.int64), name="shape")
    b.init((0.1 * rng.standard_normal((8, 8, 3, 3))).astype(np.float32), name="w2")
    b.node("Gather", ["table", "ids"], outputs=["emb"], axis=0, name="gather")
    b.node("Reshape", ["emb", "shape"], outputs=["img"], name="reshape")
    b.node("Conv", ["img", "w"], outputs=["c"], pads=[1, 1, 1, 1], name="conv")
    b.node("Relu", ["c"], outputs=["r"], name="relu")
    b.node("Conv", ["r", "w2"], outputs=["y"], pads=[1, 1, 1, 1], name="conv2")
    b.output("y", shape=["N", 8, 16, 16])
    m = b.model(ir=8, infer_outputs=False)
    path = tmp_path / "big.onnx"
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path, nbytes


@pytest.mark.slow
def test_over_2gb_round_trip_and_compile(tmp_path):
    src, nbytes = _big_model(tmp_path)
    assert nbytes > 2**31
    g = load_model(src)
    table = next(t for t in g.tensors().values() if t.name == "table")
    assert isinstance(table._values, ExternalValues)  # not read at load time
    before = os.stat(tmp_path / "big.onnx.data")
    calib = tmp_path / "ids.npz"
    np.savez(calib, ids=np.arange(8, dtype=np.int64))
    out = tmp_path / "out.onnx"
    compile_model(str(src), str(out), "cleanup,calibrate,insert-qdq", calib_data=str(calib))
    assert (tmp_path / "out.onnx.data").stat().st_size >= nbytes
    assert out.stat().st_size < 2**20  # weights are external
    assert os.stat(tmp_path / "big.onnx.data").st_mtime == before.st_mtime  # input untouched
    q = load_model(out)
    assert sum(1 for n in q.nodes if n.op == "QuantizeLinear") >= 1
    from qcompiler.testing import run

    y = run(q, {"ids": np.arange(4, dtype=np.int64)})["y"]
    assert y.shape == (4, 8, 16, 16) and np.isfinite(y).all()
