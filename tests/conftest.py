"""Shared fixtures: zoo models (trained once, cached) and a tiny model on disk.  Graphs: tests/builders.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from .builders import parse

# keep the zoo cache out of the home folder of CI runners unless the user set one
os.environ.setdefault("QCOMPILER_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))

# property tests draw the same examples on every run (a CI result never depends on luck); set
# HYPOTHESIS_PROFILE=explore to search with fresh random examples
try:
    from hypothesis import settings as _hyp

    _hyp.register_profile("repeatable", derandomize=True)
    _hyp.register_profile("explore", derandomize=False)
    _hyp.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


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


@pytest.fixture
def tiny_model_path(tmp_path):
    """A small conv model saved to disk."""
    rng = np.random.default_rng(0)
    g = parse("""
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


@pytest.fixture
def w4(tmp_path):
    """A recipe with 4-bit per-channel weights (W4A8)."""
    p = tmp_path / "w4.yaml"
    p.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
    return str(p)
