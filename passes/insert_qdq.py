"""insert-qdq: emit QuantizeLinear/DequantizeLinear where the target's placement rules say.

The plan (qcompiler/quant/plan.py) is computed from the graph, the recipe and the target's rules
(qcompiler/quant/targets/*.py, as data); this pass only emits it (qcompiler/quant/emit.py):

* activations: per-tensor Q/DQ with scales from ``calibrate``'s statistics (symmetric int8:
  ``scale = amax / 127``, zero point int8 0; affine u8 for the onnxruntime target; fp8 E4M3:
  ``scale = amax / 448``, zero point float8e4m3fn 0, ``saturate=1``);
* weights: per output channel with the consuming op's axis (Conv 0, ConvTranspose 1, Gemm 0/1 by
  transB, MatMul last), narrow grid, stored as int8 (or fp8) initializers behind a DequantizeLinear
  (``weights=qdq``: float weights + Q + DQ);
* biases stay float for TensorRT (R11); the onnxruntime target quantizes them to int32.

The opset is raised with onnx's version converter when needed (13 for per-channel int8, 19 for
fp8, 21 for blocked int4), with a QC305 remark.  A model that already holds Q/DQ is refused (QC503):
run ``strip-qdq`` before ``calibrate`` to quantize it again.  Layers left in float are listed as QC504
remarks with the reason (recipe, P9 small layer, attention MatMul, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calib.stats import CalibrationStats
from qcompiler.diagnostics import QCompilerError
from qcompiler.ir.graph import copy_graph, iter_graphs
from qcompiler.ir.opset import upgrade_opset
from qcompiler.pm import Pass, PassResult, option
from qcompiler.quant.emit import Emitter
from qcompiler.quant.plan import make_plan
from qcompiler.quant.recipe import validate_for_target
from qcompiler.quant.state import FP32Reference, QuantizationRecord
from qcompiler.quant.targets import get_target
from qcompiler.quant.session import PlanOptions, ensure_recipe
from qcompiler.quant.floattype import in_fp32


def nothing_quantized(graph: gs.Graph, plan) -> str:
    """Why a plan quantizes nothing, in words: no weighted layer, every one excluded (with the reasons), ..."""
    from collections import Counter

    weighted = [n for g in iter_graphs(graph) for n in g.nodes if n.op in plan.target.weighted_ops]
    if not weighted:
        return "the model has no Conv, ConvTranspose, Gemm or MatMul layer"
    reasons = Counter(plan.float_nodes.values())
    listed = "; ".join(f"{k} ({v} layer{'s' if v > 1 else ''})" for k, v in reasons.most_common(4))
    return f"all {len(weighted)} weighted layer(s) stay float: {listed}" if listed else \
        f"the plan for {len(weighted)} weighted layer(s) is empty"


def refuse_if_quantized(graph: gs.Graph) -> None:
    if any(n.op in ("QuantizeLinear", "DequantizeLinear") for g in iter_graphs(graph) for n in g.nodes):
        raise QCompilerError("the model already contains QuantizeLinear/DequantizeLinear nodes", code="QC503",
                             hint="pass the FP32 model, or put strip-qdq first (strip-qdq,calibrate,insert-qdq) to "
                                  "quantize it again")


class InsertQDQ(Pass["InsertQDQ.Options"]):
    """Insert Q/DQ nodes following the target's placement rules (TensorRT by default)."""

    name = "insert-qdq"
    requires = frozenset({"calibrated"})
    provides = frozenset({"quantized", "fp32-reference", "qdq-plan"})
    invalidates = frozenset({"calibrated"})

    @dataclass(frozen=True)
    class Options(PlanOptions):
        weights: str = option("dq", "weight storage: dq (int8/fp8 initializer + DequantizeLinear) or qdq "
                                    "(float + Q + DQ)",
                              choices=("dq", "qdq"))
        allow_empty: bool = option(False, "accept a plan that quantizes nothing (otherwise an error saying why)")
        concat_ratio: float = option(16.0, "Concat inputs (and same-scale groups) whose calibrated ranges differ by "
                                           "more than this factor keep their own scales (0: always share, P7)",
                                     min=0.0)

    @in_fp32  # an fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        refuse_if_quantized(graph)
        recipe = ensure_recipe(ctx, self.options)
        validate_for_target(recipe)
        tgt = get_target(recipe.target)
        need = tgt.opset_fp8 if recipe.precision == "fp8" or any(s.fp8 for _, s in recipe.specs()) else tgt.opset_int8
        if any(s.per_block or (w.endswith(".activation") and not s.fp8 and s.bits <= 4) for w, s in recipe.specs()):
            need = max(need, tgt.opset_int4)
        current = int(graph.opset or 1)
        if current < need:
            upgrade_opset(graph, need)
            ctx.remark("QC305", f"upgraded the model from opset {current} to {need} (needed for "
                                f"{'fp8' if need == 19 else 'blocked int4' if need == 21 else 'per-channel'} Q/DQ)")
        stats = ctx.state.require(CalibrationStats, self.name)
        reference = copy_graph(graph)
        plan = make_plan(graph, recipe, ctx.diagnostics)
        amax = {}
        for t in {x for g in plan.groups for x in g}:
            if t in stats and stats.tensors[t].range is not None:
                lo, hi = stats.range(t)
                amax[t] = max(abs(float(np.min(lo))), abs(float(np.max(hi))))
        for group, ratio in plan.unshare(amax, self.options.concat_ratio):
            ctx.remark("QC504", f"{len(group)} tensors of a Concat keep their own scales: their ranges differ "
                                f"{ratio:.0f}x (one shared scale would crush the small ones; TensorRT requantizes "
                                f"per input instead)", node=group[-1])
        bad = stats.non_finite()
        if bad:
            for layer in plan.keep_float(set(bad), "its input '{tensor}' takes non-finite values"):
                ctx.remark("QC504", f"{layer} stays float: {plan.float_nodes[layer]}", node=layer)
        unseen = set(stats.unseen()) & set(plan.observed())
        if unseen:
            for layer in plan.keep_float(unseen, "its input '{tensor}' was never computed on the calibration data "
                                                 "(an If branch no sample took)"):
                ctx.warning("QC504", f"{layer} stays float: {plan.float_nodes[layer]}", node=layer)
        result = Emitter(graph, plan, stats, weights_mode=self.options.weights, diagnostics=ctx.diagnostics).run()
        recipe_used = {
            "recipe": recipe.to_dict(),
            "observers": {t: {"method": st.config.method, "range": [float(st.range[0].min()), float(st.range[1].max())]}
                          for t, st in stats.tensors.items() if st.range is not None},
            "float_layers": dict(plan.float_nodes),
            "calibration_samples": stats.samples,
        }
        ctx.state.put(FP32Reference(reference))
        ctx.state.put(QuantizationRecord(plan, result, recipe_used, stats))
        counts = dict(result.counts)
        counts["float_layers"] = len(plan.float_nodes)
        modified = bool(result.counts.get("activations") or result.counts.get("weights"))
        if not modified:
            why = nothing_quantized(graph, plan)
            if not self.options.allow_empty:
                raise QCompilerError(f"insert-qdq quantized nothing: {why}", code="QC506",
                                     hint="check the recipe and the model (qcompiler compile -v lists each layer left "
                                          "float); insert-qdq{allow-empty=true} accepts an unquantized result")
            ctx.warning("QC506", f"insert-qdq quantized nothing (allow-empty=true): {why}")
        return PassResult(modified, counts)
