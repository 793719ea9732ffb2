"""guard: after insert-qdq, keep float the few activation tensors int8 cannot carry (qcompiler/quant/guard.py).

On by default in the named pipelines (``trt-int8{guard=off}`` turns it off).  The quantized model is compared
with the FP32 one on ``samples`` calibration samples, output part by output part, each judged by what its user
consumes (qcompiler/quant/judge.py) as a health in dB.  When every part is at least ``sqnr`` dB nothing changes.
Otherwise a group-testing search over the activation quantization points (a shared Concat scale is one point),
on the samples that fared worst and within ``runs`` runs, finds the few that cost the most; they get another
range from the same statistics (free) or go float, most share per MAC first, while the float layers stay within
``budget`` of the quantized MACs.  Each decision is a remark (QC504 for float, QC604 for a range) naming the
tensors, the layers that went float with them and the health gained; the summary is kept as the
``guard-report`` state (``qcompiler compile`` prints one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.pm import Pass, PassResult, option
from qcompiler.pm.state import State
from qcompiler.calib.observers import compute_range
from qcompiler.quant.guard import GuardResult, apply_decisions, run_guard, summary
from qcompiler.quant.state import FP32Reference, QuantizationRecord
from qcompiler.quant.floattype import in_fp32


@dataclass
class GuardReport(State):
    """What the guard found and decided (qcompiler/quant/guard.py GuardResult)."""

    fact = "guard-report"
    result: GuardResult
    sqnr: float

    def to_dict(self) -> dict[str, Any]:
        return {"sqnr_threshold_db": self.sqnr, **summary(self.result)}


class Guard(Pass["Guard.Options"]):
    """Keep float the few activation tensors that ruin an output (on by default in the named pipelines)."""

    name = "guard"
    requires = frozenset({"quantized", "fp32-reference", "qdq-plan"})
    provides = frozenset({"guard-report"})

    @dataclass(frozen=True)
    class Options:
        sqnr: float = option(20.0, "an output part whose health is below this (dB, vs FP32 on calibration samples: "
                                   "SQNR for values, -10 log10 of the disagreement for scores, classes and "
                                   "detections) is unhealthy", min=0.0)
        budget: float = option(0.02, "most MACs (fraction of the quantized layers') the guard may return to "
                                     "float", min=0.0, max=1.0)
        samples: int = option(4, "calibration samples the outputs are judged on", min=1)
        search_samples: int = option(1, "samples the search runs on (those that fared worst; when unhealthy)",
                                     min=1)
        runs: int = option(0, "most runs of the model the search may make (0: about what calibration cost: its "
                              "samples over the judged feeds' batch, within 16..48)", min=0)
        max_steps: int = option(6, "most float prefixes checked after the search", min=1)
        min_gain: float = option(0.25, "a remedy (another range, layers in float) is kept only when the worst part "
                                       "gains at least this many dB", min=0.0)

    @staticmethod
    def _runs(stats, ctx, graph) -> int:
        """The search's runs by default: calibration's samples over the rows of one judged feed (so the search
        costs about what calibration did), within 16..48."""
        from qcompiler.quant.guard import _feeds, _rows

        first = [f for f, _ in getattr(stats, "outputs", [])[:1]] or _feeds(ctx.calib_data, graph, 1)
        rows = _rows(first[0]) if first else 1
        n = int(getattr(stats, "samples", 0) or 0)
        return int(min(48, max(16, n // max(rows, 1))))

    @in_fp32  # a compiled fp16/bf16 graph: worked on in float32, its float type written back
    def call(self, graph: gs.Graph, ctx) -> PassResult:
        if ctx.calib_data is None:  # calibrated on random data (allow-random-calibration): nothing to judge with
            ctx.warning("QC604", "guard skipped: no calibration data to compare the outputs with FP32",
                        hint="pass --calib-data, or turn the guard off (trt-int8{guard=off})")
            ctx.state.put(GuardReport(GuardResult(True, float("nan"), float("nan"), {}, {},
                                                  note="skipped: no calibration data"), self.options.sqnr))
            return PassResult(False, {"float_tensors": 0})
        ref = ctx.state.require(FP32Reference, self.name).graph
        record = ctx.state.require(QuantizationRecord, self.name)
        o = self.options
        stats = record.stats

        def range_of(tensors: list[str], method: str) -> tuple[float, float] | None:
            """The range ``method`` gives the tensors (merged), from the statistics insert-qdq used."""
            if stats is None or any(t not in stats for t in tensors):
                return None
            lo, hi = np.inf, -np.inf
            for t in tensors:
                st = stats.tensors[t]
                if st.non_finite is not None or st.min is None:
                    return None
                try:
                    a, b = stats.range(t) if method == "current" else compute_range(st, method)
                except ValueError:  # that method needs a histogram this calibration did not collect
                    return None
                lo, hi = min(lo, float(np.min(a))), max(hi, float(np.max(b)))
            return lo, hi

        res = run_guard(graph, ref, record.plan, ctx.calib_data, sqnr=o.sqnr, budget=o.budget, samples=o.samples,
                        search_samples=o.search_samples, runs=o.runs or self._runs(stats, ctx, graph),
                        max_steps=o.max_steps, min_gain=o.min_gain, range_of=range_of,
                        diagnostics=ctx.diagnostics, threads=ctx.threads, kept=getattr(stats, "outputs", None))
        report = GuardReport(res, o.sqnr)
        ctx.state.put(report)
        record.recipe_used["guard"] = report.to_dict()  # written beside the output; `qcompiler report` shows it
        worst_part = min(res.parts_before, key=lambda k: res.parts_before[k])
        form = res.forms.get(worst_part, "values")
        if res.healthy_before:
            ctx.remark("QC604", f"guard: every output is healthy (worst: '{worst_part}', judged as {form}, at "
                                f"{res.worst_before:.1f} dB >= {o.sqnr:g})")
            return PassResult(False, {"float_tensors": 0})
        for d in res.decisions:
            what = ", ".join(d.tensors)
            if d.remedy == "float":
                layers = f"; layers now float: {', '.join(d.layers)}" if d.layers else ""
                ctx.remark("QC504", f"guard keeps {what} float: worst output part {d.worst_before:.1f} -> "
                                    f"{d.worst_after:.1f} dB ({100 * d.macs_fraction:.2f} % of MACs){layers}",
                           node=d.layers[0] if d.layers else None)
            else:
                ctx.remark("QC604", f"guard gives {what} the {d.remedy.split('=')[1]} range: worst output part "
                                    f"{d.worst_before:.1f} -> {d.worst_after:.1f} dB (no float compute)")
        if res.decisions:
            apply_decisions(graph, ref, res, record.plan)
            record.recipe_used["float_layers"] = dict(record.plan.float_nodes)
        n_float = sum(1 for d in res.decisions if d.remedy == "float")
        n_range = len(res.decisions) - n_float
        did = (f"{n_range} point(s) given another range, {n_float} kept float "
               f"({100 * res.float_macs_fraction:.2f} % of MACs, budget {100 * o.budget:g} %)")
        if res.worst_after < o.sqnr:
            ctx.warning("QC604", f"guard: '{worst_part}' was at {res.worst_before:.1f} dB (< {o.sqnr:g}); {did}: "
                                 f"{res.worst_after:.1f} dB",
                        hint="raise guard{budget=...}, try another calibrator (calib=...), or fine-tune")
        else:
            ctx.remark("QC604", f"guard: '{worst_part}' was at {res.worst_before:.1f} dB (< {o.sqnr:g}); {did}: "
                                f"worst part now {res.worst_after:.1f} dB")
        return PassResult(bool(res.decisions), {
            "float_tensors": sum(len(d.tensors) for d in res.decisions if d.remedy == "float"),
            "new_ranges": sum(len(d.tensors) for d in res.decisions if d.remedy != "float"),
            "float_layers": sum(len(d.layers) for d in res.decisions)})
