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
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..diagnostics import ModelLoadError, ModelSaveError
from .graph import ModelMeta, get_meta, iter_graphs, name_unnamed_nodes, unique_subgraph_names
from .tensordata import (FP8_TYPES, INT4_TYPES, ExternalValues, all_tensor_protos, attach_external,
                         check_tensor_sizes, clear_payload, inline_external, inline_one, lazy_external_by_name,
                         model_nbytes, resolve_external, tensor_bytes, tensor_nbytes, write_sparse_aware)

#: Highest IR version we write (TensorRT 11 parses ONNX IR <= 13; onnxruntime >= 1.20 reads 13).
MAX_IR_VERSION = 13
#: Protobuf refuses to serialize messages of 2 GiB or more; stay well below it.
PROTO_LIMIT = 2**31 - 2**26
#: Tensors at least this large go to the external data file when external data is written.
EXTERNAL_THRESHOLD = 1024


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


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


def import_model(model: onnx.ModelProto, *, base_dir: str | os.PathLike | None = None,
                 source: str | None = None, normalize: bool = True) -> gs.Graph:
    """Build a graphsurgeon graph from a ModelProto (external tensors stay lazy).  With ``normalize`` (the
    default) constants get one representation, initializers (qcompiler/ir/constants.py)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    check_tensor_sizes(model, source or "<model>")
    ext, files = resolve_external(model, base, source or "<model>")
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
        attach_external(graph, ext)
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
    _numpy_dtypes(graph)
    if normalize:
        from .shapes import reconcile_shapes

        unique_subgraph_names(graph)
        reconcile_shapes(graph)  # declared shapes are hints (qcompiler/ir/shapes.py)
    return graph


def _numpy_dtypes(graph: gs.Graph) -> None:
    """Tensors graphsurgeon types with a bare ONNX code (bfloat16, float8, int4: numpy has no such dtype) get the
    ml_dtypes dtype instead, so every ``np.dtype(t.dtype)`` downstream works."""
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Variable) and isinstance(t.dtype, (int, np.integer)):
                try:
                    t.dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(t.dtype)))
                except (KeyError, TypeError, ValueError):
                    pass


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


def load_model(path: str | os.PathLike, *, normalize: bool = True) -> gs.Graph:
    """Load an ONNX model file into a graph.  External data is read lazily; the file is never modified.
    ``normalize=False`` keeps constants in the form the file has (``qcompiler inspect``)."""
    p = Path(path)
    model = read_model_proto(p)
    return import_model(model, base_dir=p.parent, source=str(p), normalize=normalize)


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
    types = {t.data_type for t in all_tensor_protos(model.graph)}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.HasField("tensor_type"):
            types.add(vi.type.tensor_type.elem_type)
    if types & FP8_TYPES:
        ir = max(ir, 9)
    if types & INT4_TYPES:
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
    lazy = lazy_external_by_name(graph) if graph is not None else {}
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
                for t in all_tensor_protos(model.graph):
                    if tensor_nbytes(t) < size_threshold:
                        if t.data_location == onnx.TensorProto.EXTERNAL:
                            # small tensors (axes, shapes, scales) inline, even when the input kept them outside:
                            # onnx shape inference and other tools cannot read external data
                            inline_one(t, lazy)
                        continue
                    pad = (-offset) % 64
                    if pad:
                        f.write(bytes(pad))
                        offset += pad
                    src_lazy = lazy.get(t.name) if t.data_location == onnx.TensorProto.EXTERNAL else None
                    if src_lazy is not None:
                        length = src_lazy.copy_to(f)  # streamed: never holds a multi-GB tensor in memory
                    else:
                        payload = tensor_bytes(t, lazy)
                        write_sparse_aware(f, payload)
                        length = len(payload)
                    clear_payload(t)
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
            inline_external(model, lazy)
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


def graph_from_bytes(blob: bytes) -> gs.Graph:
    """A graph serialized by :func:`serialize_for_runtime`, read back as it is (no normalization)."""
    return import_model(onnx.load_from_string(blob), normalize=False)


def serialize_for_runtime(graph: gs.Graph) -> bytes | None:
    """Serialized model with all weights inline, or None when it would exceed the protobuf limit."""
    model = export_model(graph)
    if model_nbytes(model) > PROTO_LIMIT:
        return None
    inline_external(model, lazy_external_by_name(graph))
    return model.SerializeToString(deterministic=True)
