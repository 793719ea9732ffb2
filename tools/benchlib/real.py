"""The development set (models/real/, ../shared/real-models.md): every shipped model through FP32,
onnxruntime.quantization, NVIDIA ModelOpt and qcompiler's named pipelines, in one run; task metric against FP32,
compile time, peak RSS and the guard's time ratio.  Each compile and each evaluation runs in its own process."""

from __future__ import annotations

import numpy as np

from .common import MODELOPT_PY, log, modelopt_available, peak_rss_mib, tag
from .workers import FeedReader, register, run_task

#: qcompiler's pipelines, as a new user would call them
QC = [("trt-int8", "default (fp16 float parts)"), ("trt-int8{float=fp32}", "float parts fp32"),
      ("trt-int8{float=bf16}", "float parts bf16"), ("trt-int8{guard=off}", "guard off"),
      ("trt-fp8", "fp8 default (fp16 float parts)"), ("trt-fp8{float=fp32}", "fp8, float parts fp32"),
      ("trt-int4-weights", "int4 weights default"), ("ort-int4-weights", "int4 weights as MatMulNBits")]
ORT = ["minmax", "percentile", "entropy"]
MO = [("int8", "max"), ("int8", "entropy"), ("fp8", "max")]
QUICK_QC = [("trt-int8", "default"), ("trt-int8{guard=off}", "guard off")]
#: models also measured as fp16 conversions (onnxconverter-common), float32 and float16 interface
FP16_MODELS = ["svtr-rec", "db-det", "u2net"]  # (onnxconverter-common writes invalid YOLOv8, MiniLM and SLANet
#                                                models: ORT refuses them as converted)
FP16_QC = [("trt-int8", "default"), ("trt-int8{float=fp32}", "float parts fp32"), ("trt-fp8", "fp8 default")]


def fp16_form(src: str, out: str, keep_io: bool) -> str:
    """The model converted to fp16 by onnxconverter-common (what users bring), inputs/outputs float32 or fp16."""
    import onnx
    from onnxconverter_common import float16

    if not __import__("os").path.exists(out):
        m = float16.convert_float_to_float16(onnx.load(src), keep_io_types=keep_io, disable_shape_infer=False)
        onnx.save(m, out)
    return out
QUICK_MODELS = ["minilm-l3"]


def feeds_of(folder: str) -> list[dict[str, np.ndarray]]:
    return FeedReader(folder).feeds


def stacked(folder: str) -> dict[str, np.ndarray]:
    """The feeds of a folder as one array per input, concatenated along the batch axis (ModelOpt's form); feeds
    whose other dims differ (token sequences of different lengths) are zero-padded to the longest, which an
    attention mask of zeros leaves meaningless and ModelOpt's statistics see as padding."""
    feeds = feeds_of(folder)
    out = {}
    for k in feeds[0]:
        arrs = [f[k] for f in feeds]
        shape = np.max([a.shape for a in arrs], axis=0)
        padded = []
        for a in arrs:
            pad = [(0, 0)] + [(0, int(s) - d) for s, d in zip(shape[1:], a.shape[1:])]
            padded.append(np.pad(a, pad))
        out[k] = np.concatenate(padded)
    return out


@register("real_modelopt")
def w_real_modelopt(task: dict) -> dict:
    """ModelOpt ONNX PTQ (its own virtualenv) with the development set's calibration feeds."""
    import time

    import modelopt.onnx.quantization as moq

    data = stacked(task["calib"])
    t0 = time.perf_counter()
    moq.quantize(onnx_path=task["src"], quantize_mode=task["mode"], calibration_data=data,
                 calibration_method=task["method"], output_path=task["out"], high_precision_dtype="fp32",
                 calibration_eps=["cpu"])
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


@register("real_eval")
def w_real_eval(task: dict) -> dict:
    """A development-set model's metric for one output (in its own process), with Q/DQ counts, lint and the
    share of MACs left float."""
    from qcompiler.ir import load_model
    from qcompiler.ir.graph import iter_graphs
    from qcompiler.quant.guard import layer_macs
    from qcompiler.quant.lint import lint_model
    from qcompiler.zoo import real

    m = real.get(task["model"])
    ev = m.evaluate(task["src"], task["out"])
    g = load_model(task["out"])
    ops = [n.op for sub in iter_graphs(g) for n in sub.nodes]
    macs = layer_macs(load_model(task["src"]))
    quantized = set()
    for sub in iter_graphs(g):
        for n in sub.nodes:
            for w in n.inputs[1:3] if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU") else []:
                if w.inputs and w.inputs[0].op == "DequantizeLinear":
                    quantized.add(n.name)
    total = sum(macs.values()) or 1.0
    lint = lint_model(task["out"])
    return {**ev, "q": ops.count("QuantizeLinear"), "dq": ops.count("DequantizeLinear"),
            "float_macs_pct": round(100 * sum(v for k, v in macs.items() if k not in quantized) / total, 2),
            "lint_errors": lint.n_errors, "lint_warnings": lint.n_warnings}


class _Rows:
    """Rows measured in this work folder, kept in ``real-rows.jsonl`` as they come: ``--resume`` reuses them (a
    run of every model and tool takes hours on 2 cores; an interrupted one goes on where it stopped)."""

    def __init__(self, bench):
        import json

        self.path = bench.work / "real-rows.jsonl"
        self.done: dict[str, dict] = {}
        if getattr(bench.args, "resume", False) and self.path.exists():
            for line in self.path.read_text().splitlines():
                r = json.loads(line)
                # failures are measured again, but not a worker killed for memory (it would be killed again)
                if r.get("ok") or str(r.get("error", "")).startswith("worker exited -9"):
                    self.done[r["_key"]] = r

    def get(self, key: str, measure) -> dict:
        import json

        if key in self.done:
            log(f"[real] {key}: measured before (--resume)")
            return {k: v for k, v in self.done[key].items() if k != "_key"}
        r = measure()
        with open(self.path, "a") as f:
            f.write(json.dumps({**r, "_key": key}, default=str) + "\n")
        return r


def run_real(bench) -> list[dict]:
    from qcompiler.zoo import real

    kept = _Rows(bench)
    quick = bench.args.quick
    names = [n for n in (bench.args.models or (QUICK_MODELS if quick else real.NAMES)) if n in real.NAMES]
    rows: list[dict] = []
    mo_ok, mo_why = modelopt_available()
    if not mo_ok:
        bench.results["modelopt"] = mo_why
    for name in names:
        m = real.get(name)
        log(f"[real] {name}: fetching the model and building its inputs")
        src, calib = str(m.onnx_path()), str(m.calib_data())
        m.data_dir("eval")
        base = {"model": name, "metric_name": m.metric, "goal": str(m.goal)}

        def evaluated(r: dict, out: str) -> dict:
            if not r.get("ok"):
                return r
            ev = run_task({"kind": "real_eval", "model": name, "src": src, "out": out})
            if not ev.get("ok"):
                return {**r, "ok": False, "error": "evaluation failed: " + str(ev.get("error"))}
            ev.pop("ok")
            return {**r, **ev}

        fp = kept.get(f"{name} fp32", lambda: run_task({"kind": "real_eval", "model": name, "src": src,
                                                         "out": src}))
        rows.append({**base, "tool": "fp32", "setting": "-", **fp})
        for pipeline, what in (QUICK_QC if quick else QC):
            log(f"[real] {name} qcompiler {pipeline}")
            out = str(bench.work / f"real-{name}-{tag(pipeline)}.onnx")
            r = kept.get(f"{name} qcompiler {pipeline}", lambda: evaluated(run_task(
                {"kind": "qcompiler", "src": src, "out": out, "pipeline": pipeline, "calib": calib, "eval": False}),
                out))
            rows.append({**base, "tool": "qcompiler", "setting": what, "method": pipeline, **r})
        for meth in ORT[:1] if quick else ORT:
            log(f"[real] {name} onnxruntime {meth}")
            out = str(bench.work / f"real-{name}-ort-{meth}.onnx")
            r = kept.get(f"{name} ort {meth}", lambda: evaluated(run_task(
                {"kind": "hard_ort", "src": src, "out": out, "method": meth, "calib": calib}), out))
            rows.append({**base, "tool": "ort", "setting": f"quantize_static {meth}", "method": meth, **r})
        if mo_ok:
            for mode, meth in MO[:1] if quick else MO:
                log(f"[real] {name} modelopt {mode} {meth}")
                out = str(bench.work / f"real-{name}-mo-{mode}-{meth}.onnx")
                r = kept.get(f"{name} modelopt {mode} {meth}", lambda: evaluated(run_task(
                    {"kind": "real_modelopt", "src": src, "out": out, "method": meth, "mode": mode, "calib": calib},
                    python=MODELOPT_PY), out))
                rows.append({**base, "tool": "modelopt", "setting": f"{mode} {meth}", "method": f"{mode} {meth}",
                             **r})
        _guard_ratio(rows, name)
        if name in FP16_MODELS and not quick:
            for keep in (True, False):
                form = "fp16, float32 IO" if keep else "fp16, fp16 IO"
                f16 = fp16_form(src, str(bench.work / f"real-{name}-fp16-{int(keep)}.onnx"), keep)
                r = kept.get(f"{name} [{form}] as converted", lambda: evaluated({"ok": True}, f16))
                rows.append({**base, "tool": "fp16 model", "setting": form, "method": f"[{form}]", **r})
                for pipeline, what in FP16_QC:
                    log(f"[real] {name} [{form}] qcompiler {pipeline}")
                    out = str(bench.work / f"real-{name}-fp16-{int(keep)}-{tag(pipeline)}.onnx")
                    r = kept.get(f"{name} [{form}] qcompiler {pipeline}", lambda: evaluated(run_task(
                        {"kind": "qcompiler", "src": f16, "out": out, "pipeline": pipeline, "calib": calib,
                         "eval": False}), out))
                    rows.append({**base, "tool": "qcompiler", "setting": f"{what} [{form}]",
                                 "method": f"[{form}] {pipeline}", **r})
    return rows


def _guard_ratio(rows: list[dict], name: str) -> None:
    """The default's compile time over ``guard=off``'s, on the default's row."""
    by = {r.get("method"): r for r in rows if r["model"] == name and r.get("tool") == "qcompiler"}
    a, b = by.get("trt-int8"), by.get("trt-int8{guard=off}")
    if a and b and a.get("ok") and b.get("ok") and b.get("wall_s"):
        a["guard_ratio"] = round(a["wall_s"] / b["wall_s"], 2)


def render_real(out: list[str], res: dict, rows: list[dict]) -> None:
    from .render import col, fmt, table

    def metric(r):
        v = r.get("metric")
        return f"**{v:.4f}**" if isinstance(v, float) and r.get("tool") == "qcompiler" and \
            r.get("method") == "trt-int8" else fmt(v, 4)

    def extras(r):
        skip = {"metric", "sqnr_db", "ok", "wall_s", "peak_rss_mib", "q", "dq", "float_macs_pct", "lint_errors",
                "lint_warnings", "guard", "finetune_s", "finetune_ms_per_iter", "calib_s", "passes_s",
                "passes_wo_calib_s", "guard_ratio", "model", "metric_name", "goal", "tool", "setting", "method",
                "trace", "error"}
        return ", ".join(f"{k} {fmt(v, 3)}" for k, v in r.items() if k not in skip and not isinstance(v, dict))

    def guard(r):
        g = r.get("guard")
        if not g:
            return "-"
        if g.get("healthy_before"):
            return "healthy"
        return f"{len(g.get('decisions') or [])} fix(es)"

    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        table(out, f"{name}: {rs[0]['metric_name']} (goal {rs[0]['goal']})", [
            ("tool", col("tool")), ("setting", col("setting")), ("metric", metric), ("other measures", extras),
            ("float MACs %", col("float_macs_pct")), ("Q", col("q")),
            ("lint err/warn", lambda r: f"{r.get('lint_errors', '-')}/{r.get('lint_warnings', '-')}"),
            ("compile s", col("wall_s", 1)), ("peak RSS MiB", col("peak_rss_mib", 0)),
            ("guard", guard), ("guard time ratio", col("guard_ratio"))], rs, keys=2)
    if "modelopt" in res:
        out += [f"NVIDIA ModelOpt: skipped: {res['modelopt']}", ""]

