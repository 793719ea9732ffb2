"""onnxruntime sessions over graphs (the numerical oracle).

Q/DQ graphs are run at ``ORT_ENABLE_BASIC`` by default: onnxruntime then simulates quantization in
float, which is what the graph means.  Higher levels swap in integer kernels (QLinearConv, QGemm,
MatMulIntegerToFloat) whose results differ on CPUs without VNNI and crash for fp8 MatMul (see
docs/tensorrt.md, "onnxruntime as an oracle").
"""

from __future__ import annotations

import shutil
from typing import Sequence

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..diagnostics import QCompilerError

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(opt_level: str = "basic", threads: int | None = None, *,
                    in_node_order: bool = False) -> ort.SessionOptions:
    """``in_node_order``: nodes run in the graph's node order where the data allows (onnxruntime's priority-based
    order; its default walks back from the outputs, so nodes added for extra outputs run last and keep what they
    read alive until then)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if in_node_order:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return so


#: initializers at least this large are handed to onnxruntime as OrtValues (no protobuf copy)
EXTERNAL_MIN_BYTES = 4096
_NATIVE = {np.dtype(t) for t in (np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16,
                                 np.int32, np.uint32, np.int64, np.uint64, np.bool_)}


_NATIVE_ONNX = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # float, (u)int8..64, bool, fp16, double


def _light_model(graph: gs.Graph) -> tuple[bytes, list[str], list[np.ndarray]]:
    """The model serialized without the bytes of its large initializers, plus those arrays.

    Large weights are exported as stubs marked external; onnxruntime receives the numpy arrays through
    ``SessionOptions.add_external_initializers`` (zero copy).  This avoids two copies of every weight
    (into the protobuf, then its serialization) and works for models over 2 GB."""
    import onnx
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from .io import export_model
    from .graph import iter_graphs

    swapped: list[tuple[gs.Constant, object]] = []
    names: list[str] = []
    arrays: list[np.ndarray] = []
    try:
        top = graph.tensors()
        for sub in iter_graphs(graph):  # subgraph weights still in the source's data file: inline them
            if sub is graph:
                continue
            for t in sub.tensors().values():
                if isinstance(t, gs.Constant) and hasattr(t._values, "file") and t.name not in top:
                    swapped.append((t, t._values))
                    t._values = np.array(t.values)
        for t in top.values():
            if not isinstance(t, gs.Constant):
                continue
            v = t._values
            from_file = hasattr(v, "file")  # external data of the source model: always materialize
            nbytes = getattr(v, "nbytes", 0)
            if nbytes < EXTERNAL_MIN_BYTES:
                if from_file:  # small (axes, shapes): inline, onnxruntime's shape inference reads them
                    swapped.append((t, v))
                    t._values = np.array(t.values)
                continue
            if isinstance(v, LazyValues) and not from_file and v.tensor.data_type not in _NATIVE_ONNX:
                continue  # an fp8/int4/... proto: keep it inline
            arr = np.ascontiguousarray(t.values)
            if arr.dtype not in _NATIVE:
                if from_file:
                    swapped.append((t, v))
                    t._values = arr  # inline for this export
                continue
            stub = onnx.TensorProto()
            stub.name = t.name
            stub.data_type = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
            stub.dims.extend(arr.shape)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for k, val in (("location", "__qc_in_memory__"), ("offset", "0"), ("length", str(arr.nbytes))):
                e = stub.external_data.add()
                e.key, e.value = k, val
            swapped.append((t, v))
            t._values = LazyValues(stub)
            names.append(t.name)
            arrays.append(arr)
        model = export_model(graph)
    finally:
        for t, v in swapped:
            t._values = v
    return model.SerializeToString(deterministic=True), names, arrays


class Session:
    """An onnxruntime InferenceSession over a graph.  Weights reach onnxruntime as OrtValues (no copy)."""

    def __init__(self, graph: gs.Graph, *, opt_level: str = "basic", threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), so: ort.SessionOptions | None = None):
        self._tmpdir = None
        so = so or session_options(opt_level, threads)
        try:
            blob, names, arrays = _light_model(graph)
            self._arrays = arrays  # must outlive the session
            if names:
                self._values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
                so.add_external_initializers(names, self._values)
            self.sess = ort.InferenceSession(blob, so, providers=list(providers))
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
