"""Helpers for tests and for users checking their own passes.

``assert_outputs_close(before, after)`` runs both graphs in onnxruntime (``ORT_ENABLE_BASIC``) on the
same random (or given) feeds and compares every output with a tolerance *relative to the output's
range*: ``max|a - b| <= atol + rtol * max|a|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .ir import load_model
from .ir.runtime import Session
from .ir.text import graph_to_text
from .quant.numerics import sqnr_db

__all__ = ["sqnr_db"]  # tests and tools read it from here too

_SYMBOLIC_DEFAULT = 1


def _as_graph(model: Any) -> gs.Graph:
    """A graph from a graph, a ModelProto or a path."""
    if isinstance(model, gs.Graph):
        return model
    if hasattr(model, "graph") and hasattr(model, "SerializeToString"):
        from .ir import import_model

        return import_model(model, normalize=False)
    return load_model(model)


def input_specs(graph: gs.Graph) -> list[tuple[str, np.dtype, list[Any]]]:
    return [(t.name, np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32), list(t.shape or []))
            for t in graph.inputs]


def random_feeds(model: Any, *, seed: int = 0, batch: int = 1, dims: dict[str, int] | None = None,
                 scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input.  Symbolic dims take ``dims[name]`` or ``batch`` (first dim)
    or 1; integer inputs get small non-negative integers."""
    graph = _as_graph(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dtype, shape in input_specs(graph):
        concrete = []
        for i, d in enumerate(shape):
            if isinstance(d, (int, np.integer)) and d >= 0:
                concrete.append(int(d))
            elif dims and isinstance(d, str) and d in dims:
                concrete.append(int(dims[d]))
            else:
                concrete.append(batch if i == 0 else _SYMBOLIC_DEFAULT)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = (rng.standard_normal(concrete) * scale).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, size=concrete).astype(bool)
        else:
            feeds[name] = rng.integers(0, 4, size=concrete).astype(dtype)
    return feeds


def run(model: Any, feeds: dict[str, np.ndarray], *, opt_level: str = "basic") -> dict[str, np.ndarray]:
    s = Session(_as_graph(model), opt_level=opt_level)
    try:
        return s.run_dict(feeds)
    finally:
        s.close()


def max_relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
    return float(np.max(np.abs(ref - got))) / scale if ref.size else 0.0


def assert_outputs_close(before: Any, after: Any, feeds: dict[str, np.ndarray] | None = None, *,
                         rtol: float = 1e-4, atol: float = 1e-6, seed: int = 0, batch: int = 2,
                         opt_level: str = "basic") -> dict[str, float]:
    """Assert two models compute the same outputs (tolerance relative to the output range).

    Returns the relative error of each output so tests can report it."""
    g_before = _as_graph(before)
    g_after = _as_graph(after)
    feeds = feeds if feeds is not None else random_feeds(g_before, seed=seed, batch=batch)
    a = run(g_before, feeds, opt_level=opt_level)
    b = run(g_after, feeds, opt_level=opt_level)
    assert set(a) == set(b), f"output names differ: {sorted(a)} vs {sorted(b)}"
    errors = {}
    for name in a:
        ra, rb = np.asarray(a[name]), np.asarray(b[name])
        assert ra.shape == rb.shape, f"output '{name}': shape {ra.shape} vs {rb.shape}"
        if ra.dtype.kind in "biu":
            assert np.array_equal(ra, rb), f"output '{name}' differs"
            errors[name] = 0.0
            continue
        diff = float(np.max(np.abs(ra.astype(np.float64) - rb.astype(np.float64)))) if ra.size else 0.0
        ref = float(np.max(np.abs(ra))) if ra.size else 0.0
        errors[name] = diff / max(ref, 1e-12)
        assert diff <= atol + rtol * ref, (f"output '{name}': max |diff| = {diff:.3g} exceeds "
                                           f"{atol:.1g} + {rtol:.1g} * {ref:.3g} (relative error {errors[name]:.3g})")
    return errors


def canonical_text(model: Any) -> str:
    return graph_to_text(_as_graph(model))
