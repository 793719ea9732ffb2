"""How much each layer's quantization costs: output SQNR with one layer quantized (everything else float),
streamed over the calibration data; what-if graphs with layers returned to float.  The report
(qcompiler/report.py) and the ``mixed-precision`` pass both use it."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import DiagnosticEngine
from ..ir.graph import copy_graph
from ..ir.layers import WEIGHTED_OPS
from ..ir.query import producer
from ..ir.runtime import Session
from ..progress import Progress
from .numerics import db
from .strip import float_inputs


def quantized_layers(g: gs.Graph) -> list[gs.Node]:
    out = []
    for n in g.nodes:
        if n.op in WEIGHTED_OPS and len(n.inputs) > 1:
            src = [producer(i) for i in n.inputs[:2]]
            if any(p is not None and p.op == "DequantizeLinear" for p in src):
                out.append(n)
    return out


def streamed_sqnr(ref: gs.Graph, test: gs.Graph, tensors: list[str], data, *, labels: np.ndarray | None = None,
                  ref_level: str = "all", threads: int | None = None) -> dict[str, Any]:
    """SQNR of ``tensors`` (present in both graphs) over the data, accumulated batch by batch."""
    def exposing(g):
        h = copy_graph(g)
        ts = h.tensors()
        h.outputs = [ts[t] for t in tensors]
        h.cleanup(remove_unused_graph_inputs=False)
        return Session(h, opt_level="basic" if any(n.op == "QuantizeLinear" for n in h.nodes) else ref_level,
                       threads=threads)

    sa, sb = exposing(ref), exposing(test)
    sig = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    correct = total = agree = 0
    try:
        for batch in data.batches(ref, None):
            first, feeds = batch.first, batch.feeds
            a = sa.run({k: v for k, v in feeds.items() if k in sa.input_names})
            b = sb.run({k: v for k, v in feeds.items() if k in sb.input_names})
            for t, x, y in zip(tensors, a, b):
                x64 = x.astype(np.float64)
                sig[t] += float(np.sum(x64 ** 2))
                noise[t] += float(np.sum((x64 - y) ** 2))
            if tensors:
                x, y = a[-1], b[-1]
                if x.ndim == 2:
                    agree += int(np.sum(x.argmax(1) == y.argmax(1)))
                    if labels is not None:
                        correct += int(np.sum(y.argmax(1) == labels[first:first + len(y)]))
                total += x.shape[0] if x.ndim else 1
    finally:
        sa.close()
        sb.close()
    out = {"sqnr": {t: db(sig[t], noise[t]) for t in tensors}, "samples": total}
    if total:
        out["argmax_agreement"] = agree / total
        if labels is not None:
            out["top1"] = 100.0 * correct / total
    return out


def float_all_but(qdq: gs.Graph, reference: gs.Graph, keep: set[str]) -> gs.Graph:
    """A copy of the quantized graph where only the layers in ``keep`` stay quantized: every other Q/DQ
    edge reads the float tensor again and other weights are the FP32 ones."""
    return _unquantize(qdq, reference, lambda n: n.name not in keep)


def float_layers(qdq: gs.Graph, reference: gs.Graph, names: set[str]) -> gs.Graph:
    """A copy of the quantized graph with the layers in ``names`` back in float (their input Q/DQ edges read
    the float tensor, their weights are the FP32 ones); everything else stays as it is."""
    return _unquantize(qdq, reference, lambda n: n.name in names)


def _unquantize(qdq: gs.Graph, reference: gs.Graph, which) -> gs.Graph:
    """A copy of ``qdq`` in which the nodes ``which`` accepts read float inputs (quant/strip.py)."""
    g = copy_graph(qdq)
    ref_nodes = {n.name: n for n in reference.nodes}
    for n in list(g.nodes):
        if n.op not in ("QuantizeLinear", "DequantizeLinear") and which(n):
            float_inputs(n, ref_nodes.get(n.name))
    g.cleanup(remove_unused_graph_inputs=False)
    return g


def layer_sensitivity(qdq: gs.Graph, reference: gs.Graph, data, *, layers: list[gs.Node] | None = None,
                      progress: str = "off", executor: Any = None,
                      diagnostics: DiagnosticEngine | None = None) -> dict[str, float]:
    """Output SQNR with only one layer quantized, for each quantized layer.  With a parallel ``executor`` the
    layers are split into groups, one task each; every evaluation is the same run as here, so the numbers (and
    the ranking) are identical."""
    from .floattype import fp32_view

    qdq = fp32_view(qdq)  # an fp16/bf16 compiled model is measured in float32
    layers = layers if layers is not None else quantized_layers(qdq)
    names = [n.name for n in layers]
    if executor is not None and executor.parallel and len(names) > 1:
        from ..executor import TOO_BIG, map_over_graph

        k = min(len(names), 4 * executor.workers)  # a few groups per worker: the slow layers even out
        bounds = [len(names) * i // k for i in range(k + 1)]
        groups = [names[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        parts = map_over_graph(executor, [qdq, reference], groups, _sensitivity_task, data=data,
                               what="sensitivity", progress=progress,
                               labels=[f"sensitivity of layers {g[0]} .. {g[-1]}" for g in groups])
        if parts is not None:
            merged = {name: v for part in parts for name, v in part.items()}
            return {name: merged[name] for name in names}
        if diagnostics is not None:
            diagnostics.remark("QC404", f"the sensitivity scan runs in this process: {TOO_BIG}")
    return _sensitivity_of(qdq, reference, data, names, progress)


def _sensitivity_of(qdq: gs.Graph, reference: gs.Graph, data, names: list[str], progress: str = "off",
                    threads: int | None = None) -> dict[str, float]:
    outs = [t.name for t in reference.outputs]
    res = {}
    with Progress("sensitivity", total=len(names), unit="layers", mode=progress) as bar:
        for name in names:
            g = float_all_but(qdq, reference, {name})
            r = streamed_sqnr(reference, g, outs[:1], data, threads=threads)
            res[name] = r["sqnr"][outs[0]]
            bar.update(1, note=f"{name}: {res[name]:.1f} dB")
    return res


def _sensitivity_task(inputs, names: list[str]) -> dict[str, float]:
    """A task: the sensitivity of a group of layers."""
    qdq, reference = inputs.graphs
    return _sensitivity_of(qdq, reference, inputs.data, names, threads=inputs.threads)
