"""Tensor data: initializers kept in external data files (read lazily, streamed on save), the byte sizes of
tensors and models, and checks that every tensor holds as much data as its type says.

* Weights stored as external data are never read at load time.  Each such initializer becomes a
  graphsurgeon ``LazyValues`` subclass (:class:`ExternalValues`) that reads its bytes from the source file on
  first use (memory-mapped where it can), so a 3 GB model loads in milliseconds and a pass that does not touch
  a weight never reads it.
* On save, external data is streamed tensor by tensor (runs of zeros are skipped with ``seek`` so sparse
  inputs stay sparse), so models over the 2 GB protobuf limit round-trip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..diagnostics import ModelLoadError, ModelSaveError
from .graph import iter_graphs

FP8_TYPES = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
              onnx.TensorProto.FLOAT8E5M2FNUZ}


INT4_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


class ExternalValues(LazyValues):
    """Lazily loaded values of an initializer kept in an external data file."""

    def __init__(self, tensor: onnx.TensorProto, file: str, offset: int, length: int):
        super().__init__(tensor)
        self.file = file
        self.offset = offset
        self.length = length

    def read_bytes(self) -> bytes:
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            raise ModelLoadError(
                f"external data for tensor '{self.tensor.name}' is truncated: expected {self.length} bytes at "
                f"offset {self.offset} of '{self.file}', found {len(data)}", code="QC205", node=self.tensor.name,
                hint="copy the model together with its complete .data file")
        return data

    def load(self) -> np.ndarray:
        dtype = _np_dtype(self.tensor.data_type)
        n = int(np.prod(self.tensor.dims)) if len(self.tensor.dims) else 1
        if dtype is not None and dtype.itemsize * n == self.length and n > 0:
            # map the file instead of reading it: weights of multi-GB models cost no memory until used
            # (read-only: passes replace arrays, they never write into them)
            return np.memmap(self.file, dtype=dtype.newbyteorder("<"), mode="r", offset=self.offset,
                             shape=tuple(int(d) for d in self.tensor.dims))
        proto = onnx.TensorProto()
        proto.CopyFrom(self.tensor)
        del proto.external_data[:]
        proto.data_location = onnx.TensorProto.DEFAULT
        proto.raw_data = self.read_bytes()
        return np.array(onnx.numpy_helper.to_array(proto))

    def copy_to(self, f, chunk: int = 1 << 24) -> int:
        """Stream the bytes into an open file (runs of zeros become holes), return the length."""
        with open(self.file, "rb") as src:
            src.seek(self.offset)
            left = self.length
            while left > 0:
                piece = src.read(min(chunk, left))
                if not piece:
                    raise ModelLoadError(f"external data for tensor '{self.tensor.name}' is truncated", code="QC205")
                write_sparse_aware(f, piece)
                left -= len(piece)
        return self.length


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def all_tensor_protos(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    """Initializers and tensor-valued attributes, in this graph and every subgraph."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from all_tensor_protos(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_tensor_protos(g)


def resolve_external(model: onnx.ModelProto, base_dir: Path,
                      source: str) -> tuple[dict[str, tuple[str, int, int]], set[str]]:
    """Map tensor name -> (absolute file, offset, length) for every external tensor; check the files."""
    resolved: dict[str, tuple[str, int, int]] = {}
    files: set[str] = set()
    base_resolved = base_dir.resolve()
    for t in all_tensor_protos(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = _external_info(t)
        loc = info.get("location")
        if not loc:
            raise ModelLoadError(f"tensor '{t.name}' is marked external but has no location", code="QC205",
                                 location=source, node=t.name)
        f = (base_dir / loc).resolve()
        try:
            f.relative_to(base_resolved)
        except ValueError:
            raise ModelLoadError(f"external data of tensor '{t.name}' points outside the model folder ('{loc}')",
                                 code="QC205", location=source, node=t.name,
                                 hint="keep external data files next to the model") from None
        if not f.is_file():
            raise ModelLoadError(f"external data file '{loc}' for tensor '{t.name}' not found next to the model",
                                 code="QC205", location=source, node=t.name,
                                 hint=f"copy '{loc}' into '{base_dir}'")
        offset = int(info.get("offset", 0))
        itemsize = _itemsize(t.data_type)
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        expected = (n * itemsize) if itemsize else None
        if t.data_type in INT4_TYPES:
            expected = (n + 1) // 2
        if "length" in info:
            length = int(info["length"])
        else:
            length = expected if expected is not None else f.stat().st_size - offset
        if offset + length > f.stat().st_size:
            raise ModelLoadError(
                f"external data file '{loc}' is too short for tensor '{t.name}' (needs {offset + length} bytes, "
                f"has {f.stat().st_size})", code="QC205", location=source, node=t.name,
                hint="the .data file is truncated; copy it again")
        resolved[t.name] = (str(f), offset, length)
        files.add(str(f))
    return resolved, files


def attach_external(graph: gs.Graph, by_name: dict[str, tuple[str, int, int]]) -> None:
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            # keyed by the proto's own name: a Constant node's tensor is named after the node's output now
            if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) \
                    and not isinstance(t._values, ExternalValues) and t._values.tensor.name in by_name:
                f, off, length = by_name[t._values.tensor.name]
                t._values = ExternalValues(t._values.tensor, f, off, length)


_NATIVE_NP: dict[int, type] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
              onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
              onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32,
              onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT64: np.uint64}


def _np_dtype(data_type: int) -> np.dtype | None:
    t = _NATIVE_NP.get(data_type)
    return np.dtype(t) if t is not None else None


def _itemsize(data_type: int) -> int | None:
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except Exception:
        return None
    if data_type in INT4_TYPES:
        return None
    return np.dtype(np_dtype).itemsize


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def check_tensor_sizes(model: onnx.ModelProto, source: str) -> None:
    """Every inline tensor holds exactly as much data as its dims and element type say (onnx.checker does
    not look; a mismatch would otherwise surface deep inside a pass)."""
    for t in all_tensor_protos(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
            continue
        n = 1
        for d in t.dims:
            n *= int(d)
        if any(int(d) < 0 for d in t.dims):
            raise ModelLoadError(f"tensor '{t.name}' has a negative dimension {list(t.dims)}", location=source,
                                 node=t.name)
        if t.raw_data:
            size = _itemsize(t.data_type)
            if t.data_type in INT4_TYPES:
                want = (n + 1) // 2
            elif size is None:
                continue
            else:
                want = n * size
            if len(t.raw_data) != want:
                raise ModelLoadError(
                    f"tensor '{t.name}' holds {len(t.raw_data)} bytes, but dims {list(t.dims)} of "
                    f"{onnx.TensorProto.DataType.Name(t.data_type)} need {want}", location=source, node=t.name,
                    hint="the model file is corrupted or was edited inconsistently; re-export it")
            continue
        counts = [len(getattr(t, f)) for f in _TYPED_FIELDS if len(getattr(t, f))]
        if counts and counts[0] not in (n, 2 * n):  # complex types store 2 values per element
            raise ModelLoadError(f"tensor '{t.name}' holds {counts[0]} values, but dims {list(t.dims)} need {n}",
                                 location=source, node=t.name, hint="re-export the model")


def external_ref(t: gs.Tensor) -> tuple[str, int, int] | None:
    """(file, offset, length) of a constant whose bytes still sit unread in an external data file."""
    v = getattr(t, "_values", None) if isinstance(t, gs.Constant) else None
    return (v.file, v.offset, v.length) if isinstance(v, ExternalValues) else None


def read_external(t: gs.Tensor) -> bool:
    """Read a constant's external bytes into memory (a numpy array, no longer marked external); True if it was
    external.  For code that hands the graph to another tool (graphsurgeon's folding runs onnxruntime on an
    exported copy, which cannot resolve a data file relative to the model)."""
    if external_ref(t) is None:
        return False
    assert isinstance(t, gs.Constant)
    t.values = np.array(t.values)
    t.data_location = None
    return True


def lazy_external_by_name(graph: gs.Graph) -> dict[str, ExternalValues]:
    out = {}
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant) and isinstance(t._values, ExternalValues):
                out[t.name] = t._values
    return out


def tensor_nbytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = _external_info(t)
        if "length" in info:
            return int(info["length"])
    if t.raw_data:
        return len(t.raw_data)
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    size = _itemsize(t.data_type) or 1
    return n * size


def model_nbytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in all_tensor_protos(model.graph))


def tensor_bytes(t: onnx.TensorProto, lazy: dict[str, ExternalValues]) -> bytes:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        src = lazy.get(t.name)
        if src is None:
            info = _external_info(t)
            raise ModelSaveError(f"tensor '{t.name}' points at external data ('{info.get('location')}') that "
                                 "this graph did not load", node=t.name)
        return src.read_bytes()
    if t.raw_data:
        return t.raw_data
    return onnx.numpy_helper.to_array(t).tobytes()


def clear_payload(t: onnx.TensorProto) -> None:
    for fld in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(fld)
    t.ClearField("raw_data")


def write_sparse_aware(f, data: bytes, chunk: int = 1 << 24) -> None:
    view = memoryview(data)
    zeros = bytes(min(chunk, len(data)))
    for start in range(0, len(view), chunk):
        piece = view[start:start + chunk]
        if piece == zeros[:len(piece)]:
            f.seek(len(piece), os.SEEK_CUR)
        else:
            f.write(piece)


def inline_external(model: onnx.ModelProto, lazy: dict[str, ExternalValues]) -> None:
    """Put the bytes of every external tensor into the proto itself."""
    for t in all_tensor_protos(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            inline_one(t, lazy)


def inline_one(t: onnx.TensorProto, lazy: dict[str, ExternalValues]) -> None:
    payload = tensor_bytes(t, lazy)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = payload
