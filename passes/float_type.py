"""float-type: everything not quantized stored and computed in one float type (qcompiler/quant/floattype.py).

TensorRT 11 runs every layer in the type the ONNX file gives it, so the type of the non-quantized parts is
written into the graph: ``type=fp16`` (the default of the TensorRT named pipelines), ``bf16`` or ``fp32``.
Float weights are stored in that type, DequantizeLinear writes it (its scale in that type: opset 19 for fp16,
22 for bf16, raised when needed), Casts appear only where a tensor is read in another type than it was made in,
and graph inputs and outputs keep their declared types (``keep-io``).

Islands stay fp32, each chosen from a measurement and reported with its reason (QC305 remarks, the
``float-type-report`` state and ``qcompiler report``): a tensor whose largest magnitude on ``samples``
calibration samples is above ``limit`` or not finite, an op that squares an input that large (normalizations),
a constant the type cannot hold (overflow, or nonzero values becoming 0), an op whose schema does not take the
type.  Shape computations, indices and integer paths keep their types; If/Loop/Scan bodies stay as they are.

After the rewrite the outputs are checked on the same samples, part by part (qcompiler/quant/judge.py's parts) as
values.  A quantized graph is judged against the FP32 model (the fp32-reference state), before and after the
rewrite: a part that loses more than ``max-loss`` dB (1) is a warning naming it.  Against the quantized graph
before the rewrite it would judge int8 rounding flips (a Q input a hair different in fp16 rounds to the next
level, a different draw of the same quantization noise: SVTR read 25 dB there while it lost 0.6 dB against
FP32).  A graph without Q/DQ is judged against the graph before: a part below ``check`` dB SQNR (30) is a
warning.  Values, not decisions: fp16 rounding flips a few decisions near a threshold whatever the model, so on a
few samples a decision measure would judge luck; an overflow shows here as inf or NaN.  The same run of the graph
before the rewrite measures every tensor's range, so the pass costs two runs over ``samples`` samples (three with
the FP32 model's).

``type=fp32`` writes float32 float parts (the model as it was, or float32 for an fp16 model).  The named pipelines
run ``to-fp32`` first, so every pass and every statistic works in float32, and ``float-type`` last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.dtypes import FLOAT_TYPES, MIN_OPSET, float_kind
from qcompiler.ir.edit import Namer
from qcompiler.ir.graph import copy_graph
from qcompiler.ir.opset import upgrade_opset
from qcompiler.ir.runtime import Session, session_options
from qcompiler.ir.shapes import infer_shapes
from qcompiler.pm import Pass, PassResult, option
from qcompiler.pm.state import State
from qcompiler.quant.floattype import Island, emulated, find_islands, has_other_floats, retype
from qcompiler.quant.guard import layer_macs
from qcompiler.quant.judge import Judge, output_parts
from qcompiler.quant.state import FP32Reference


@dataclass
class FloatTypeReport(State):
    """What float-type did: the type, the fp32 islands with their reasons, and what share of the float work and
    the float weights is in the type."""

    fact = "float-type-report"
    target: str
    islands: list[Island] = field(default_factory=list)
    casts: int = 0
    float_macs_share: float = 1.0  # of the MACs of layers left float, the share computed in the target type
    float_weight_share: float = 1.0  # of the bytes of float weights, the share stored in the target type
    health_db: dict[str, float] = field(default_factory=dict)  # output part -> dB against FP32 (else the graph before)
    health_before_db: dict[str, float] = field(default_factory=dict)  # the same before the rewrite (against FP32)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.target, "islands": [{"node": i.node, "op": i.op, "reason": i.reason}
                                                 for i in self.islands],
                "casts": self.casts, "float_macs_share": round(self.float_macs_share, 4),
                "float_weight_share": round(self.float_weight_share, 4),
                "health_db": {k: round(v, 2) for k, v in self.health_db.items()},
                "health_before_db": {k: round(v, 2) for k, v in self.health_before_db.items()}}


def _run(graph: gs.Graph, feeds: list[dict[str, np.ndarray]], threads: int | None, *, in_node_order: bool = False
         ) -> list[dict[str, np.ndarray]]:
    """``graph`` over the feeds (float inputs converted to the graph's declared types; float outputs as float32)."""
    types = {t.name: t.dtype for t in graph.inputs}
    sess = Session(graph, threads=threads, so=session_options("basic", threads, in_node_order=in_node_order))
    try:
        out = [sess.run_dict({k: (v.astype(types[k]) if float_kind(v.dtype) and float_kind(types[k]) else v)
                              for k, v in f.items() if k in sess.input_names}) for f in feeds]
    finally:
        sess.close()
    return [{k: np.asarray(v, np.float32) if float_kind(v.dtype) else v for k, v in r.items()} for r in out]


def _measured(graph: gs.Graph, feeds: list[dict[str, np.ndarray]], threads: int | None
              ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
    """One run of ``graph`` over the feeds giving both the largest magnitude of every float tensor of the top-level
    graph (inf when not finite: its max and min reduced inside onnxruntime) and the model's outputs."""
    g = copy_graph(graph)
    io = {id(t) for t in g.inputs} | {id(t) for t in g.outputs}
    for t in g.tensors().values():  # onnxruntime infers them: probed DQs are duplicated by its QDQ transformers, and
        if isinstance(t, gs.Variable) and id(t) not in io:  # a duplicate planned from a declared symbolic shape
            t.shape = None                                   # was given another tensor's buffer (SLANet)
    names = Namer(g)
    probes: dict[str, str] = {}
    outs = list(g.outputs)
    order: list[gs.Node] = []

    def add_probes(t: gs.Tensor) -> None:
        if not isinstance(t, gs.Variable) or not t.name or float_kind(t.dtype) is None:
            return
        if t.inputs and t.inputs[0].op == "QuantizeLinear":
            return
        for op in ("ReduceMax", "ReduceMin"):  # (no |x| temporary: two scalars per tensor, little memory)
            m = gs.Variable(names(f"{t.name}_{op.lower()}"), dtype=t.dtype, shape=[])
            order.append(gs.Node(op, names(f"{t.name}_{op.lower()}"), attrs={"keepdims": 0}, inputs=[t],
                                 outputs=[m]))
            probes[m.name] = t.name
            outs.append(m)

    # each probe right after the node writing its tensor, run in that order: a probe run last keeps every tensor
    # of the model alive until then (YOLOv8 at 1024x1024: 1.5 GB instead of 0.34)
    for t in g.inputs:
        add_probes(t)
    for n in list(g.nodes):
        order.append(n)
        for t in n.outputs:
            add_probes(t)
    g.nodes = order
    g.outputs = outs
    runs = _run(g, feeds, threads, in_node_order=True)
    ranges: dict[str, float] = {}
    for r in runs:
        for probe, name in probes.items():
            v = abs(float(np.asarray(r[probe], np.float64)))
            ranges[name] = float("inf") if not np.isfinite(v) else max(ranges.get(name, 0.0), v)
    keep = [t.name for t in graph.outputs]
    return ranges, [{k: r[k] for k in keep} for r in runs]


def _shares(graph: gs.Graph, target: str) -> tuple[float, float]:
    """(share of float layers' MACs computed in ``target``, share of float weight bytes stored in it)."""
    macs = layer_macs(graph)
    float_macs = {"all": 0.0, "target": 0.0}
    for n in graph.nodes:
        if n.name not in macs or len(n.inputs) < 2 or not isinstance(n.inputs[1], gs.Constant):
            continue  # a quantized layer (its weight comes from a DequantizeLinear)
        float_macs["all"] += macs[n.name]
        if float_kind(n.outputs[0].dtype) == target:
            float_macs["target"] += macs[n.name]
    nbytes = {"all": 0, "target": 0}
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and float_kind(t.dtype) is not None and int(np.prod(t.shape or [1])) > 1:
            b = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize * (4 // np.dtype(t.dtype).itemsize)
            nbytes["all"] += b
            nbytes["target"] += b if float_kind(t.dtype) == target else 0
    return (float_macs["target"] / float_macs["all"] if float_macs["all"] else 1.0,
            nbytes["target"] / nbytes["all"] if nbytes["all"] else 1.0)


class FloatType(Pass["FloatType.Options"]):
    """Store and compute everything not quantized in one float type (fp16/bf16/fp32), fp32 islands measured."""

    name = "float-type"
    provides = frozenset({"float-type-report"})

    @dataclass(frozen=True)
    class Options:
        type: str = option("fp16", "the float type of everything not quantized", choices=("fp16", "bf16", "fp32"))
        keep_io: bool = option(True, "graph inputs and outputs keep their declared types (false: float32 ones "
                                     "become the type)")
        limit: float = option(16384.0, "a tensor whose largest magnitude on the calibration samples is above this "
                                       "keeps its nodes fp32 (fp16's largest value is 65504)", min=1.0)
        samples: int = option(4, "calibration samples the ranges are measured and the outputs checked on", min=1)
        check: float = option(30.0, "an output part whose SQNR against the graph before the rewrite is below this "
                                    "many dB is a warning (0: no check); a quantized graph is judged against FP32 "
                                    "instead (max-loss)", min=0.0)
        max_loss: float = option(1.0, "a quantized graph's output part that loses more than this many dB against "
                                       "the FP32 model in the rewrite is a warning", min=0.0)

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        target = self.options.type
        if target == "fp32" and not has_other_floats(graph):
            ctx.state.put(FloatTypeReport(target))  # float32 already: nothing to do
            return PassResult.unchanged()
        inferred = infer_shapes(graph) > 0  # element types of every tensor
        current = int(graph.opset or 13)
        if current < MIN_OPSET[target]:
            upgrade_opset(graph, MIN_OPSET[target])
            ctx.remark("QC305", f"upgraded the model from opset {current} to {MIN_OPSET[target]} (needed for "
                                f"{target} DequantizeLinear scales and {target} ops)")
            infer_shapes(graph)
        opset = int(graph.opset or 13)
        data = ctx.calib_data
        ranges: dict[str, float] = {}
        feeds: list[dict[str, np.ndarray]] = []
        ref: list[dict[str, np.ndarray]] = []
        if data is not None:  # one run of the graph as it is: every float tensor's range, and the outputs
            from qcompiler.quant.guard import _feeds

            feeds = _feeds(data, graph, self.options.samples, ctx.diagnostics)
            ranges, ref = _measured(graph, feeds, ctx.threads)
        else:
            ctx.remark("QC302", "float-type: no calibration data, so fp32 islands come from constants and op "
                                "support only (no measured ranges)")
        islands = find_islands(graph, target, ranges, self.options.limit, opset)
        # numerical noise, judged as values (SQNR): fp16 rounding flips decisions near a threshold whatever the model
        # does, so the decision forms would measure luck on a few samples; an overflow shows as inf/NaN here
        parts = [p if p.form == "rows" else dataclasses.replace(p, form="values")
                 for p in output_parts(graph)] if feeds and self.options.check > 0 else []
        res = retype(graph, target, islands=islands, keep_io=self.options.keep_io, opset=opset)
        for isl in res.islands:
            ctx.remark("QC305", f"float-type keeps {isl.node} ({isl.op}) fp32: {isl.reason}", node=isl.node)
        health: dict[str, float] = {}
        before: dict[str, float] = {}
        if parts and res.changed:  # judged as TensorRT computes (float32 accumulation, the type's storage): an
            after = _run(emulated(graph, ("bf16", "fp16")), feeds, ctx.threads)  # emulation (floattype.emulated)
            fp32 = ctx.state.get(FP32Reference)
            if fp32 is not None and any(n.op == "QuantizeLinear" for n in graph.nodes):
                # a quantized graph against the graph before would judge int8 rounding flips (a Q input a hair
                # different rounds to the next level): SVTR read 25 dB there while losing 0.6 dB against FP32
                truth = Judge(parts, _run(fp32.graph, feeds, ctx.threads))
                before, health = truth.health(ref), truth.health(after)
                for part, db in health.items():
                    if not db > before[part] - self.options.max_loss:  # (NaN: an overflow reached it)
                        ctx.warning("QC305", f"float-type {target}: output part '{part}' went from "
                                             f"{before[part]:.1f} to {db:.1f} dB against FP32 (lost more than "
                                             f"{self.options.max_loss:g} dB)",
                                    hint="lower float-type's limit (more fp32 islands), or use float=fp32")
            else:
                health = Judge(parts, ref).health(after)
                for part, db in health.items():
                    if not db >= self.options.check:  # (NaN: an overflow reached it)
                        ctx.warning("QC305", f"float-type {target}: output part '{part}' is {db:.1f} dB against "
                                             f"the graph before the rewrite (below {self.options.check:g})",
                                    hint="lower float-type's limit (more fp32 islands), or use float=fp32")
        macs_share, weight_share = _shares(graph, target)
        report = FloatTypeReport(target, res.islands, res.casts, macs_share, weight_share, health, before)
        ctx.state.put(report)
        from qcompiler.quant.state import QuantizationRecord

        record = ctx.state.get(QuantizationRecord)
        if record is not None:  # written beside the output; `qcompiler report` lists the islands
            record.recipe_used["float_type"] = report.to_dict()
        if res.changed:
            worst = min(health.values()) if health else None
            ctx.remark("QC301", f"float-type {target}: {res.nodes_retyped} node(s) retyped, {len(res.islands)} "
                                f"fp32 island(s), {res.casts} Cast(s) added, {res.casts_removed} removed; "
                                f"{100 * macs_share:.0f} % of float MACs and {100 * weight_share:.0f} % of float "
                                f"weight bytes in {target}"
                                + (f"; outputs {worst:.1f} dB against "
                                   + (f"FP32 ({min(before.values()):.1f} before)" if before else "the graph before")
                                   if worst is not None else ""))
        return PassResult(res.changed or inferred, {"retyped": res.nodes_retyped, "islands": len(res.islands),
                                        "casts": res.casts})


__all__ = ["FLOAT_TYPES", "FloatType", "FloatTypeReport"]
