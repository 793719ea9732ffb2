"""``qcompiler inspect``: what is in a model file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .ir import graph_to_text, load_model
from .ir.graph import constant_nbytes, get_meta, iter_graphs
from .ir.query import op_histogram


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass
class ModelInfo:
    path: str
    graph: gs.Graph
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    opset: dict[str, int] = field(default_factory=dict)
    ir_version: int | None = None
    producer: str = ""
    ops: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    parameters: int = 0
    weight_bytes: int = 0
    file_bytes: int = 0
    external_files: list[str] = field(default_factory=list)
    qdq: dict[str, Any] = field(default_factory=dict)
    subgraphs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "graph"}

    def text(self) -> str:
        return graph_to_text(self.graph)

    def render(self) -> str:
        lines = [f"model: {self.path}",
                 f"  producer: {self.producer or '?'}   ir_version: {self.ir_version}   opset: " +
                 ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in self.opset.items()),
                 f"  size: {self.file_bytes / 2**20:.2f} MiB on disk" +
                 (f" (+ external: {', '.join(self.external_files)})" if self.external_files else "") +
                 f", {self.parameters:,} parameters ({self.weight_bytes / 2**20:.2f} MiB)",
                 f"  nodes: {self.nodes}" + (f" (+ {self.subgraphs} subgraph(s))" if self.subgraphs else "")]
        lines.append("  inputs:")
        for i in self.inputs:
            lines.append(f"    {i['name']}: {i['dtype']}{i['shape']}")
        lines.append("  outputs:")
        for o in self.outputs:
            lines.append(f"    {o['name']}: {o['dtype']}{o['shape']}")
        q = self.qdq
        lines.append(f"  Q/DQ: {q['quantize']} QuantizeLinear, {q['dequantize']} DequantizeLinear"
                     + (f" ({', '.join(f'{k} {v}' for k, v in q['dtypes'].items())})" if q["dtypes"] else ""))
        ops = sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0]))
        lines.append("  ops: " + ", ".join(f"{k} {v}" for k, v in ops))
        return "\n".join(lines)


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    graph = load_model(path, normalize=False)  # the file as it is
    meta = get_meta(graph)
    info = ModelInfo(path=str(path), graph=graph)
    info.opset = {d or "": int(v) for d, v in ([("", graph.opset)] + [(i.domain, i.version) for i in
                                                                       (graph.import_domains or []) if i.domain])}
    info.ir_version = meta.ir_version
    info.producer = f"{graph.producer_name} {graph.producer_version}".strip()
    for t in graph.inputs:
        info.inputs.append({"name": t.name, "dtype": str(np.dtype(t.dtype)) if t.dtype is not None else "?",
                            "shape": _shape(t.shape)})
    for t in graph.outputs:
        info.outputs.append({"name": t.name, "dtype": str(np.dtype(t.dtype)) if t.dtype is not None else "?",
                             "shape": _shape(t.shape)})
    info.ops = op_histogram(graph)
    info.nodes = len(graph.nodes)
    info.subgraphs = sum(1 for _ in iter_graphs(graph)) - 1
    seen = set()
    for g in iter_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant) and t.name not in seen:
                seen.add(t.name)
                n = int(np.prod(t.shape)) if len(t.shape) else 1
                info.parameters += n
                info.weight_bytes += constant_nbytes(t)
    info.file_bytes = Path(path).stat().st_size
    info.external_files = [os.path.basename(f) for f in meta.external_files]
    dtypes: dict[str, int] = {}
    q = dq = 0
    for n in graph.nodes:
        if n.op == "QuantizeLinear":
            q += 1
            if len(n.inputs) > 2 and n.inputs[2].dtype is not None:
                k = str(np.dtype(n.inputs[2].dtype))
                dtypes[k] = dtypes.get(k, 0) + 1
        elif n.op == "DequantizeLinear":
            dq += 1
    info.qdq = {"quantize": q, "dequantize": dq, "dtypes": dtypes}
    return info
