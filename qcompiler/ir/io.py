"""Loading and saving models: the one place where ONNX protos become graphs and back.

Choices made here (see docs/architecture.md):

* The in-memory IR is an onnx-graphsurgeon ``gs.Graph``.  Model-level data that graphsurgeon drops
  (metadata_props, doc_string, the source path, the external-data layout) travels on the graph
  as ``graph.qc_meta`` (a :class:`ModelMeta`).
* Weights stored as external data are never read at load time.  Each such initializer becomes a
  graphsurgeon ``LazyValues`` subclass that reads its bytes from the source file on first use, so
  a 3 GB model loads in milliseconds and a pass that does not touch a weight never reads it.
* ``save_model`` writes to temporary files in the destination folder and renames them into place
  (data file first, model last): a crash or an error leaves no half-written output.  External
  data is streamed tensor by tensor (runs of zeros are skipped with ``seek`` so sparse inputs stay
  sparse), so models over the 2 GB protobuf limit round-trip.
* ``ir_version`` is set explicitly: onnx >= 1.23 stamps IR 14, which TensorRT 11 and older
  onnxruntime builds refuse.  We write the smallest IR that the opset and the element types in
  the model need, never above :data:`MAX_IR_VERSION`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..diagnostics import ModelLoadError, ModelSaveError

#: Highest IR version we write (TensorRT 11 parses ONNX IR <= 13; onnxruntime >= 1.20 reads 13).
MAX_IR_VERSION = 13
#: Protobuf refuses to serialize messages of 2 GiB or more; stay well below it.
PROTO_LIMIT = 2**31 - 2**26
#: Tensors at least this large go to the external data file when external data is written.
EXTERNAL_THRESHOLD = 1024

_FP8_TYPES = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
              onnx.TensorProto.FLOAT8E5M2FNUZ}
_INT4_TYPES = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclass
class ModelMeta:
    """What a model carries besides its graph."""

    path: str | None = None  # file the model was loaded from (never written to)
    ir_version: int | None = None
    metadata_props: dict[str, str] = field(default_factory=dict)
    doc_string: str = ""
    domain: str = ""
    model_version: int = 0
    external_files: tuple[str, ...] = ()  # absolute paths of external data files read from
    external_location: str | None = None  # relative name of the (single) external data file

    def copy(self) -> "ModelMeta":
        return ModelMeta(self.path, self.ir_version, dict(self.metadata_props), self.doc_string, self.domain,
                         self.model_version, tuple(self.external_files), self.external_location)


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
                _write_sparse_aware(f, piece)
                left -= len(piece)
        return self.length


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _all_tensor_protos(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    """Initializers and tensor-valued attributes, in this graph and every subgraph."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensor_protos(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensor_protos(g)


def read_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse a model file without reading its external data; raise ModelLoadError on bad input."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file '{p}' does not exist", code="QC201", location=str(p),
                             hint="check the path; qcompiler reads .onnx model files")
    if p.is_dir():
        raise ModelLoadError(f"'{p}' is a directory, not an ONNX model file", code="QC201", location=str(p))
    size = p.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file '{p}' is empty", code="QC202", location=str(p),
                             hint="re-export the model; the file may have been truncated by an interrupted copy")
    try:
        with open(p, "rb") as f:
            data = f.read()
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"'{p}' is not a valid ONNX model: the protobuf cannot be parsed ({exc})",
                             location=str(p),
                             hint="the file is truncated, corrupted or not an ONNX model; re-export it") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read '{p}': {exc.strerror}", code="QC201", location=str(p)) from None
    if not model.HasField("graph") or (model.ir_version == 0 and not model.opset_import):
        raise ModelLoadError(
            f"'{p}' parses as protobuf but is not an ONNX model (no graph / ir_version / opset_import)",
            location=str(p), hint="pass the .onnx model file itself, not a tensor, graph or other protobuf")
    if len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise ModelLoadError(f"'{p}' holds an empty graph (no nodes, no outputs)", location=str(p),
                             hint="re-export the model")
    return model


def _resolve_external(model: onnx.ModelProto, base_dir: Path,
                      source: str) -> tuple[dict[str, tuple[str, int, int]], set[str]]:
    """Map tensor name -> (absolute file, offset, length) for every external tensor; check the files."""
    resolved: dict[str, tuple[str, int, int]] = {}
    files: set[str] = set()
    base_resolved = base_dir.resolve()
    for t in _all_tensor_protos(model.graph):
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
        if t.data_type in _INT4_TYPES:
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
    if data_type in _INT4_TYPES:
        return None
    return np.dtype(np_dtype).itemsize


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def check_tensor_sizes(model: onnx.ModelProto, source: str) -> None:
    """Every inline tensor holds exactly as much data as its dims and element type say (onnx.checker does
    not look; a mismatch would otherwise surface deep inside a pass)."""
    for t in _all_tensor_protos(model.graph):
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
            if t.data_type in _INT4_TYPES:
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


def import_model(model: onnx.ModelProto, *, base_dir: str | os.PathLike | None = None,
                 source: str | None = None, normalize: bool = True) -> gs.Graph:
    """Build a graphsurgeon graph from a ModelProto (external tensors stay lazy).  With ``normalize`` (the
    default) constants get one representation, initializers (qcompiler/ir/constants.py)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    check_tensor_sizes(model, source or "<model>")
    ext, files = _resolve_external(model, base, source or "<model>")
    try:
        graph = gs.import_onnx(model)
    except Exception as exc:  # graphsurgeon raises plain exceptions on malformed graphs
        raise ModelLoadError(f"cannot import the graph of '{source or '<model>'}': {exc}", location=source,
                             hint="run `python -c \"import onnx; onnx.checker.check_model('MODEL')\"` for "
                                  "details") from None
    if normalize:
        from .constants import normalize_constants

        normalize_constants(graph)
    if ext:
        _attach_external(graph, ext)
    meta = ModelMeta(
        path=str(Path(source).resolve()) if source and Path(source).exists() else None,
        ir_version=model.ir_version or None,
        metadata_props={p.key: p.value for p in model.metadata_props},
        doc_string=model.doc_string,
        domain=model.domain,
        model_version=model.model_version,
        external_files=tuple(sorted(files)),
        external_location=None,
    )
    if files:
        locs = {os.path.relpath(f, base.resolve()) for f in files}
        meta.external_location = sorted(locs)[0] if len(locs) == 1 else None
    graph.qc_meta = meta
    name_unnamed_nodes(graph)
    if normalize:
        from .shapes import reconcile_shapes

        unique_subgraph_names(graph)
        reconcile_shapes(graph)  # declared shapes are hints (qcompiler/ir/shapes.py)
    return graph


def normalize_graph(graph: gs.Graph) -> list[str]:
    """What ``import_model(normalize=True)`` does after import, for a graph loaded as the file is: constants
    become initializers (qcompiler/ir/constants.py), names inside subgraphs become unique model-wide, and
    declared shapes that inference contradicts are corrected (qcompiler/ir/shapes.py).  Returns one line per
    corrected declaration."""
    from .constants import normalize_constants
    from .shapes import reconcile_shapes

    normalize_constants(graph)
    unique_subgraph_names(graph)
    return reconcile_shapes(graph)


def unique_subgraph_names(graph: gs.Graph) -> int:
    """Make every node name and every tensor name defined inside a subgraph unique in the whole model.

    ONNX lets sibling bodies (the two branches of an If) reuse names; qcompiler keys calibration statistics,
    plans and diagnostics by name, so a later duplicate is renamed (``name_1``, ...).  Top-level names (the
    model's interface) never change, nor do outer-scope references; renaming a tensor local to a body changes
    nothing it computes.  Returns the number of renamed tensors and nodes."""
    seen: set[int] = set()
    tensor_names: set[str] = set()
    node_names: set[str] = set()
    renamed = 0

    def fresh(base: str, used: set[str]) -> str:
        k = 1
        while f"{base}_{k}" in used:
            k += 1
        return f"{base}_{k}"

    for g in iter_graphs(graph):
        for t in list(g.inputs) + list(g.tensors().values()):
            if id(t) in seen or not t.name:
                continue
            seen.add(id(t))
            if t.name in tensor_names and g is not graph:
                t.name = fresh(t.name, tensor_names)
                renamed += 1
            tensor_names.add(t.name)
        for n in g.nodes:
            if n.name in node_names and g is not graph:
                n.name = fresh(n.name, node_names)
                renamed += 1
            node_names.add(n.name)
    return renamed


def _attach_external(graph: gs.Graph, by_name: dict[str, tuple[str, int, int]]) -> None:
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            # keyed by the proto's own name: a Constant node's tensor is named after the node's output now
            if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) \
                    and not isinstance(t._values, ExternalValues) and t._values.tensor.name in by_name:
                f, off, length = by_name[t._values.tensor.name]
                t._values = ExternalValues(t._values.tensor, f, off, length)


def load_model(path: str | os.PathLike, *, normalize: bool = True) -> gs.Graph:
    """Load an ONNX model file into a graph.  External data is read lazily; the file is never modified.
    ``normalize=False`` keeps constants in the form the file has (``qcompiler inspect``)."""
    p = Path(path)
    model = read_model_proto(p)
    return import_model(model, base_dir=p.parent, source=str(p), normalize=normalize)


def iter_graphs(graph: gs.Graph) -> Iterable[gs.Graph]:
    """The graph and, recursively, every subgraph held in node attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from iter_graphs(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    if isinstance(v, gs.Graph):
                        yield from iter_graphs(v)


def name_unnamed_nodes(graph: gs.Graph) -> int:
    """Give every unnamed node a deterministic unique name (``<op>_<k>``) so diagnostics can name it."""
    count = 0
    for g in iter_graphs(graph):
        used = {n.name for n in g.nodes if n.name}
        counters: dict[str, int] = {}
        for n in g.nodes:
            if n.name:
                continue
            k = counters.get(n.op, 0)
            while f"{n.op}_{k}" in used:
                k += 1
            n.name = f"{n.op}_{k}"
            counters[n.op] = k + 1
            used.add(n.name)
            count += 1
    return count


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


def constant_nbytes(t: gs.Constant) -> int:
    """Bytes a constant's values take, without reading external or proto-held data."""
    v = t._values
    if isinstance(v, np.ndarray):
        return int(v.nbytes)
    return int(getattr(v, "nbytes", 0))


def constant_type_name(t: gs.Constant) -> str:
    """numpy-style name of a constant's element type (``int8``, ``float8_e4m3fn``, ...) without loading it."""
    v = t._values
    if isinstance(v, LazyValues):
        return onnx_type_name(v.tensor.data_type) or "undefined"
    return np.asarray(t.values).dtype.name


def onnx_type_name(code: int) -> str | None:
    """numpy-style name of an ONNX TensorProto element type code (None for UNDEFINED or unknown codes)."""
    if not code:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(code))).name
    except (KeyError, TypeError, ValueError):
        return None


def graph_fingerprint(graph: gs.Graph) -> str:
    """Content hash of structure, attributes, value_info and weight values (unread external data is hashed by
    its location, so fingerprinting never reads a multi-GB file)."""
    import hashlib

    from .text import graph_to_text

    h = hashlib.sha1(graph_to_text(graph).encode())
    for g in iter_graphs(graph):
        for t in g.tensors().values():  # value_info: intermediate dtypes and shapes
            if isinstance(t, gs.Variable):
                h.update(f"{t.name}:{t.dtype}:{t.shape};".encode())
        for t in sorted((t for t in g.tensors().values() if isinstance(t, gs.Constant)), key=lambda t: t.name):
            h.update(t.name.encode())
            ref = external_ref(t)
            if ref is not None:
                h.update(f"{ref[0]}:{ref[1]}:{ref[2]}".encode())
            else:
                h.update(np.ascontiguousarray(t.values).tobytes())
    return h.hexdigest()


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """A structural copy that shares weight arrays (passes replace arrays, never mutate them)."""
    new = graph.copy()
    new.producer_name = graph.producer_name
    new.producer_version = graph.producer_version
    meta = getattr(graph, "qc_meta", None)
    new.qc_meta = meta.copy() if meta is not None else ModelMeta()
    return new


def get_meta(graph: gs.Graph) -> ModelMeta:
    meta = getattr(graph, "qc_meta", None)
    if meta is None:
        meta = ModelMeta(ir_version=graph.ir_version)
        graph.qc_meta = meta
    return meta


# --------------------------------------------------------------------------------------------
# exporting
# --------------------------------------------------------------------------------------------


def _opset_ir(opset: int) -> int:
    best = None
    for _, ir, op, *_ in onnx.helper.VERSION_TABLE:
        if op >= opset:
            best = ir if best is None else min(best, ir)
    return best if best is not None else MAX_IR_VERSION


def required_ir_version(model: onnx.ModelProto) -> int:
    """Smallest IR version that the model's default-domain opset and element types need."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    ir = _opset_ir(opset)
    types = {t.data_type for t in _all_tensor_protos(model.graph)}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.HasField("tensor_type"):
            types.add(vi.type.tensor_type.elem_type)
    if types & _FP8_TYPES:
        ir = max(ir, 9)
    if types & _INT4_TYPES:
        ir = max(ir, 10)
    if model.functions:
        ir = max(ir, 8)
    return ir


def choose_ir_version(model: onnx.ModelProto, previous: int | None) -> int:
    need = required_ir_version(model)
    if previous and previous <= MAX_IR_VERSION:
        return min(max(previous, need), MAX_IR_VERSION)
    return min(need, MAX_IR_VERSION)


def _prepare_constants(graph: gs.Graph) -> None:
    """Before export: a constant whose external values were read (a pass touched ``.values``: graphsurgeon keeps
    the loaded array but also the EXTERNAL mark, which would export a tensor pointing nowhere) is in memory now;
    4-bit (and other sub-byte) numpy constants go to the exporter as ONNX protos (graphsurgeon would write one
    byte per element, onnx packs two)."""
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            if not isinstance(t, gs.Constant):
                continue
            if t.data_location is not None and not isinstance(t._values, ExternalValues):
                t.data_location = None
            if isinstance(t._values, np.ndarray) and t._values.dtype.name in ("int4", "uint4", "float4_e2m1fn"):
                t._values = LazyValues(onnx.numpy_helper.from_array(t._values, t.name))


def export_model(graph: gs.Graph, *, do_type_check: bool = False) -> onnx.ModelProto:
    """Turn a graph back into a ModelProto.  Lazily loaded external tensors stay external (no bytes)."""
    meta = get_meta(graph)
    _prepare_constants(graph)
    try:
        model = gs.export_onnx(graph, do_type_check=do_type_check)
    except Exception as exc:
        raise ModelSaveError(f"cannot export the graph: {exc}", code="QC203") from None
    model.ir_version = choose_ir_version(model, meta.ir_version)
    if meta.doc_string:
        model.doc_string = meta.doc_string
    if meta.domain:
        model.domain = meta.domain
    if meta.model_version:
        model.model_version = meta.model_version
    del model.metadata_props[:]
    for k in sorted(meta.metadata_props):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, meta.metadata_props[k]
    # graphsurgeon writes an empty "producer" when the graph had none; keep what we loaded
    if not model.producer_name:
        model.producer_name = "qcompiler"
    return model


def _lazy_external_by_name(graph: gs.Graph) -> dict[str, ExternalValues]:
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
    return sum(tensor_nbytes(t) for t in _all_tensor_protos(model.graph))


def _tensor_bytes(t: onnx.TensorProto, lazy: dict[str, ExternalValues]) -> bytes:
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


def _clear_payload(t: onnx.TensorProto) -> None:
    for fld in ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(fld)
    t.ClearField("raw_data")


def _write_sparse_aware(f, data: bytes, chunk: int = 1 << 24) -> None:
    view = memoryview(data)
    zeros = bytes(min(chunk, len(data)))
    for start in range(0, len(view), chunk):
        piece = view[start:start + chunk]
        if piece == zeros[:len(piece)]:
            f.seek(len(piece), os.SEEK_CUR)
        else:
            f.write(piece)


def _inline_external(model: onnx.ModelProto, lazy: dict[str, ExternalValues]) -> None:
    """Put the bytes of every external tensor into the proto itself."""
    for t in _all_tensor_protos(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _inline_one(t, lazy)


def _inline_one(t: onnx.TensorProto, lazy: dict[str, ExternalValues]) -> None:
    payload = _tensor_bytes(t, lazy)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.DEFAULT
    t.raw_data = payload


def writable_parent(out: Path) -> Path:
    """The folder ``out`` goes into; a ModelSaveError when it is missing or not writable."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ModelSaveError(f"output folder '{parent}' does not exist", location=str(out),
                             hint="create it first or choose another -o path")
    if not os.access(parent, os.W_OK):
        raise ModelSaveError(f"output folder '{parent}' is not writable", location=str(out),
                             hint="choose a writable -o path")
    return parent


def save_model(graph_or_model: gs.Graph | onnx.ModelProto, path: str | os.PathLike, *,
               external_data: str = "auto", location: str | None = None,
               size_threshold: int = EXTERNAL_THRESHOLD, source_graph: gs.Graph | None = None) -> Path:
    """Write a model atomically.

    external_data: ``auto`` (external when the input had external data or the model would not fit
    in one protobuf), ``always`` or ``never``.  ``location`` names the data file (relative to the model;
    default ``<model file name>.data``).  Returns the path written.
    """
    out = Path(path)
    graph = graph_or_model if isinstance(graph_or_model, gs.Graph) else source_graph
    meta = get_meta(graph) if graph is not None else ModelMeta()
    model = export_model(graph_or_model) if isinstance(graph_or_model, gs.Graph) else graph_or_model
    lazy = _lazy_external_by_name(graph) if graph is not None else {}
    if external_data not in ("auto", "always", "never"):
        raise ModelSaveError(f"external_data must be auto, always or never, not '{external_data}'", code="QC107")

    # never overwrite the model we read, nor the data files it points at
    protected = set(meta.external_files)
    if meta.path:
        protected.add(meta.path)
    out_resolved = str(out.resolve())
    if out_resolved in protected:
        raise ModelSaveError(f"refusing to overwrite the input model '{out}'", location=str(out),
                             hint="choose a different output path (-o)")

    total = model_nbytes(model)
    use_external = (external_data == "always" or
                    (external_data == "auto" and (bool(meta.external_files) or total > PROTO_LIMIT)))
    if external_data == "never" and total > PROTO_LIMIT:
        raise ModelSaveError(f"the model holds {total / 2**30:.2f} GiB of weights, over protobuf's 2 GiB limit",
                             location=str(out), hint="save with external data (--external-data always)")

    parent = writable_parent(out)

    tmp_files: list[str] = []
    try:
        data_tmp = None
        data_final = None
        if use_external:
            loc = location or (out.name + ".data")
            data_final = parent / loc
            if str(data_final.resolve()) in protected:
                raise ModelSaveError(f"the external data file '{data_final}' belongs to the input model",
                                     location=str(out), hint="choose a different output name or --external-location")
            fd, data_tmp = tempfile.mkstemp(prefix=".qc-", suffix=".data.tmp", dir=parent)
            tmp_files.append(data_tmp)
            with os.fdopen(fd, "wb") as f:
                offset = 0
                for t in _all_tensor_protos(model.graph):
                    if tensor_nbytes(t) < size_threshold:
                        if t.data_location == onnx.TensorProto.EXTERNAL:
                            # small tensors (axes, shapes, scales) inline, even when the input kept them outside:
                            # onnx shape inference and other tools cannot read external data
                            _inline_one(t, lazy)
                        continue
                    pad = (-offset) % 64
                    if pad:
                        f.write(bytes(pad))
                        offset += pad
                    src_lazy = lazy.get(t.name) if t.data_location == onnx.TensorProto.EXTERNAL else None
                    if src_lazy is not None:
                        length = src_lazy.copy_to(f)  # streamed: never holds a multi-GB tensor in memory
                    else:
                        payload = _tensor_bytes(t, lazy)
                        _write_sparse_aware(f, payload)
                        length = len(payload)
                    _clear_payload(t)
                    del t.external_data[:]
                    t.data_location = onnx.TensorProto.EXTERNAL
                    for k, v in (("location", loc), ("offset", str(offset)), ("length", str(length))):
                        e = t.external_data.add()
                        e.key, e.value = k, v
                    offset += length
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        else:
            _inline_external(model, lazy)
        if model.ByteSize() > PROTO_LIMIT:
            raise ModelSaveError("the model proto is over 2 GiB even without weights", location=str(out))
        blob = model.SerializeToString(deterministic=True)
        fd, model_tmp = tempfile.mkstemp(prefix=".qc-", suffix=".onnx.tmp", dir=parent)
        tmp_files.append(model_tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        if data_tmp is not None:
            assert data_final is not None
            os.chmod(data_tmp, 0o644)
            os.replace(data_tmp, data_final)
            tmp_files.remove(data_tmp)
        os.chmod(model_tmp, 0o644)
        os.replace(model_tmp, out)
        tmp_files.remove(model_tmp)
    except ModelSaveError:
        raise
    except OSError as exc:
        raise ModelSaveError(f"cannot write '{out}': {exc.strerror or exc}", location=str(out),
                             hint="check the output folder and free disk space") from None
    finally:
        for tmp in tmp_files:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return out


def put_graph(executor: Any, graph: gs.Graph) -> Any | None:
    """``graph`` serialized once (weights inline) and put where the executor's tasks read it
    (:func:`graph_from_ref`); None when it is over the protobuf limit (the caller then works in this process)."""
    blob = serialize_for_runtime(graph)
    return None if blob is None else executor.put(blob)


def graph_from_ref(ref: Any) -> gs.Graph:
    """In a task: the graph :func:`put_graph` shared (fetched from Ray's object store, or the bytes themselves)."""
    from ..executor import resolve

    return import_model(onnx.load_from_string(resolve(ref)), normalize=False)


def serialize_for_runtime(graph: gs.Graph) -> bytes | None:
    """Serialized model with all weights inline, or None when it would exceed the protobuf limit."""
    model = export_model(graph)
    if model_nbytes(model) > PROTO_LIMIT:
        return None
    _inline_external(model, _lazy_external_by_name(graph))
    return model.SerializeToString(deterministic=True)
