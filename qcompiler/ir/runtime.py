"""onnxruntime sessions over graphs (the numerical oracle).

Q/DQ graphs are run at ``ORT_ENABLE_BASIC`` by default: onnxruntime then simulates quantization in
float, which is what the graph means.  Higher levels swap in integer kernels (QLinearConv, QGemm,
MatMulIntegerToFloat) whose results differ on CPUs without VNNI and crash for fp8 MatMul (see
docs/tensorrt.md, "onnxruntime as an oracle").
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..diagnostics import QCompilerError
from .io import save_model, serialize_for_runtime

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(opt_level: str = "basic", threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


class Session:
    """An onnxruntime InferenceSession over a graph, created from memory (or a temp dir if > 2 GB)."""

    def __init__(self, graph: gs.Graph, *, opt_level: str = "basic", threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), so: ort.SessionOptions | None = None):
        self._tmpdir = None
        so = so or session_options(opt_level, threads)
        blob = serialize_for_runtime(graph)
        try:
            if blob is not None:
                self.sess = ort.InferenceSession(blob, so, providers=list(providers))
            else:
                self._tmpdir = tempfile.mkdtemp(prefix="qc-ort-")
                path = os.path.join(self._tmpdir, "model.onnx")
                save_model(graph, path, external_data="always")
                self.sess = ort.InferenceSession(path, so, providers=list(providers))
        except QCompilerError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QCompilerError(f"onnxruntime cannot load the model: {msg}", code="QC203",
                                 hint="the graph may use an operator or type this onnxruntime build lacks") from None
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        return self.sess.run(list(outputs) if outputs is not None else None, feeds)

    def run_dict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.sess.run(None, feeds)))

    def close(self) -> None:
        self.sess = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __del__(self):  # pragma: no cover - best effort cleanup
        try:
            self.close()
        except Exception:
            pass


def run_graph(graph: gs.Graph, feeds: dict[str, np.ndarray], *, opt_level: str = "basic") -> dict[str, np.ndarray]:
    s = Session(graph, opt_level=opt_level)
    try:
        return s.run_dict(feeds)
    finally:
        s.close()
