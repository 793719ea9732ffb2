"""Streaming statistics collection through one onnxruntime session.

The observed tensors become outputs of a copy of the model and are read through
``run_with_ort_values`` (numpy views of onnxruntime's buffers, no copy); min/max (per tensor or per
channel) and, for histogram observers, a histogram are computed on them and they are dropped.
Tensors that are non-negative by construction (Relu outputs, ...) only need their max.  (In-graph
ReduceMin/ReduceMax nodes were measured too: they cost more than exposing on the benchmark models,
docs/benchmarks.md.)

The model's own outputs are removed from the augmented graph, so onnxruntime runs only what the
statistics need.  Batches are run in slices whose exposed tensors fit a small budget
(``run_budget_mib``): exposed tensors are fresh buffers onnxruntime cannot reuse, and once they
outgrow the caches the run slows down well beyond plain inference.  Per batch, the memory held is
one batch of inputs, the session's working set and the exposed tensors of that batch; nothing grows
with the number of samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..diagnostics import CalibrationError, DiagnosticEngine
from ..ir.edit import Namer
from ..ir.graph import copy_graph, iter_graphs
from ..ir.query import known_nonnegative, rank
from ..ir.runtime import Session
from ..ir.shapes import infer_shapes
from ..progress import Progress
from .data import CalibData, static_dim
from .observers import ObserverConfig, TensorStats


#: ``hist_sample=0`` (auto): histogram at most this many elements of each sample of each tensor
AUTO_SAMPLE_CAP = 1 << 13

#: Exposed tensors of one onnxruntime run, in MiB.  Every exposed tensor is a fresh buffer that
#: onnxruntime cannot reuse, so a batch whose exposed tensors outgrow the CPU caches runs far slower
#: than plain inference (ResNet-50, batch 8, 69 tensors: +45%); slicing the batch keeps them in cache
#: (+10%), docs/benchmarks.md.
DEFAULT_RUN_BUDGET_MIB = 32.0


@dataclass
class CollectOptions:
    batch_size: int | None = None
    threads: int | None = None
    opt_level: str = "all"
    hist_sample: int = 0  # histogram every k-th element of each sample (0: auto, 1: all)
    progress: str = "off"  # bar | lines | off (qcompiler/progress.py)
    #: run onnxruntime on slices of each batch whose exposed tensors total at most this many MiB
    #: (0: whole batches).  Statistics do not depend on it (see :func:`sample_view`).
    run_budget_mib: float = DEFAULT_RUN_BUDGET_MIB
    #: also keep the model's own outputs (and the feeds) of the first batches holding this many samples: the
    #: FP32 reference the output guard compares with, computed by this very run (at most KEEP_BUDGET_MIB)
    keep_samples: int = 0


#: the most MiB of feeds and outputs ``keep_samples`` keeps
KEEP_BUDGET_MIB = 256.0


def auto_stride(size: int, cap: int = AUTO_SAMPLE_CAP) -> int:
    """The histogram stride for a sample of ``size`` elements: the smallest k >= size / cap that shares no
    factor with ``size``.  A stride that divides the layout aliases with it: every 7th element of a 7x7
    feature map is always column 0, so the histogram would see only border pixels and miss the tail
    (EfficientNet-B0: 12.9 dB instead of 26.5 dB of output SQNR with percentile).  Coprime with the sample
    size means coprime with W, H*W and C, so the sampled positions walk over every row, column and
    channel."""
    k = max(1, -(-size // cap))
    if k == 1:
        return 1
    while math.gcd(k, size) != 1:
        k += 1
    return k


def sample_view(x: np.ndarray, n: int, k: int, batch_axis: bool = True) -> np.ndarray:
    """The elements of each sample that go into the histogram: every k-th element *within each sample*
    (k = 0: :func:`auto_stride`, at most about AUTO_SAMPLE_CAP per sample).  The selection depends only on
    the sample, never on how samples are batched, so histograms stay identical for any batch size.  A feed
    without a batch axis is one sample."""
    if not batch_axis:
        per = x.reshape(1, -1)
    elif n <= 0 or x.ndim == 0 or x.shape[0] != n:
        return x.reshape(-1)
    else:
        per = x.reshape(n, -1)
    if k == 0:
        k = auto_stride(per.shape[1])
    return per if k == 1 else per[:, ::k]


@dataclass
class _Probe:
    name: str
    cfg: ObserverConfig
    mode: str  # expose | input
    nonneg: bool = False  # >= 0 by construction: only the max is computed, the lower bound is 0
    output: str = ""  # the graph output that carries it (the tensor itself at top level)
    loops: int = 0  # Loop/Scan levels it crossed: each stacks the iterations on a new leading axis

    @property
    def axis(self) -> int | None:
        a = self.cfg.axis
        return a + self.loops if a is not None and a >= 0 else a


def _subgraph_parents(graph: gs.Graph) -> dict[int, tuple[gs.Node, gs.Graph, str]]:
    """id(subgraph) -> (the node holding it, that node's graph, the attribute name)."""
    out: dict[int, tuple[gs.Node, gs.Graph, str]] = {}
    for g in iter_graphs(graph):
        for n in g.nodes:
            for key, v in n.attrs.items():
                if isinstance(v, gs.Graph):
                    out[id(v)] = (n, g, key)
    return out


def _local_tensors(graph: gs.Graph) -> dict[str, tuple[gs.Tensor, gs.Graph]]:
    """name -> (tensor, the subgraph defining it) for tensors defined inside subgraphs (body inputs and node
    outputs; names are unique model-wide after import, qcompiler.ir.io.unique_subgraph_names)."""
    out: dict[str, tuple[gs.Tensor, gs.Graph]] = {}
    for g in list(iter_graphs(graph))[1:]:
        for t in g.inputs:
            out.setdefault(t.name, (t, g))
        for n in g.nodes:
            for t in n.outputs:
                if t.name:
                    out.setdefault(t.name, (t, g))
    return out


def _thread_out(top: gs.Graph, t: gs.Tensor, where: gs.Graph, parents, names: Namer) -> tuple[gs.Tensor, int]:
    """Make the value of ``t`` (defined in the subgraph ``where``) an output of the top graph, exactly: through
    extra branch outputs of each enclosing If (the other branch returns an empty tensor) and extra scan outputs
    of each enclosing Loop/Scan (the iterations stacked on a new axis 0).  Returns the top-level tensor and the
    number of Loop/Scan levels crossed."""
    dtype = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
    # the shape where known (onnxruntime wants Scan body outputs ranked)
    cur = gs.Variable(names(t.name + "_qc_probe"), dtype=dtype, shape=t.shape)
    where.nodes.append(gs.Node("Identity", names(t.name + "_qc_probe_id"), inputs=[t], outputs=[cur]))
    g, loops = where, 0
    while g is not top:
        node, parent, key = parents[id(g)]
        if node.op == "If":
            other = node.attrs["else_branch" if key == "then_branch" else "then_branch"]
            empty = gs.Variable(names(t.name + "_qc_probe_empty"), dtype=dtype)
            other.nodes.append(gs.Node("Constant", names(t.name + "_qc_probe_empty_c"),
                                       attrs={"value": gs.Constant(names(t.name + "_qc_empty_value"),
                                                                   np.zeros((0,), dtype))},
                                       outputs=[empty]))
            g.outputs.append(cur)
            other.outputs.append(empty)
        elif node.op in ("Loop", "Scan"):
            g.outputs.append(cur)  # a new scan output (they come last)
            if node.op == "Scan":
                for a in ("scan_output_axes", "scan_output_directions"):
                    if a in node.attrs:
                        node.attrs[a] = list(node.attrs[a]) + [0]
            loops += 1
        else:
            raise CalibrationError(f"cannot observe '{t.name}' inside the {node.op} node {node.name}: only If, Loop "
                                   "and Scan bodies are supported", code="QC405", node=node.name)
        out = gs.Variable(names(t.name + "_qc_probe_" + node.op.lower()), dtype=dtype)
        node.outputs.append(out)
        cur, g = out, parent
    return cur, loops


def build_probe_graph(graph: gs.Graph, requests: dict[str, ObserverConfig],
                      keep_outputs: bool = False) -> tuple[gs.Graph, list[_Probe]]:
    """A copy of the graph whose outputs are the observed tensors (the model's own outputs are dropped, so
    onnxruntime runs only what the statistics need).  Tensors inside If/Loop/Scan bodies are threaded out
    through the enclosing nodes' outputs (:func:`_thread_out`)."""
    g = copy_graph(graph)
    tensors = g.tensors()
    local: dict[str, tuple[gs.Tensor, gs.Graph]] = {}
    if any(name not in tensors for name in requests):
        local = _local_tensors(g)
    parents = _subgraph_parents(g) if local else {}
    names = Namer(g) if local else None
    inputs = {t.name for t in g.inputs}

    def find(n: str) -> gs.Tensor | None:
        return tensors[n] if n in tensors else local[n][0] if n in local else None

    need_rank = [n for n, c in requests.items() if c.axis is not None and c.axis >= 0 and find(n) is not None
                 and rank(find(n)) is None]
    if need_rank:
        infer_shapes(g)
    probes: list[_Probe] = []
    g.outputs = []
    for name, cfg in requests.items():
        t = tensors.get(name)
        where = None
        if t is None and name in local:
            t, where = local[name]
        if t is None:
            raise CalibrationError(f"cannot observe '{name}': no such tensor in the graph", code="QC405")
        if isinstance(t, gs.Constant):
            raise CalibrationError(f"'{name}' is a constant; constants are not calibrated", code="QC405")
        if t.dtype is not None and np.dtype(t.dtype).kind != "f":
            raise CalibrationError(f"cannot calibrate '{name}': its type is {np.dtype(t.dtype)}, not float",
                                   code="QC405")
        # a non-negative axis needs the rank (-1 does not); in bodies it is resolved on the data
        if cfg.axis is not None and cfg.axis >= 0 and rank(t) is None and where is None:
            raise CalibrationError(f"per-channel statistics for '{name}' need its rank, which shape inference "
                                   "could not find", code="QC405", hint="fix input dims with --input-shape")
        if where is not None:
            assert names is not None
            out, loops = _thread_out(g, t, where, parents, names)
            g.outputs.append(out)
            probes.append(_Probe(name, cfg, "expose", known_nonnegative(t), out.name, loops))
        elif name in inputs:
            probes.append(_Probe(name, cfg, "input", output=name))
        else:
            g.outputs.append(t)
            probes.append(_Probe(name, cfg, "expose", known_nonnegative(t), name))
    if keep_outputs or not g.outputs:  # the model's outputs too (kept, or something to run)
        have = {o.name for o in g.outputs}
        g.outputs += [g.tensors()[o.name] for o in graph.outputs if o.name not in have]
    g.cleanup(remove_unused_graph_inputs=False)
    return g, probes


def _np_minmax(x: np.ndarray, axis: int | None, nonneg: bool = False) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        mx = np.asarray(x.max(), np.float64)
        return (np.zeros_like(mx) if nonneg else np.asarray(x.min(), np.float64)), mx
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mx = x.max(axis=axes).astype(np.float64)
    return (np.zeros_like(mx) if nonneg else x.min(axis=axes).astype(np.float64)), mx


def collect(graph: gs.Graph, requests: dict[str, ObserverConfig], data: CalibData, *,
            diagnostics: DiagnosticEngine | None = None, options: CollectOptions | None = None,
            timings: dict[str, float] | None = None,
            kept: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None) -> dict[str, TensorStats]:
    """One pass over ``data``; returns the statistics of every requested tensor.  With ``options.keep_samples``
    and a ``kept`` list, the (feeds, model outputs) of the first batches are appended to it."""
    opts = options or CollectOptions()
    t0 = time.perf_counter()
    keep = opts.keep_samples if kept is not None else 0
    g, probes = build_probe_graph(graph, requests, keep_outputs=keep > 0)
    model_outs = [o.name for o in graph.outputs]
    kept_rows = kept_bytes = 0
    sess = Session(g, opt_level=opts.opt_level, threads=opts.threads)
    t_build = time.perf_counter() - t0
    out_names = sess.output_names
    index = {n: i for i, n in enumerate(out_names)}
    stats = {p.name: TensorStats(p.name, p.cfg) for p in probes}
    need_feed = set(sess.input_names)
    bar = Progress("calibrate", total=data.size_hint(), unit="samples", mode=opts.progress)
    t_run = t_stats = 0.0
    samples = 0
    # slices of a batch give the same statistics (min/max and per-sample histogram subsampling do not see
    # batching), except the moving average, which is defined per batch; a fixed batch dim cannot be sliced
    can_slice = (opts.run_budget_mib > 0 and not any(p.cfg.method == "moving_average" for p in probes)
                 and all(t.shape and not static_dim(t.shape[0]) for t in g.inputs))
    step: int | None = None  # samples per run once the first run has shown the exposed bytes per sample
    try:
        for b in data.batches(graph, diagnostics, opts.batch_size):
            first, batch, n_batch = b.first, b.feeds, b.samples
            sliceable = can_slice and b.batch_axis
            keeping = keep > 0 and kept_rows < keep
            pieces: list[dict[str, np.ndarray]] = []
            s0 = 0
            while s0 < max(n_batch, 1):
                # sliced: the very first run takes one sample, to learn the exposed bytes per sample
                k = (step or 1) if sliceable else max(n_batch, 1)
                start, s0 = s0, s0 + k
                feeds = batch if (start == 0 and k >= n_batch) else {key: v[start:s0] for key, v in batch.items()}
                n = min(k, n_batch - start) if b.batch_axis else 1
                ta = time.perf_counter()
                ort_feeds = {key: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                             for key, v in feeds.items() if key in need_feed}
                try:
                    vals = sess.sess.run_with_ort_values(out_names, ort_feeds)
                except Exception as exc:
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise CalibrationError(f"onnxruntime failed on the batch starting at sample {first + start}: "
                                           f"{msg}", code="QC406",
                                           hint="check that the data matches the model inputs") from None
                tb = time.perf_counter()
                t_run += tb - ta
                if keeping:
                    pieces.append({o: np.array(vals[index[o]].numpy()) for o in model_outs})
                if sliceable and step is None and n:
                    per_sample = sum(v.numpy().nbytes for v in vals) / n
                    step = max(1, int(opts.run_budget_mib * (1 << 20) // max(per_sample, 1.0)))
                for p in probes:
                    st = stats[p.name]
                    if st.non_finite is not None:
                        continue  # cannot be quantized whatever comes next
                    x = feeds[p.name] if p.mode == "input" else vals[index[p.output]].numpy()  # no copy
                    if x.size == 0:
                        continue  # inside the If branch that did not run
                    mn, mx = _np_minmax(x, p.axis, p.nonneg)
                    if not (np.all(np.isfinite(mn)) and np.all(np.isfinite(mx))):
                        # an additive attention mask (-inf / finfo.min), an overflow: no scale can carry it
                        st.non_finite = first + start
                        continue
                    st.update_minmax(mn, mx, n)
                    if p.cfg.needs_hist():  # Loop/Scan iterations stacked in front: one sample per run
                        st.update_hist(sample_view(x, n, opts.hist_sample, b.batch_axis and not p.loops),
                                       float(np.min(mn)), float(np.max(mx)))
                del vals
                t_stats += time.perf_counter() - tb
                samples += n
                bar.update(n)
            if keeping and pieces:
                outs = {o: (np.concatenate([p[o] for p in pieces]) if len(pieces) > 1 else pieces[0][o])
                        for o in model_outs}
                size = sum(v.nbytes for v in outs.values()) + sum(np.asarray(v).nbytes for v in batch.values())
                if kept_bytes + size <= KEEP_BUDGET_MIB * (1 << 20):
                    assert kept is not None
                    kept.append(({k: np.array(v) for k, v in batch.items()}, outs))
                    kept_bytes += size
                    kept_rows += max(n_batch, 1)
                else:
                    keep = 0  # over the budget: the guard runs FP32 itself
    finally:
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
        for b in data.batches(graph, None, batch_size):
            f = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in b.feeds.items() if k in names}
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


def _collect_shard(inputs, task: tuple) -> dict[str, TensorStats]:
    """A task (or a local call): one shard of the data through its own onnxruntime session."""
    requests, options, start, stop = task
    opts = replace(options, threads=options.threads or inputs.threads, progress="off")
    return collect(inputs.graphs[0], requests, inputs.data.shard(start, stop), options=opts)


def shard_plan(data: CalibData, graph: gs.Graph, workers: int, batch_size: int | None = None,
               exact_batches: bool = False) -> tuple[list[tuple[int, int]] | None, str | None]:
    """Contiguous sample ranges, one per task, that start on batch boundaries (so each shard is batched as one
    process batches those samples), or None and why the data cannot be split.  ``exact_batches``: the caller adds
    per-batch floating-point sums, so every batch must be the one a single process runs."""
    from ..executor import shard_ranges

    n = data.samples(graph)
    if n is None:
        return None, ("the data cannot say how many samples it holds without reading it (a Python iterable, a "
                      "folder of .npz files, feeds taken as they are)")
    if exact_batches and (data.options.skip_bad or data.options.layout == "feed"
                          or data.source.default_batch is None):
        return None, "its batches depend on the files (one run per file, or skipped samples)"
    fixed = next((int(t.shape[0]) for t in graph.inputs if t.shape and static_dim(t.shape[0])), None)
    batch = fixed or batch_size or data.options.batch_size or data.source.default_batch or 8
    n_batches = -(-n // batch)
    return [(a * batch, min(n, b * batch)) for a, b in shard_ranges(n_batches, workers)], None


def collect_sharded(graph: gs.Graph, requests: dict[str, ObserverConfig], data: CalibData, executor: Any, *,
                    diagnostics: DiagnosticEngine | None = None, options: CollectOptions | None = None,
                    timings: dict[str, float] | None = None,
                    kept: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None
                    ) -> dict[str, TensorStats]:
    """:func:`collect` over contiguous shards of the samples, one task each on ``executor``, merged in shard
    order: min/max and histograms merge exactly, so the statistics (and the scales) are the ones one process gets.
    Falls back to one process (with a remark) when the data cannot say how many samples it holds or an
    observer depends on the batch order (moving_average)."""
    from ..executor import TOO_BIG, map_over_graph

    opts = options or CollectOptions()
    if executor is None or not executor.parallel:
        return collect(graph, requests, data, diagnostics=diagnostics, options=options, timings=timings, kept=kept)
    ranges, why = shard_plan(data, graph, executor.workers, opts.batch_size)
    if why is None and any(c.method == "moving_average" for c in requests.values()):
        why = "moving_average depends on the order of the batches"
    parts = None
    if why is None and ranges is not None:
        data.check_signature(graph)
        t0 = time.perf_counter()
        parts = map_over_graph(executor, [graph], [(requests, opts, a, b) for a, b in ranges], _collect_shard,
                               data=data, what="calibrate", progress=opts.progress,
                               labels=[f"calibration shard {k} (samples {a}-{b - 1})"
                                       for k, (a, b) in enumerate(ranges)])
        why = TOO_BIG if parts is None else None
    if parts is None:
        if diagnostics is not None:
            diagnostics.remark("QC404", f"calibration runs in this process: {why}")
        return collect(graph, requests, data, diagnostics=diagnostics, options=options, timings=timings, kept=kept)
    merged = merge_stats(*parts)
    samples = sum(int(next(iter(p.values())).extra.get("samples", 0)) for p in parts if p)
    for st in merged.values():
        st.extra["samples"] = samples
    if timings is not None:
        timings["calibrate.run"] = timings.get("calibrate.run", 0.0) + time.perf_counter() - t0
    return merged
