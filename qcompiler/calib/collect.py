"""Streaming statistics collection through one onnxruntime session.

The model is augmented, not copied tensor by tensor into Python:

* min/max observers (``min_max``, ``moving_average``) add ``ReduceMin``/``ReduceMax`` nodes (over all
  axes, or all but the channel axis) so only a few numbers per tensor leave onnxruntime;
* histogram observers expose the tensor itself; it is read through ``run_with_ort_values`` (no copy),
  histogrammed, and dropped.

The model's own outputs are removed from the augmented graph, so onnxruntime runs only what the
statistics need.  Per batch, the memory held is one batch of inputs, the session's working set and
the exposed tensors of that batch; nothing grows with the number of samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..diagnostics import CalibrationError, DiagnosticEngine
from ..ir.edit import Namer
from ..ir.io import copy_graph
from ..ir.query import known_nonnegative, rank
from ..ir.runtime import Session
from ..ir.shapes import infer_shapes
from .data import CalibData
from .observers import ObserverConfig, TensorStats


@dataclass
class CollectOptions:
    batch_size: int | None = None
    threads: int | None = None
    opt_level: str = "all"
    hist_sample: int = 1  # histogram every k-th element (1: all)
    progress: bool = False


@dataclass
class _Probe:
    name: str
    cfg: ObserverConfig
    mode: str  # reduce | expose | input
    outputs: tuple[str | None, ...] = ()


def _reduce_nodes(g: gs.Graph, t: gs.Tensor, axis: int | None, names: Namer, opset: int) -> tuple[str | None, str]:
    """ReduceMin/ReduceMax outputs for ``t``.  Tensors that are non-negative by construction (Relu, ...)
    get only ReduceMax: their lower bound is 0 (ranges always include 0), which halves the cost."""
    outs = []
    ops = ("ReduceMax",) if known_nonnegative(t) else ("ReduceMin", "ReduceMax")
    for op in ops:
        out = gs.Variable(names(f"__qc_{op[6:].lower()}_{t.name}"), dtype=np.float32)
        attrs = {"keepdims": 0}
        inputs = [t]
        if axis is not None:
            r = rank(t)
            axes = [i for i in range(r) if i != axis % r]
            if opset >= 18:
                inputs = [t, gs.Constant(names("__qc_axes"), np.asarray(axes, dtype=np.int64))]
            else:
                attrs["axes"] = axes
        g.nodes.append(gs.Node(op, names(f"__qc_{op}"), attrs=attrs, inputs=inputs, outputs=[out]))
        outs.append(out)
    g.outputs.extend(outs)
    if len(outs) == 1:
        return None, outs[0].name
    return outs[0].name, outs[1].name


def build_probe_graph(graph: gs.Graph, requests: dict[str, ObserverConfig]) -> tuple[gs.Graph, list[_Probe]]:
    g = copy_graph(graph)
    tensors = g.tensors()
    inputs = {t.name for t in g.inputs}
    names = Namer(g)
    opset = int(g.opset or 13)
    need_rank = [n for n, c in requests.items() if c.axis is not None and n in tensors and rank(tensors[n]) is None]
    if need_rank:
        infer_shapes(g)
    probes: list[_Probe] = []
    g.outputs = []
    for name, cfg in requests.items():
        t = tensors.get(name)
        if t is None:
            raise CalibrationError(f"cannot observe '{name}': no such tensor in the graph", code="QC405")
        if isinstance(t, gs.Constant):
            raise CalibrationError(f"'{name}' is a constant; constants are not calibrated", code="QC405")
        if t.dtype is not None and np.dtype(t.dtype).kind != "f":
            raise CalibrationError(f"cannot calibrate '{name}': its type is {np.dtype(t.dtype)}, not float",
                                   code="QC405")
        if cfg.axis is not None and rank(t) is None:
            raise CalibrationError(f"per-channel statistics for '{name}' need its rank, which shape inference "
                                   "could not find", code="QC405", hint="fix input dims with --input-shape")
        if name in inputs:
            probes.append(_Probe(name, cfg, "input"))
        elif cfg.needs_hist():
            g.outputs.append(t)
            probes.append(_Probe(name, cfg, "expose", (name,)))
        else:
            probes.append(_Probe(name, cfg, "reduce", _reduce_nodes(g, t, cfg.axis, names, opset)))
    if not g.outputs:  # only graph inputs observed: keep something to run
        g.outputs = [g.tensors()[o.name] for o in graph.outputs]
    g.cleanup(remove_unused_graph_inputs=False)
    return g, probes


def _np_minmax(x: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        return np.asarray(x.min(), np.float64), np.asarray(x.max(), np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x.min(axis=axes).astype(np.float64), x.max(axis=axes).astype(np.float64)


def collect(graph: gs.Graph, requests: dict[str, ObserverConfig], data: CalibData, *,
            diagnostics: DiagnosticEngine | None = None, options: CollectOptions | None = None,
            timings: dict[str, float] | None = None) -> dict[str, TensorStats]:
    """One pass over ``data``; returns the statistics of every requested tensor."""
    opts = options or CollectOptions()
    t0 = time.perf_counter()
    g, probes = build_probe_graph(graph, requests)
    sess = Session(g, opt_level=opts.opt_level, threads=opts.threads)
    t_build = time.perf_counter() - t0
    out_names = sess.output_names
    index = {n: i for i, n in enumerate(out_names)}
    stats = {p.name: TensorStats(p.name, p.cfg) for p in probes}
    need_feed = set(sess.input_names)
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(unit="sample", desc="calibrate", leave=False, dynamic_ncols=True)
    t_run = t_stats = 0.0
    samples = 0
    try:
        for first, feeds in data.batches(graph, diagnostics, opts.batch_size):
            n = next(iter(feeds.values())).shape[0] if feeds else 0
            ta = time.perf_counter()
            ort_feeds = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()
                         if k in need_feed}
            try:
                vals = sess.sess.run_with_ort_values(out_names, ort_feeds)
            except Exception as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CalibrationError(f"onnxruntime failed on the batch starting at sample {first}: {msg}",
                                       code="QC406", hint="check that the data matches the model inputs") from None
            tb = time.perf_counter()
            t_run += tb - ta
            for p in probes:
                st = stats[p.name]
                if p.mode == "reduce":
                    mx = vals[index[p.outputs[1]]].numpy()
                    mn = np.zeros_like(mx) if p.outputs[0] is None else vals[index[p.outputs[0]]].numpy()
                    if not (np.all(np.isfinite(mn)) and np.all(np.isfinite(mx))):
                        raise CalibrationError(f"tensor '{p.name}' takes non-finite values on the batch starting at "
                                               f"sample {first}", code="QC406",
                                               hint="the model overflows or divides by zero on this data")
                    st.update_minmax(mn, mx, n)
                    continue
                x = feeds[p.name] if p.mode == "input" else vals[index[p.outputs[0]]].numpy()
                mn, mx = _np_minmax(x, p.cfg.axis)
                if not (np.all(np.isfinite(mn)) and np.all(np.isfinite(mx))):
                    raise CalibrationError(f"tensor '{p.name}' takes non-finite values on the batch starting at "
                                           f"sample {first}", code="QC406")
                st.update_minmax(mn, mx, n)
                if p.cfg.needs_hist():
                    flat = x.reshape(-1)
                    if opts.hist_sample > 1:
                        flat = flat[:: opts.hist_sample]
                    st.update_hist(flat, float(np.min(mn)), float(np.max(mx)))
            del vals
            t_stats += time.perf_counter() - tb
            samples += n
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
        sess.close()
    if timings is not None:
        timings["calibrate.build"] = timings.get("calibrate.build", 0.0) + t_build
        timings["calibrate.run"] = timings.get("calibrate.run", 0.0) + t_run
        timings["calibrate.observe"] = timings.get("calibrate.observe", 0.0) + t_stats
    for st in stats.values():
        st.extra["samples"] = samples
    return stats


def plain_inference_seconds(graph: gs.Graph, data: CalibData, *, threads: int | None = None,
                            opt_level: str = "all", batch_size: int | None = None) -> float:
    """Seconds onnxruntime needs for the model alone on the same batches (the calibration floor)."""
    sess = Session(graph, opt_level=opt_level, threads=threads)
    names = set(sess.input_names)
    total = 0.0
    try:
        for _, feeds in data.batches(graph, None, batch_size):
            f = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items() if k in names}
            t = time.perf_counter()
            sess.sess.run_with_ort_values(sess.output_names, f)
            total += time.perf_counter() - t
    finally:
        sess.close()
    return total


def merge_stats(*shards: dict[str, TensorStats]) -> dict[str, TensorStats]:
    """Combine statistics of consecutive shards of the data (exact for min/max and histograms)."""
    out: dict[str, TensorStats] = {}
    for shard in shards:
        for name, st in shard.items():
            out[name] = st if name not in out else out[name].merge(st)
    return out
