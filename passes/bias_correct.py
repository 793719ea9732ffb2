"""bias-correct: correct the systematic (mean) error quantization adds to each layer's output.

Quantizing weights and activations shifts the mean of a layer's output: E[y_q] != E[y].  Adding the
per-output-channel difference to the bias removes that shift (Nagel et al. 2019; EQuant's
"bias_correction")::

    b'_c = b_c + E[y_fp32,c] - E[y_q,c]

``mode=empirical`` (default) measures both means with onnxruntime on the calibration data.  Layers are
corrected one at a time in topological order, each measured on the quantized model *with the
corrections of the layers before it*, so later layers see earlier corrections.  Means are streamed
(sums per channel), nothing proportional to the data is kept; each measurement runs only the part of the
model up to the layer.

``mode=data-free`` needs no data: with the input of a layer being ``relu(z)`` where ``z ~ N(beta, gamma^2)``
per channel (BatchNormalization statistics recorded by ``fold-bn``), ``E[x]`` has a closed form
(``gamma*pdf(beta/gamma) + beta*cdf(beta/gamma)``), and the error of the quantized weights
``eps = W_q - W`` shifts the output mean by ``eps . E[x]`` (summed over input channels and kernel taps);
that amount is subtracted from the bias.  It corrects weight quantization only.

A missing bias is created (an Add after a MatMul).  Runs after ``insert-qdq`` (it needs the FP32 graph that
insert-qdq keeps in the context).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calib.collect import shard_plan
from qcompiler.calib.data import CalibData
from qcompiler.diagnostics import CalibrationError, QCompilerError
from qcompiler.ir.edit import Namer
from qcompiler.executor import TOO_BIG, map_over_graph
from qcompiler.ir.graph import copy_graph
from qcompiler.ir.layers import WEIGHTED_OPS, LayerGeometry, LayerKind
from qcompiler.ir.query import const_value, is_graph_output, produced_by, producer
from qcompiler.ir.runtime import Session
from qcompiler.pm import Pass, PassResult, option
from qcompiler.progress import Progress
from qcompiler.quant.state import BatchNormStats, FP32Reference
from qcompiler.quant.qspec import dequantize_linear, quantize_linear
from qcompiler.quant.strip import dequantized_constant
from qcompiler.quant.floattype import in_fp32

from ._layers import input_response




def _batch_sums(graph: gs.Graph, tensors: list[tuple[str, str]], data: CalibData, opt_level: str,
                threads: int | None, diagnostics=None) -> Iterator[tuple[dict[str, np.ndarray], dict[str, int]]]:
    """Per batch: the per-channel sums of ``tensors`` (name, layer op) and the element counts behind them."""
    g = copy_graph(graph)
    ts = g.tensors()
    g.outputs = [ts[name] for name, _ in tensors]
    g.cleanup(remove_unused_graph_inputs=False)
    sess = Session(g, opt_level=opt_level, threads=threads)
    try:
        feeds_needed = set(sess.input_names)
        for b in data.batches(graph, diagnostics):
            ys = sess.run({k: v for k, v in b.feeds.items() if k in feeds_needed})
            sums, counts = {}, {}
            for (name, op), y in zip(tensors, ys):
                ax = LayerKind(op).activation_channel_axis % y.ndim
                axes = tuple(i for i in range(y.ndim) if i != ax)
                sums[name] = y.astype(np.float64).sum(axis=axes)
                counts[name] = int(np.prod([y.shape[i] for i in axes]))
            yield sums, counts
    finally:
        sess.close()


def _batch_sums_task(inputs, task: tuple) -> list:
    """A task: :func:`_batch_sums` over one shard."""
    tensors, opt_level, start, stop = task
    return list(_batch_sums(inputs.graphs[0], tensors, inputs.data.shard(start, stop), opt_level, inputs.threads))


def channel_means(graph: gs.Graph, tensors: list[tuple[str, gs.Node]], data: CalibData, ctx,
                  opt_level: str) -> dict[str, np.ndarray]:
    """Per-channel means of ``tensors`` over the data, streamed (one pass, only what they need runs).  With a
    parallel executor the shards' per-batch sums are added here in batch order: the float64 sums (and so the
    corrections) are the ones one process computes."""
    named = [(name, node.op) for name, node in tensors]
    per_batch: Iterable[tuple[dict[str, np.ndarray], dict[str, int]]] | None = None
    ex = getattr(ctx, "executor", None)
    if ex is not None and ex.parallel:
        ranges, why = shard_plan(data, graph, ex.workers, exact_batches=True)
        if ranges:
            parts = map_over_graph(ex, [graph], [(named, opt_level, a, b) for a, b in ranges], _batch_sums_task,
                                   data=data, what="bias-correct: means",
                                   labels=[f"means of shard {k} (samples {a}-{b - 1})"
                                           for k, (a, b) in enumerate(ranges)])
            if parts is not None:
                per_batch = [x for part in parts for x in part]
            why = why or TOO_BIG
        if per_batch is None:
            ctx.remark("QC404", f"bias-correct measures in this process: {why}")
    if per_batch is None:
        per_batch = _batch_sums(graph, named, data, opt_level, ctx.threads, ctx.diagnostics)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s_b, c_b in per_batch:
        for name, s in s_b.items():
            sums[name] = s if name not in sums else sums[name] + s
            counts[name] = counts.get(name, 0) + c_b[name]
    return {k: sums[k] / counts[k] for k in sums}


def add_output_bias(graph: gs.Graph, node: gs.Node, delta: np.ndarray, names: Namer) -> None:
    """Add ``delta`` (per output channel) to the layer's bias, creating it (or an Add) if needed."""
    delta = np.asarray(delta, np.float64)
    if node.op in ("Conv", "ConvTranspose"):
        if len(node.inputs) > 2 and node.inputs[2].name:
            b = const_value(node.inputs[2])
            if b is None:
                raise QCompilerError(f"{node.name}: its bias is not a float constant", code="QC604")
            new = (b.astype(np.float64) + delta).astype(b.dtype)
            node.inputs[2] = gs.Constant(names(node.name + "_bias_corrected"), new)
        else:
            node.inputs.append(gs.Constant(names(node.name + "_bias_corrected"), delta.astype(np.float32)))
        return
    if node.op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = const_value(node.inputs[2])
            if c is None:
                raise QCompilerError(f"{node.name}: its C input is not a constant", code="QC604")
            new = (np.broadcast_to(c.astype(np.float64) * beta, np.broadcast_shapes(c.shape, delta.shape)) + delta)
        else:
            new = delta
        node.attrs["beta"] = 1.0
        bc = gs.Constant(names(node.name + "_bias_corrected"), np.ascontiguousarray(new.astype(np.float32)))
        if len(node.inputs) > 2:
            node.inputs[2] = bc
        else:
            node.inputs.append(bc)
        return
    # MatMul: a following Add with a constant of the channel size, or a new Add
    out = node.outputs[0]
    if len(out.outputs) == 1 and not is_graph_output(graph, out) and out.outputs[0].op == "Add":
        add = out.outputs[0]
        k = 1 if add.inputs[0] is out else 0
        c = const_value(add.inputs[k])
        if c is not None and c.shape[-1] == delta.size:
            add.inputs[k] = gs.Constant(names(node.name + "_bias_corrected"),
                                        (c.astype(np.float64) + delta).astype(c.dtype))
            return
    new_out = gs.Variable(names(out.name + "_uncorrected"), dtype=out.dtype, shape=out.shape)
    node.outputs[0] = new_out
    add = gs.Node("Add", names(node.name + "_bias_correction"),
                  inputs=[new_out, gs.Constant(names(node.name + "_bias_corrected"), delta.astype(np.float32))],
                  outputs=[out])
    graph.nodes.insert(graph.nodes.index(node) + 1, add)


def _dequantized_weight(node: gs.Node) -> np.ndarray | None:
    """The weight a quantized layer really uses: DQ(int8 const) evaluated in numpy."""
    dq = produced_by(node.inputs[1], "DequantizeLinear")
    if dq is None:
        return None
    qn = produced_by(dq.inputs[0], "QuantizeLinear")
    if qn is not None:  # weights=qdq form: DQ(Q(float weight))
        block = dq.attrs.get("block_size")
        axis = int(dq.attrs.get("axis", 1))
        x = const_value(qn.inputs[0])
        if x is None:
            return None
        s = const_value(qn.inputs[1])
        if s is None:
            return None
        z = const_value(qn.inputs[2]) if len(qn.inputs) > 2 and qn.inputs[2].name else None
        dtype = z.dtype if z is not None else np.uint8  # ONNX: no zero point means uint8
        q = quantize_linear(x, s, z, axis, block, dtype)
        return dequantize_linear(q, s, z, axis, block)
    return dequantized_constant(dq)


def _relu_normal_mean(beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    g = np.maximum(np.abs(gamma), 1e-12)
    r = beta / g
    pdf = np.exp(-0.5 * r * r) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(r / math.sqrt(2)))
    return g * pdf + beta * cdf


class BiasCorrect(Pass["BiasCorrect.Options"]):
    """Bias correction: remove the mean shift quantization adds to each layer's output."""

    name = "bias-correct"
    requires = frozenset({"quantized", "fp32-reference"})
    uses = frozenset({"bn-stats"})

    @dataclass(frozen=True)
    class Options:
        mode: str = option("empirical", "empirical (calibration data, layer by layer) or data-free (BatchNorm "
                                        "statistics recorded by fold-bn)", choices=("empirical", "data-free"))
        max_samples: int = option(256, "samples used to measure the means (empirical)", min=1)
        min_relative: float = option(1e-3, "skip corrections smaller than this fraction of the channel's mean "
                                           "output magnitude", min=0.0)

    @in_fp32  # a compiled fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        ref = ctx.state.require(FP32Reference, self.name).graph
        layers = [n for n in graph.nodes if n.op in WEIGHTED_OPS and len(n.inputs) > 1
                  and produced_by(n.inputs[1], "DequantizeLinear") is not None]
        if not layers:
            ctx.warning("QC604", "bias-correct found no quantized layer with a dequantized weight to correct")
            return PassResult(False, {"layers": 0})
        names = Namer(graph)
        if self.options.mode == "data-free":
            return self._data_free(graph, ctx, ref, layers, names)
        if ctx.calib_data is None:
            raise CalibrationError("bias-correct{mode=empirical} needs calibration data", code="QC401",
                                   hint="pass --calib-data, or use bias-correct{mode=data-free} after fold-bn")
        data = ctx.calib_data.limited(self.options.max_samples)
        ref_nodes = {n.name: n for n in ref.nodes}
        targets = [(n.outputs[0].name, n) for n in layers if n.name in ref_nodes]
        fp32 = channel_means(ref, [(name, ref_nodes[n.name]) for name, n in targets], data, ctx, "all")
        corrected = 0
        magnitude = []
        bar = Progress("bias-correct", total=len(targets), unit="layers", mode=ctx.progress_mode())
        for name, node in targets:
            bar.update(1, note=node.name)
            q = channel_means(graph, [(node.outputs[0].name, node)], data, ctx, "basic")[node.outputs[0].name]
            delta = fp32[name] - q
            scale = max(float(np.mean(np.abs(fp32[name]))), 1e-12)
            if float(np.max(np.abs(delta))) < self.options.min_relative * scale:
                continue
            add_output_bias(graph, node, delta, names)
            corrected += 1
            magnitude.append(float(np.mean(np.abs(delta))) / scale)
        bar.close()
        if corrected:
            ctx.remark("QC604", f"bias-correct corrected {corrected} layer(s) (mean |shift| "
                                f"{100 * float(np.mean(magnitude)):.2f}% of the output magnitude)")
        return PassResult(corrected > 0, {"layers": corrected})

    def _data_free(self, graph, ctx, ref, layers, names) -> PassResult:
        bn = ctx.state.get(BatchNormStats) or BatchNormStats()
        ref_nodes = {n.name: n for n in ref.nodes}
        corrected = 0
        for node in layers:
            rn = ref_nodes.get(node.name)
            if rn is None or node.op not in ("Conv", "Gemm", "MatMul"):
                continue
            W = const_value(rn.inputs[1])
            Wq = _dequantized_weight(node)
            if W is None or Wq is None:
                continue
            ex = self._input_mean(rn, bn)
            if ex is None:
                continue
            eps = Wq.astype(np.float64) - W.astype(np.float64)
            geo = LayerGeometry.of(rn, W.shape)
            if geo is None:
                continue
            shift = input_response(rn, geo, eps, ex)
            add_output_bias(graph, node, -shift, names)
            corrected += 1
        if corrected:
            ctx.remark("QC604", f"data-free bias correction adjusted {corrected} layer(s)")
        else:
            ctx.warning("QC604", "data-free bias correction found no layer whose input statistics are known (it "
                                 "needs Conv -> BatchNormalization -> Relu -> layer, with fold-bn in the same "
                                 "pipeline)")
        return PassResult(corrected > 0, {"layers": corrected})

    @staticmethod
    def _input_mean(node: gs.Node, bn: BatchNormStats) -> np.ndarray | None:
        """E[x] of a layer's input when it is Relu(z) (or z) with z's BatchNorm statistics recorded."""
        x = node.inputs[0]
        prod = producer(x)
        relu = False
        if prod is not None and prod.op == "Relu":
            relu = True
            x = prod.inputs[0]
        st = bn.get(x.name)
        if st is None:
            return None
        beta, gamma = st.mean, st.std
        return _relu_normal_mean(beta, gamma) if relu else beta
