"""Shared fixtures: zoo models (trained once, cached), temp dirs, tiny graphs built from ONNX text."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

# keep the zoo cache out of the home folder of CI runners unless the user set one
os.environ.setdefault("QCOMPILER_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


@pytest.fixture(scope="session")
def zoo():
    pytest.importorskip("torch")
    from qcompiler.zoo import zoo as z

    return z


@pytest.fixture(scope="session")
def zoo_model(zoo):
    """zoo_model(name) -> Path of the cached ONNX export."""
    return lambda name, **kw: zoo.onnx_path(name, **kw)


@pytest.fixture(scope="session")
def digits():
    pytest.importorskip("sklearn")
    from qcompiler.zoo import digits as d

    return d


def model_from_text(text: str) -> onnx.ModelProto:
    """Parse ONNX text (onnx.parser) into a model, checking it."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def graph_from_text(text: str, initializers: dict[str, np.ndarray] | None = None):
    from qcompiler.ir import import_model

    model = onnx.parser.parse_model(text)
    for name, arr in (initializers or {}).items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    return import_model(model)


@pytest.fixture
def tiny_model_path(tmp_path):
    """A small conv model saved to disk."""
    rng = np.random.default_rng(0)
    g = graph_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        tiny (float[N,3,8,8] x) => (float[N,4,8,8] y) {
            c = Conv <pads = [1,1,1,1]> (x, w, b)
            y = Relu(c)
        }""", {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "b": rng.standard_normal(4).astype(np.float32)})
    from qcompiler.ir import save_model

    p = tmp_path / "tiny.onnx"
    save_model(g, p)
    return p
