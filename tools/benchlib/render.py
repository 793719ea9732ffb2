"""Markdown for the benchmark's results: one table per section, described as columns."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .real import render_real

Cell = Callable[[dict], str]


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def col(key: str, nd: int = 2, code: bool = False) -> Cell:
    """A cell showing ``row[key]`` (numbers with ``nd`` decimals; ``code``: in backticks)."""
    def cell(r: dict) -> str:
        v = fmt(r.get(key), nd)
        return f"`{v}`" if code and v != "-" else v
    return cell


def lint(r: dict) -> str:
    return f"{r.get('lint_errors', '-')}/{r.get('lint_warnings', '-')}"


def table(out: list[str], title: str, columns: list[tuple[str, Cell]], rows: list[dict], *, keys: int,
          intro: str = "") -> None:
    """A titled table; a failed row keeps its first ``keys`` cells and says why in the next one."""
    out += [f"### {title}", ""]
    if intro:
        out += [intro, ""]
    out += ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [fn(r) for _, fn in columns]
        if not r.get("ok", True):
            cells = cells[:keys] + [f"failed: {str(r.get('error', '?'))[:90]}"] + [""] * (len(columns) - keys - 1)
        out.append("| " + " | ".join(cells) + " |")
    out.append("")


def _accuracy(out: list[str], res: dict, rows: list[dict]) -> None:
    def q(r):  # the fp32 reference row has only a latency
        return r["tool"] != "fp32"

    table(out, "Accuracy (digits test split, 540 images; SQNR of the logits vs FP32)", [
        ("model", col("model")), ("tool", col("tool")), ("method", lambda r: f"`{r['method']}`" if q(r) else "-"),
        ("top-1 FP32", lambda r: fmt(r.get("top1_fp32")) if q(r) else ""),
        ("top-1", lambda r: fmt(r.get("top1")) if q(r) else ""),
        ("SQNR dB", lambda r: fmt(r.get("sqnr_db"), 1) if q(r) else ""),
        ("Q", lambda r: str(r.get("q", "-")) if q(r) else ""), ("DQ", lambda r: str(r.get("dq", "-")) if q(r) else ""),
        ("lint err/warn", lambda r: lint(r) if q(r) else ""), ("ORT ms (batch 8)", col("latency_ms_b8", 3)),
        ("wall s", lambda r: fmt(r.get("wall_s")) if q(r) else ""),
        ("peak RSS MiB", lambda r: fmt(r.get("peak_rss_mib"), 0) if q(r) else "")], rows, keys=3)
    if "modelopt" in res:
        out += [f"NVIDIA ModelOpt: skipped: {res['modelopt']}", ""]


def _outlier(out: list[str], res: dict, rows: list[dict]) -> None:
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["model"], r["tool"], r["method"]), {})[r["data"]] = \
            r.get("sqnr_db") if r.get("ok", True) else None
    merged = []
    for (m, tool, meth), v in cells.items():
        a, b = v.get("clean"), v.get("outlier")
        merged.append({"model": m, "tool": tool, "method": meth, "clean": a, "outlier": b,
                       "change": f"{b - a:+.1f}" if a is not None and b is not None else "-"})
    table(out, "One outlier in the calibration set (image 17 of 256 scaled by 8; logits SQNR dB)", [
        ("model", col("model")), ("tool", col("tool")), ("calibrator", col("method")), ("clean", col("clean", 1)),
        ("with the outlier", col("outlier", 1)), ("change", col("change"))], merged, keys=3)


def _calib(out: list[str], res: dict, rows: list[dict]) -> None:
    table(out, "Calibration on the ResNet-50-sized model (224x224, batch 8)", [
        ("samples", col("samples")), ("tool", col("tool")), ("method", col("method")), ("rounds", col("rounds")),
        ("calibration s", col("calib_s")), ("plain inference s", col("plain_s")),
        ("ratio", lambda r: f"**{fmt(r.get('ratio'))}**"), ("peak RSS MiB", col("peak_rss_mib", 0))], rows, keys=3,
        intro="Calibration and plain inference alternate in one process; times and ratio are medians over the rounds "
              "(ratios of every round in the JSON).  Peak RSS: after the first calibration.")


def _calib_memory(out: list[str], res: dict, rows: list[dict]) -> None:
    """One row per (data form, method): peak RSS at the smallest and largest sample count and the change."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["data"], r["method"]), {})[r["samples"]] = r
    counts = sorted({r["samples"] for r in rows})
    lo, hi = counts[0], counts[-1]
    merged = []
    for (data, meth), v in by.items():
        a, b = v.get(lo, {}).get("peak_rss_mib"), v.get(hi, {}).get("peak_rss_mib")
        merged.append({"data": data, "method": meth, "lo": a, "hi": b,
                       "change": f"**{100 * (b - a) / a:+.1f} %**" if a and b else "-",
                       "s": v.get(hi, {}).get("calib_s"), "ok": a is not None and b is not None})
    table(out, f"Calibration memory, data loading included (MobileNetV2 224x224, batch 8): {lo} vs {hi} samples", [
        ("data on disk", col("data")), ("method", col("method")), (f"peak RSS MiB at {lo}", col("lo", 0)),
        (f"at {hi}", col("hi", 0)), ("change", col("change")), (f"calibration s at {hi}", col("s"))], merged,
        keys=2, intro="Each measurement in a fresh process: load the model, open the data as the CLI does, "
                      "calibrate; peak RSS is the process's maximum resident set (ru_maxrss).")


def _hard(out: list[str], res: dict, rows: list[dict]) -> None:
    def sq(r):
        d = r.get("sqnr_db") or {}
        return ", ".join(f"{k} {v:.1f}" for k, v in d.items())

    def guard(r):
        g = r.get("guard")
        if not g:
            return "-"
        if g.get("healthy_before"):
            return "healthy"
        n = len(g.get("decisions") or [])
        return f"{g['worst_before_db']:.1f} -> {g['worst_after_db']:.1f} dB, {n} fix(es)"

    for model in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model]
        metric = sub[0].get("metric_name", "metric")
        fp = next((r.get("fp32_metric") for r in sub if r.get("fp32_metric") is not None), None)
        table(out, f"{model}: {metric}" + (f" (FP32: {fp:.2f})" if fp is not None else " (FP32: 1.0)"), [
            ("tool", col("tool")), ("setting", col("setting")), (metric, col("metric", 4)),
            ("output SQNR dB", sq), ("float MACs %", col("float_macs_pct", 2)), ("Q", col("q")), ("DQ", col("dq")),
            ("lint err/warn", lint), ("guard", guard), ("wall s", col("wall_s"))], sub, keys=2)


def _zoo_defaults(out: list[str], res: dict, rows: list[dict]) -> None:
    by: dict = {}
    for r in rows:
        by.setdefault(r["model"], {})[r["setting"]] = r
    merged = []
    for model, v in by.items():
        a, b = v.get("today's defaults", {}), v.get("before", {})
        g = a.get("guard") or {}
        merged.append({"model": model, "now": a.get("sqnr_db"), "before": b.get("sqnr_db"),
                       "change": f"{a['sqnr_db'] - b['sqnr_db']:+.2f}" if a.get("sqnr_db") is not None and
                       b.get("sqnr_db") is not None else "-",
                       "guard": ("healthy, nothing changed" if g.get("healthy_before") else
                                 f"{len(g.get('decisions') or [])} decision(s)") if g else "-",
                       "t_now": a.get("wall_s"), "t_before": b.get("wall_s"), "ok": bool(a.get("ok") and b.get("ok"))})
    table(out, "Zoo models: today's trt-int8 defaults against the defaults before smoothing and the guard", [
        ("model", col("model")), ("SQNR dB now", col("now", 2)), ("before", col("before", 2)),
        ("change dB", col("change")), ("guard", col("guard")), ("compile s now", col("t_now")),
        ("before", col("t_before"))], merged, keys=1,
        intro="Output SQNR vs FP32 on 16 held-out samples (digits test images, or fresh random inputs for the "
              "random-weight architectures); calibration on 128 (digits) or 32 samples.")


def _rounding(out: list[str], res: dict, rows: list[dict]) -> None:
    table(out, "Weight rounding: logits SQNR vs FP32 on held-out data, top-1 on the digits test split", [
        ("model", col("model")), ("bits", col("bits")), ("method", col("method")), ("SQNR dB", col("sqnr_db", 1)),
        ("top-1", col("top1")), ("wall s", col("wall_s")), ("peak RSS MiB", col("peak_rss_mib", 0))], rows, keys=3,
        intro="W4A8 rows start from the same round-to-nearest file; AdaRound and LSQ times are the fine-tuning alone "
              "(qcompiler finetune), GPTQ's the whole compile.")


def _weight_only(out: list[str], res: dict, rows: list[dict]) -> None:
    def sq(r):
        d = r.get("sqnr_db")
        if isinstance(d, dict):
            return ", ".join(f"{k} {v:.1f}" for k, v in d.items())
        return fmt(d, 1) if d is not None else "-"

    table(out, "Blocked int4 weight-only (MatMul/Gemm; activations float)", [
        ("model", col("model")), ("tool", col("tool")), ("method", col("method")), ("output SQNR dB", sq),
        ("metric", lambda r: fmt(r.get("metric", r.get("top1")), 4)), ("MiB (FP32)", lambda r: (
            f"{fmt(r.get('mib'), 3)} ({fmt(r.get('fp32_mib'), 3)})" if r.get("mib") is not None else "-")),
        ("lint errors", col("lint_errors")), ("wall s", col("wall_s"))], rows, keys=3,
        intro="metric: top-1 on the digits test split (transformer), embedding cosine to FP32 (encoder).  "
              "onnxruntime's MatMulNBits is a contrib operator (onnxruntime only; lint-trt cannot read it).")


def _cle(out: list[str], res: dict, data: dict) -> None:
    out += ["### Cross-layer equalization", ""]
    for entry in data["layers"]:
        rep = entry["layers"]
        sb = [x["spread_before"] for x in rep]
        sa = [x["spread_after"] for x in rep]
        out += [f"**{entry['model']}**: {len(rep)} layers; median channel-range ratio {np.median(sb):.1f} -> "
                f"{np.median(sa):.1f}, max {max(sb):.1f} -> {max(sa):.1f}; mean per-tensor int8 weight SQNR "
                f"{np.mean([x['sqnr_before'] for x in rep]):.1f} -> {np.mean([x['sqnr_after'] for x in rep]):.1f} dB",
                ""]
        shown = [dict(x, ok=True) for x in rep[:12]]
        if len(rep) > 12:
            shown.append({"layer": f"... {len(rep) - 12} more"})
        table(out, f"{entry['model']}: per layer", [
            ("layer", col("layer", code=True)), ("range ratio before", col("spread_before", 1)),
            ("after", col("spread_after", 1)), ("int8 per-tensor SQNR before dB", col("sqnr_before", 1)),
            ("after dB", col("sqnr_after", 1))], shown, keys=1)
    table(out, "Per-tensor and 4-bit weights with and without CLE", [
        ("model", col("model")), ("weights", col("weights")), ("pipeline", col("pipeline", code=True)),
        ("top-1", col("top1")), ("SQNR dB", col("sqnr_db", 1))], data["accuracy"], keys=3)


#: section -> (title, columns, key cells) for the plain one-row-per-measurement tables
TABLES: dict[str, tuple[str, list[tuple[str, Cell]], int]] = {
    "torch": ("qcompiler.compile_torch with a DataLoader (export, calibration, compile in one call)", [
        ("model", col("model")), ("samples", col("samples")), ("wall s", col("wall_s", 1)),
        ("peak RSS MiB", col("peak_rss_mib", 0))], 2),
    "recovery": ("Accuracy recovery (digits test split)", [
        ("model", col("model")), ("setting", col("setting")), ("pipeline", col("pipeline", code=True)),
        ("top-1", col("top1")), ("SQNR dB", col("sqnr_db", 1)), ("fine-tuning s", col("finetune_s", 1)),
        ("ms/iteration", col("finetune_ms_per_iter", 1)), ("lint err/warn", lint)], 3),
    "arch": ("Architectures with random weights (32 calibration / 16 evaluation samples, standard normal; SQNR of "
             "the outputs vs FP32)", [
        ("model", col("model")), ("tool", col("tool")), ("method", col("method", code=True)),
        ("SQNR dB", col("sqnr_db", 1)), ("Q", col("q")), ("DQ", col("dq")), ("lint err/warn", lint),
        ("wall s", col("wall_s")), ("peak RSS MiB", col("peak_rss_mib", 0))], 3),
    "compile": ("Compile time without calibration (statistics cached), trt-int8", [
        ("graph", col("graph")), ("nodes after", col("nodes")), ("passes s", col("passes_s", 3)),
        ("total s (load + passes + save)", col("total_s", 3)), ("peak RSS MiB", col("peak_rss_mib", 0))], 1),
    "latency": ("onnxruntime CPU latency (ORT_ENABLE_ALL, median)", [
        ("model", col("model")), ("batch", col("batch")), ("variant", col("variant")),
        ("median ms", col("median_ms", 3))], 3),
}

def _executor(out: list[str], res: dict, rows: list[dict]) -> None:
    table(out, "Executor: one process vs Ray workers (2-core machine)", [
        ("work", col("work")), ("executor", col("executor")), ("wall s", col("wall_s")),
        ("speedup", col("speedup")), ("Ray start-up s", col("startup_s")), ("tasks", col("tasks")),
        ("driver peak RSS MiB", col("driver_rss_mib", 0)), ("worker peak RSS MiB (max)", col("worker_rss_mib", 0)),
        ("result identical", col("same"))], rows, keys=2,
        intro="Wall time of the work alone (Ray's start-up apart); each row in a fresh process; 'identical' "
              "compares a digest of every calibrated range or every layer's sensitivity with the one-process run.")


#: sections rendered by a function of their own
CUSTOM: dict[str, Callable[[list[str], dict, Any], None]] = {
    "accuracy": _accuracy, "outlier": _outlier, "calib": _calib, "cle": _cle,
    "calib-memory": _calib_memory, "hard": _hard,
    "zoo-defaults": _zoo_defaults, "executor": _executor, "rounding": _rounding, "weight-only": _weight_only,
    "real": render_real}


def render(res: dict) -> str:
    out = [f"Machine: {res['machine']}", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), "",
           f"Command: `{res['command']}`", ""]
    for name, data in res["sections"].items():
        if name in CUSTOM:
            CUSTOM[name](out, res, data)
        elif name in TABLES:
            title, columns, keys = TABLES[name]
            table(out, title, columns, data, keys=keys)
    return "\n".join(out)
