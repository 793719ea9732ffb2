"""Graph-level facts of the IR: every (sub)graph, names, copies, fingerprints, and what a model carries besides
its graph (:class:`ModelMeta`, on ``graph.qc_meta``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues


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

    from .tensordata import external_ref
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
