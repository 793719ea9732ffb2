#!/usr/bin/env python
"""Benchmark qcompiler against onnxruntime.quantization (and NVIDIA ModelOpt when it runs here).

Every measurement runs in its own process (peak RSS is that process's), and both sides are
measured in the same invocation, so the ratios compare like with like.

    python tools/bench.py --quick                      # a few minutes on 2 cores
    python tools/bench.py                              # the full run behind docs/benchmarks.md
    python tools/bench.py --sections accuracy,latency --models resnet,mobilenetv2

Sections:
  accuracy  digits-trained zoo models: top-1 and logits SQNR vs FP32 for qcompiler's pipelines and
            quantize_static (QDQ, per-channel, symmetric activations, MinMax/Entropy/Percentile);
            wall time, peak RSS, Q/DQ counts, lint-trt findings of every output
  outlier   the same models calibrated on 256 images of which one is scaled by 8: what one bad sample
            costs each calibrator (qcompiler's and quantize_static's)
  calib     ResNet-50-sized model: calibration time / plain onnxruntime inference over the same samples,
            peak RSS, at several sample counts (memory must stay flat for qcompiler)
  compile   compile time without calibration (statistics cached) on graphs of 1x, 4x, 16x the node count
  latency   onnxruntime CPU latency (median) of FP32, qcompiler trt-int8 / ort-int8 and quantize_static outputs
  cle       CLE per-layer range spread and per-tensor int8 weight SQNR; per-tensor/4-bit weight accuracy
  recovery  bias correction, mixed precision, AdaRound/LSQ when those passes exist
  arch      random-weight architectures (ResNet-18, MobileNetV2, EfficientNet-B0, a decoder): output SQNR of
            qcompiler's recovery pipelines, quantize_static and ModelOpt

Output: a Markdown report on stdout (and --md FILE) and all numbers as JSON (--json FILE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ["resnet", "resnet-bottleneck", "mobilenetv2", "conv1x1", "transformer"]
QUICK_DIGITS = ["resnet", "mobilenetv2", "transformer"]
ARCHS = ["resnet18", "mobilenetv2-full", "efficientnet-b0", "decoder"]
MODELOPT_PY = os.environ.get("QCOMPILER_MODELOPT_PYTHON", "/tmp/mo-venv/bin/python")


# ------------------------------------------------------------------------------------------------
# worker side: one measurement per process
# ------------------------------------------------------------------------------------------------


def _tag(text: str) -> str:
    """Stable short file tag (str hash() changes with PYTHONHASHSEED)."""
    return hashlib.sha1(str(text).encode()).hexdigest()[:8]


def peak_rss_mib() -> float:
    """Peak resident set of this process, in MiB.

    Linux keeps ``ru_maxrss`` across ``execve``, so a worker started by a large driver process would
    report the driver's size as its floor; ``VmHWM`` belongs to the process's own address space.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def eval_model(fp32: str, q: str, digits_model: bool, eval_npz: str | None = None) -> dict:
    from qcompiler.ir import load_model
    from qcompiler.ir.runtime import Session
    from qcompiler.testing import sqnr_db

    if digits_model:
        from qcompiler.zoo import digits

        d = digits.load()
        x, y = d["x_test"], d["y_test"]
    else:
        x, y = np.load(eval_npz)["input"], None
    a = Session(load_model(fp32), opt_level="basic").run({"input": x})[0]
    b = Session(load_model(q), opt_level="basic").run({"input": x})[0]
    out = {"sqnr_db": round(sqnr_db(a, b), 2)}
    if y is not None:
        out["top1_fp32"] = round(100.0 * float(np.mean(a.argmax(1) == y)), 2)
        out["top1"] = round(100.0 * float(np.mean(b.argmax(1) == y)), 2)
    return out


def model_facts(path: str) -> dict:
    from qcompiler.inspection import inspect_model
    from qcompiler.quant.lint import lint_model

    info = inspect_model(path)
    lint = lint_model(path)
    return {"q": info.qdq["quantize"], "dq": info.qdq["dequantize"], "lint_errors": lint.n_errors,
            "lint_warnings": lint.n_warnings, "lint_rules": sorted({d.rule for d in lint.findings if d.rule}),
            "bytes": os.path.getsize(path)}


class NpzReader:
    """onnxruntime CalibrationDataReader over an .npz (batches of ``batch``)."""

    def __init__(self, path: str, batch: int = 8, name: str = "input"):
        self.x = np.load(path)["input"]
        self.batch, self.name, self.i = batch, name, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: b}

    def rewind(self):
        self.i = 0


def plain_inference(model: str, npz: str, batch: int = 8, threads: int | None = None) -> float:
    """onnxruntime alone over the same samples (ORT_ENABLE_ALL, like both calibrators)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    r = NpzReader(npz, batch)
    names = [o.name for o in sess.get_outputs()]
    while (f := r.get_next()) is not None:
        sess.run(names, f)
    return time.perf_counter() - t0


def ort_preprocess(src: str, dst: str) -> str:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(src, dst, skip_symbolic_shape=True)
    return dst


def w_qcompiler(task: dict) -> dict:
    from qcompiler.api import compile_model
    from qcompiler.bridge.results import FinetuneResult

    t0 = time.perf_counter()
    res = compile_model(task["src"], task["out"], task["pipeline"], calib_data=task["calib"],
                        config=task.get("config"), calib_cache=task.get("cache"),
                        calib_options={"batch_size": task.get("batch", 8)})
    wall = time.perf_counter() - t0
    ft = res.context.state.get(FinetuneResult)
    out = {"wall_s": round(wall, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
           "finetune_s": round(ft.seconds, 2) if ft else None,
           "finetune_ms_per_iter": round(1000 * ft.seconds_per_iteration, 2) if ft else None,
           "calib_s": round(res.context.timings.get("calibrate.total", 0.0), 3),
           "passes_s": round(sum(r.seconds for r in res.result.records), 3),
           "passes_wo_calib_s": round(sum(r.seconds for r in res.result.records if r.name != "calibrate"), 3)}
    if task.get("eval", True):
        out.update(eval_model(task["src"], task["out"], task["digits"], task.get("eval_npz")))
        out.update(model_facts(task["out"]))
    return out


def w_ort(task: dict) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[task["method"]]
    t0 = time.perf_counter()
    pre = ort_preprocess(task["src"], task["out"] + ".pre.onnx")
    if task.get("config") == "u8s8":
        # onnxruntime's own defaults for CPU: asymmetric uint8 activations, symmetric int8 weights
        act, extra = QuantType.QUInt8, {}
    else:
        # what TensorRT needs: symmetric int8 everywhere (zero point 0)
        act, extra = QuantType.QInt8, {"ActivationSymmetric": True, "WeightSymmetric": True}
    quantize_static(pre, task["out"], NpzReader(task["calib"], task.get("batch", 8)), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                    calibrate_method=method, extra_options=extra)
    wall = time.perf_counter() - t0
    out = {"wall_s": round(wall, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}
    if task.get("eval", True):
        out.update(eval_model(task["src"], task["out"], task["digits"], task.get("eval_npz")))
        out.update(model_facts(task["out"]))
    return out


def _calib_rounds(task: dict, calibrate_once) -> dict:
    """Calibration and plain inference alternate ``rounds`` times in this process; the ratio is the median
    of the per-round ratios (cancels the slow drift of a shared machine).  Peak RSS is taken right after
    the first calibration, before anything else runs."""
    rounds = int(task.get("rounds", 1))
    calib, plain, rss, extra = [], [], None, {}
    for _ in range(rounds):
        t, extra = calibrate_once()
        if rss is None:
            rss = peak_rss_mib()
        calib.append(t)
        plain.append(plain_inference(task["src"], task["calib"], task.get("batch", 8)))
    ratios = [c / p for c, p in zip(calib, plain)]
    return {"calib_s": round(float(np.median(calib)), 3), "plain_s": round(float(np.median(plain)), 3),
            "ratio": round(float(np.median(ratios)), 2), "ratios": [round(r, 3) for r in ratios],
            "rounds": rounds, "peak_rss_mib": round(rss, 1), **extra}


def w_ort_calib(task: dict) -> dict:
    """onnxruntime.quantization's calibration step alone (create_calibrator + collect + compute)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[task["method"]]

    def once():
        d = tempfile.mkdtemp(prefix="ortcal-")
        t0 = time.perf_counter()
        cal = create_calibrator(task["src"], op_types_to_calibrate=None,
                                augmented_model_path=os.path.join(d, "aug.onnx"), calibrate_method=method,
                                extra_options={"symmetric": True})
        cal.collect_data(NpzReader(task["calib"], task.get("batch", 8)))
        cal.compute_data()
        t = time.perf_counter() - t0
        del cal
        shutil.rmtree(d, ignore_errors=True)
        return t, {}

    return _calib_rounds(task, once)


def w_qc_calib(task: dict) -> dict:
    """qcompiler's calibrate pass alone on an FP32 graph (fold-bn done beforehand, not timed)."""
    from qcompiler.api import make_context
    from qcompiler.ir import load_model
    from qcompiler.pm import run_pipeline

    def once():
        g = load_model(task["src"])
        ctx = make_context(calib_data=task["calib"], calib_options={"batch_size": task.get("batch", 8)})
        t0 = time.perf_counter()
        run_pipeline(g, f"calibrate{{method={task['method']}}}", ctx)
        t = time.perf_counter() - t0
        return t, {"run_s": round(ctx.timings.get("calibrate.run", 0), 3),
                   "observe_s": round(ctx.timings.get("calibrate.observe", 0), 3)}

    return _calib_rounds(task, once)


def w_latency(task: dict) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(task["model"], so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal([task["batch"]] + task["shape"]).astype(np.float32)
    for _ in range(3):
        sess.run(None, {name: x})
    ts = []
    for _ in range(task.get("runs", 20)):
        t = time.perf_counter()
        sess.run(None, {name: x})
        ts.append(time.perf_counter() - t)
    return {"median_ms": round(1000 * float(np.median(ts)), 3)}


def w_compile_only(task: dict) -> dict:
    """Compile with calibration statistics already cached: what a rebuild costs."""
    from qcompiler.api import compile_model

    t0 = time.perf_counter()
    res = compile_model(task["src"], task["out"], task["pipeline"], calib_data=task["calib"], calib_cache=task["cache"])
    total = time.perf_counter() - t0
    cached = any(r.name == "calibrate" and r.stats.get("cached") for r in res.result.records)
    return {"total_s": round(total, 3), "passes_s": round(sum(r.seconds for r in res.result.records), 3),
            "nodes": len(res.graph.nodes), "cached": cached, "peak_rss_mib": round(peak_rss_mib(), 1)}


def w_modelopt(task: dict) -> dict:
    """Runs inside ModelOpt's own virtualenv (its pins conflict with ours)."""
    import modelopt.onnx.quantization as moq

    t0 = time.perf_counter()
    data = np.load(task["calib"])["input"]
    moq.quantize(onnx_path=task["src"], quantize_mode="int8", calibration_data=data,
                 calibration_method=task["method"], output_path=task["out"], high_precision_dtype="fp32",
                 calibration_eps=["cpu"])
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


WORKERS = {"qcompiler": w_qcompiler, "ort": w_ort, "ort_calib": w_ort_calib, "qc_calib": w_qc_calib,
           "latency": w_latency, "compile_only": w_compile_only, "modelopt": w_modelopt}


def worker_main(spec: str) -> None:
    task = json.loads(spec)
    try:
        out = WORKERS[task["kind"]](task)
        out["ok"] = True
    except Exception as exc:  # the orchestrator records failures, it does not hide them
        import traceback

        out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
               "trace": traceback.format_exc()[-2000:]}
    print("@@RESULT@@" + json.dumps(out))


# ------------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------------


def run_task(task: dict, python: str | None = None, timeout: int = 3600) -> dict:
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(task)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    if python and python != sys.executable:
        env["PYTHONPATH"] = ""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    for line in r.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    return {"ok": False, "error": f"worker exited {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def versions() -> dict:
    import onnx
    import onnxruntime

    import qcompiler

    out = {"qcompiler": qcompiler.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import onnx_graphsurgeon

        out["onnx_graphsurgeon"] = onnx_graphsurgeon.__version__
    except ImportError:
        pass
    return out


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = open("/proc/cpuinfo").read()
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f" {f} " in text)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores ({flags}), {platform.system()} {platform.release()}"


def modelopt_available() -> tuple[bool, str]:
    if not os.path.exists(MODELOPT_PY):
        return False, (f"no ModelOpt environment at {MODELOPT_PY} (it pins onnx~=1.21, onnxruntime-gpu~=1.24 and "
                       "cupy-cuda12x, which conflict with this environment; set QCOMPILER_MODELOPT_PYTHON)")
    r = subprocess.run([MODELOPT_PY, "-c", "import modelopt.onnx.quantization"], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"modelopt.onnx.quantization does not import on this machine: {last}"
    return True, "ok"


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="qc-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"versions": versions(), "machine": machine(), "command": " ".join(sys.argv),
                              "quick": args.quick, "sections": {}}
        from qcompiler.zoo import zoo

        self.zoo = zoo

    # -- helpers --------------------------------------------------------------------------------
    def prepped(self, name: str) -> str:
        return str(self.zoo.onnx_path(name))

    def calib(self, name: str, n: int) -> str:
        return str(self.zoo.calibration_npz(name, n))

    def eval_npz(self, name: str, n: int = 16) -> str:
        p = self.work / f"eval-{name}-{n}.npz"
        if not p.exists():
            entry = self.zoo.get(name)
            x = np.random.default_rng(123).standard_normal((n,) + entry.input_shape).astype(np.float32)
            np.savez(p, input=x)
        return str(p)

    def with_latency(self, row: dict, model: str, shape=(1, 16, 16), batch: int = 8) -> dict:
        """Add the onnxruntime CPU latency (median ms, own process) of a tool's output to its row."""
        if row.get("ok"):
            lat = run_task({"kind": "latency", "model": model, "batch": batch, "shape": list(shape),
                            "runs": 20 if self.args.quick else 200})
            row["latency_ms_b8"] = lat.get("median_ms")
        return row

    # -- sections -------------------------------------------------------------------------------
    def accuracy(self) -> None:
        models = self.args.models or (QUICK_DIGITS if self.args.quick else DIGITS)
        qc_pipes = ["trt-int8", "trt-int8{calib=entropy}", "trt-int8{calib=mse}", "trt-int8{calib=min_max}",
                    "trt-int8{cle=true}"]
        if self.args.quick:
            qc_pipes = ["trt-int8", "trt-int8{calib=entropy}"]
        ort_methods = ["minmax", "entropy", "percentile"] if not self.args.quick else ["minmax", "percentile"]
        rows = []
        for m in models:
            src, cal = self.prepped(m), self.calib(m, 256)
            rows.append({"model": m, "tool": "fp32", "method": "-", **self.with_latency({"ok": True}, src)})
            for p in qc_pipes:
                log(f"[accuracy] {m} qcompiler {p}")
                out = str(self.work / f"{m}-{_tag(p)}.onnx")
                r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": p, "calib": cal, "digits": True})
                rows.append({"model": m, "tool": "qcompiler", "method": p, **self.with_latency(r, out)})
            for meth in ort_methods:
                log(f"[accuracy] {m} onnxruntime.quantization {meth}")
                out = str(self.work / f"{m}-ort-{meth}.onnx")
                r = run_task({"kind": "ort", "src": src, "out": out, "method": meth, "calib": cal, "digits": True})
                rows.append({"model": m, "tool": "ort.quantize_static", "method": meth, **self.with_latency(r, out)})
            log(f"[accuracy] {m} onnxruntime.quantization minmax u8s8")
            out = str(self.work / f"{m}-ort-minmax-u8s8.onnx")
            r = run_task({"kind": "ort", "src": src, "out": out, "method": "minmax", "calib": cal, "digits": True,
                          "config": "u8s8"})
            rows.append({"model": m, "tool": "ort.quantize_static", "method": "minmax u8s8", **self.with_latency(r, out)})
            ok, why = modelopt_available()
            if ok:
                for meth in ("max", "entropy"):
                    log(f"[accuracy] {m} modelopt {meth}")
                    out = str(self.work / f"{m}-mo-{meth}.onnx")
                    r = run_task({"kind": "modelopt", "src": src, "out": out, "method": meth, "calib": cal},
                                 python=MODELOPT_PY)
                    if r.get("ok"):
                        self.with_latency(r, out)
                        try:
                            r.update(eval_model(src, out, True))
                            r.update(model_facts(out))
                        except Exception as exc:
                            r.update(ok=False, error=f"evaluating ModelOpt's output failed: {exc}")
                    rows.append({"model": m, "tool": "modelopt", "method": meth, **r})
            else:
                self.results["modelopt"] = why
        self.results["sections"]["accuracy"] = rows

    def calib_scaling(self) -> None:
        name = "resnet50"
        counts = [32, 64] if self.args.quick else [64, 256, 512]
        rounds = 1 if self.args.quick else 3  # median of alternating calibration / plain-inference rounds
        src = self.work / "resnet50-bnfold.onnx"
        if not src.exists():
            from qcompiler.api import compile_model

            compile_model(str(self.zoo.onnx_path(name)), str(src), "cleanup,fold-constants,fold-bn,cleanup")
        rows = []
        ours = ["min_max", "entropy", "percentile"] if not self.args.quick else ["min_max", "percentile"]
        theirs = ["minmax", "entropy", "percentile"] if not self.args.quick else ["minmax", "percentile"]
        for n in counts:
            cal = self.calib(name, n)
            for meth in ours:
                log(f"[calib] resnet50 n={n} qcompiler {meth}")
                rows.append({"samples": n, "tool": "qcompiler", "method": meth,
                             **run_task({"kind": "qc_calib", "src": str(src), "calib": cal, "method": meth,
                                         "rounds": rounds})})
            for meth in theirs:
                if meth != "minmax" and n > 256 and not self.args.big_ort:
                    rows.append({"samples": n, "tool": "ort", "method": meth, "ok": False,
                                 "error": "skipped: grows ~29 MiB per sample (see 256); --big-ort runs it"})
                    continue
                log(f"[calib] resnet50 n={n} onnxruntime {meth}")
                rows.append({"samples": n, "tool": "ort", "method": meth,
                             **run_task({"kind": "ort_calib", "src": str(src), "calib": cal, "method": meth,
                                         "rounds": rounds if meth == "minmax" else 1})})
        self.results["sections"]["calib"] = rows

    def compile_time(self) -> None:
        from tools_graphs import deep_resnet  # noqa: E402 (tools/ on sys.path)

        rows = []
        factors = [1, 4] if self.args.quick else [1, 4, 16]
        graphs = [("resnet50", str(self.zoo.onnx_path("resnet50")))]
        for k in factors:
            p = self.work / f"deep-{k}.onnx"
            if not p.exists():
                deep_resnet(k, str(p))
            graphs.append((f"deep-resnet x{k}", str(p)))
        for label, path in graphs:
            cal = self.work / f"cal-{Path(path).stem}.npz"
            from qcompiler.ir import load_model

            shape = [int(d) if isinstance(d, int) else 1 for d in load_model(path).inputs[0].shape]
            np.savez(cal, input=np.random.default_rng(0).standard_normal([2] + shape[1:]).astype(np.float32))
            cache = str(self.work / f"cache-{Path(path).stem}.json")
            out = str(self.work / f"compiled-{Path(path).stem}.onnx")
            run_task({"kind": "compile_only", "src": path, "out": out, "pipeline": "trt-int8", "calib": str(cal),
                      "cache": cache})  # fills the cache
            log(f"[compile] {label}")
            r = run_task({"kind": "compile_only", "src": path, "out": out, "pipeline": "trt-int8", "calib": str(cal),
                          "cache": cache})
            rows.append({"graph": label, **r})
        self.results["sections"]["compile"] = rows

    def latency(self) -> None:
        rows = []
        models = [("resnet", [1, 16, 16], True), ("mobilenetv2", [1, 16, 16], True)]
        if not self.args.quick:
            models.append(("resnet50", [3, 224, 224], False))
        for name, shape, digits_model in models:
            src = self.prepped(name)
            cal = self.calib(name, 64 if digits_model else 32)
            variants = {"fp32": src}
            for pipe, label in (("trt-int8", "qcompiler trt-int8"), ("ort-int8", "qcompiler ort-int8")):
                out = str(self.work / f"lat-{name}-{pipe}.onnx")
                r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": pipe, "calib": cal,
                              "digits": digits_model, "eval": False})
                if r.get("ok"):
                    variants[label] = out
            for cfg, label in (("s8s8", "ort.quantize_static"), ("u8s8", "ort.quantize_static u8s8")):
                out = str(self.work / f"lat-{name}-ort-{cfg}.onnx")
                r = run_task({"kind": "ort", "src": src, "out": out, "method": "minmax", "calib": cal,
                              "digits": digits_model, "eval": False, "config": cfg})
                if r.get("ok"):
                    variants[label] = out
            for batch in (1, 8):
                for label, path in variants.items():
                    log(f"[latency] {name} b={batch} {label}")
                    runs = (10 if self.args.quick else 30) * (1 if name == "resnet50" else 10)  # sub-ms models: more
                    r = run_task({"kind": "latency", "model": path, "batch": batch, "shape": shape, "runs": runs})
                    rows.append({"model": name, "batch": batch, "variant": label, **r})
        self.results["sections"]["latency"] = rows

    def cle(self) -> None:
        from qcompiler.ir import load_model
        from qcompiler.passes.cle import CLEReport
        from qcompiler.pm import PassContext, run_pipeline

        rows = []
        for name in ("mobilenetv2", "mobilenetv2-full"):
            g = load_model(self.zoo.onnx_path(name))
            ctx = PassContext()
            run_pipeline(g, "fold-bn,merge-conv1x1,cle{measure=true}", ctx)
            rep = ctx.state.require(CLEReport).layers
            rows.append({"model": name, "layers": rep})
        acc = []
        models = ["mobilenetv2", "resnet"]
        for m in models:
            for dtype in ("s8", "s4"):
                for scheme in ("per_tensor_symmetric", "per_channel_symmetric"):
                    cfg = self.work / f"w-{dtype}-{scheme}.yaml"
                    cfg.write_text(f"global:\n  weight: {{dtype: {dtype}, qscheme: {scheme}}}\n")
                    for pipe in ("trt-int8", "trt-int8{cle=true}"):
                        log(f"[cle] {m} {dtype} {scheme} {pipe}")
                        out = str(self.work / f"cle-{m}-{dtype}-{scheme}-{'cle' if 'cle' in pipe else 'plain'}.onnx")
                        r = run_task({"kind": "qcompiler", "src": self.prepped(m), "out": out, "pipeline": pipe,
                                      "calib": self.calib(m, 256), "config": str(cfg), "digits": True})
                        acc.append({"model": m, "weights": f"{dtype} {scheme}", "pipeline": pipe, **r})
        self.results["sections"]["cle"] = {"layers": rows, "accuracy": acc}

    def recovery(self) -> None:
        models = self.args.models or (QUICK_DIGITS if self.args.quick else DIGITS)
        rows = []
        pipes = ["trt-int8", "trt-int8{cle=true}", "trt-int8{cle=true bias-correct=true}", "trt-int8{bias-correct=true}",
                 "trt-int8{calib=min_max bias-correct=true}", "trt-int8{finetune=adaround}", "trt-int8{finetune=lsq}",
                 "trt-int8{target-sqnr=40}"]
        if self.args.quick:
            pipes = ["trt-int8", "trt-int8{bias-correct=true}", "trt-int8{finetune=lsq}"]
        w4 = self.work / "w4.yaml"
        w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
        pt = self.work / "pt8.yaml"
        pt.write_text("global:\n  weight: {dtype: s8, qscheme: per_tensor_symmetric}\n")
        plans = [("int8", None, pipes)]
        plans.append(("W4A8", str(w4), ["trt-int8", "trt-int8{bias-correct=true}", "trt-int8{finetune=adaround}",
                                        "trt-int8{finetune=lsq}"]))
        for m in models:
            for tag, cfg, ps in plans:
                for p in ps:
                    log(f"[recovery] {m} {tag} {p}")
                    out = str(self.work / f"rec-{m}-{tag}-{_tag(p)}.onnx")
                    r = run_task({"kind": "qcompiler", "src": self.prepped(m), "out": out, "pipeline": p,
                                  "calib": self.calib(m, 256), "config": cfg, "digits": True})
                    rows.append({"model": m, "setting": tag, "pipeline": p, **r})
        for p in ["trt-int8", "trt-int8{cle=true}", "trt-int8{cle=true bias-correct=true}", "trt-int8{finetune=lsq}",
                  "trt-int8{cle=true finetune=lsq}"]:
            log(f"[recovery] mobilenetv2 per-tensor int8 weights {p}")
            out = str(self.work / f"rec-pt-{_tag(p)}.onnx")
            r = run_task({"kind": "qcompiler", "src": self.prepped("mobilenetv2"), "out": out, "pipeline": p,
                          "calib": self.calib("mobilenetv2", 256), "config": str(pt), "digits": True})
            rows.append({"model": "mobilenetv2", "setting": "int8 per-tensor weights", "pipeline": p, **r})
        self.results["sections"]["recovery"] = rows

    def outlier(self) -> None:
        """How much one bad calibration image costs each calibrator (1 of 256 images scaled by 8)."""
        models = self.args.models or (["resnet"] if self.args.quick else QUICK_DIGITS)
        methods = ["min_max", "percentile", "entropy", "mse"]
        rows = []
        for m in models:
            src, cal = self.prepped(m), self.calib(m, 256)
            bad = self.work / f"calib-{m}-256-outlier.npz"
            x = np.load(cal)["input"].copy()
            x[17] *= 8.0
            np.savez(bad, input=x)
            for data, path in (("clean", cal), ("outlier", str(bad))):
                for meth in methods:
                    p = f"trt-int8{{calib={meth}}}"
                    log(f"[outlier] {m} {data} qcompiler {p}")
                    out = str(self.work / f"out-{m}-{data}-{meth}.onnx")
                    r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": p, "calib": path,
                                  "digits": True})
                    rows.append({"model": m, "data": data, "tool": "qcompiler", "method": meth, **r})
                for meth in ("minmax", "percentile"):
                    log(f"[outlier] {m} {data} onnxruntime {meth}")
                    out = str(self.work / f"out-{m}-{data}-ort-{meth}.onnx")
                    r = run_task({"kind": "ort", "src": src, "out": out, "method": meth, "calib": path,
                                  "digits": True})
                    rows.append({"model": m, "data": data, "tool": "ort.quantize_static", "method": meth, **r})
        self.results["sections"]["outlier"] = rows

    def arch(self) -> None:
        """Recovery pipelines and the other tools on the random-weight architectures (output SQNR only)."""
        models = self.args.models or (["resnet18"] if self.args.quick else ARCHS)
        pipes = ["trt-int8", "trt-int8{cle=true}", "trt-int8{cle=true bias-correct=true}",
                 "trt-int8{bias-correct=true}", "trt-int8{target-sqnr=40}"]
        if self.args.quick:
            pipes = ["trt-int8", "trt-int8{bias-correct=true}"]
        rows = []
        for m in models:
            src, cal, ev = self.prepped(m), self.calib(m, 32), self.eval_npz(m, 16)
            for p in pipes:
                log(f"[arch] {m} qcompiler {p}")
                out = str(self.work / f"arch-{m}-{_tag(p)}.onnx")
                r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": p, "calib": cal,
                              "digits": False, "eval_npz": ev})
                rows.append({"model": m, "tool": "qcompiler", "method": p, **r})
            for meth in ("minmax", "entropy", "percentile"):
                log(f"[arch] {m} onnxruntime.quantization {meth}")
                out = str(self.work / f"arch-{m}-ort-{meth}.onnx")
                r = run_task({"kind": "ort", "src": src, "out": out, "method": meth, "calib": cal, "digits": False,
                              "eval_npz": ev})
                rows.append({"model": m, "tool": "ort.quantize_static", "method": meth, **r})
            ok, why = modelopt_available()
            for meth in ("max", "entropy") if ok else ():
                log(f"[arch] {m} modelopt {meth}")
                out = str(self.work / f"arch-{m}-mo-{meth}.onnx")
                r = run_task({"kind": "modelopt", "src": src, "out": out, "method": meth, "calib": cal},
                             python=MODELOPT_PY)
                if r.get("ok"):
                    try:
                        r.update(eval_model(src, out, False, ev))
                        r.update(model_facts(out))
                    except Exception as exc:
                        r.update(ok=False, error=f"evaluating ModelOpt's output failed: {exc}")
                rows.append({"model": m, "tool": "modelopt", "method": meth, **r})
            if not ok:
                self.results["modelopt"] = why
        self.results["sections"]["arch"] = rows

    def run(self) -> dict:
        sections = self.args.sections.split(",")
        for s in sections:
            t0 = time.perf_counter()
            {"accuracy": self.accuracy, "calib": self.calib_scaling, "compile": self.compile_time,
             "latency": self.latency, "cle": self.cle, "recovery": self.recovery, "outlier": self.outlier,
             "arch": self.arch}[s]()
            log(f"[{s}] {time.perf_counter() - t0:.0f} s")
        return self.results


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _rows(out: list[str], rows: list[dict], width: int, key, cells) -> None:
    """One Markdown row per result: ``cells(r)`` for a successful one; a failed one keeps its ``key(r)``
    cells and says why in the next, the rest left empty."""
    for r in rows:
        if r.get("ok"):
            row = cells(r)
        else:
            k = key(r)
            row = k + [f"failed: {r.get('error', '?')[:80]}"] + [""] * (width - len(k) - 1)
        out.append("| " + " | ".join(row) + " |")


def render(res: dict) -> str:
    out = [f"Machine: {res['machine']}", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), "",
           f"Command: `{res['command']}`", ""]
    s = res["sections"]
    if "accuracy" in s:
        out += ["### Accuracy (digits test split, 540 images; SQNR of the logits vs FP32)", "",
                "| model | tool | method | top-1 FP32 | top-1 | SQNR dB | Q | DQ | lint err/warn | ORT ms (batch 8) "
                "| wall s | peak RSS MiB |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        def acc_cells(r):
            if r["tool"] == "fp32":
                return [r["model"], "fp32", "-"] + [""] * 6 + [_fmt(r.get("latency_ms_b8"), 3), "", ""]
            return [r["model"], r["tool"], f"`{r['method']}`", _fmt(r.get("top1_fp32")), _fmt(r.get("top1")),
                    _fmt(r.get("sqnr_db"), 1), str(r.get("q", "-")), str(r.get("dq", "-")),
                    f"{r.get('lint_errors', '-')}/{r.get('lint_warnings', '-')}", _fmt(r.get("latency_ms_b8"), 3),
                    _fmt(r.get("wall_s")), _fmt(r.get("peak_rss_mib"), 0)]

        _rows(out, s["accuracy"], 12, lambda r: [r["model"], r["tool"], r["method"]], acc_cells)
        if "modelopt" in res:
            out += ["", f"NVIDIA ModelOpt: skipped: {res['modelopt']}"]
        out.append("")
    if "recovery" in s:
        out += ["### Accuracy recovery (digits test split)", "",
                "| model | setting | pipeline | top-1 | SQNR dB | fine-tuning s | ms/iteration | lint err/warn |",
                "|---|---|---|---|---|---|---|---|"]
        _rows(out, s["recovery"], 8, lambda r: [r["model"], r["setting"], f"`{r['pipeline']}`"],
              lambda r: [r["model"], r["setting"], f"`{r['pipeline']}`", _fmt(r.get("top1")), _fmt(r.get("sqnr_db"), 1),
                         _fmt(r.get("finetune_s"), 1), _fmt(r.get("finetune_ms_per_iter"), 1),
                         f"{r.get('lint_errors', '-')}/{r.get('lint_warnings', '-')}"])
        out.append("")
    if "outlier" in s:
        out += ["### One outlier in the calibration set (image 17 of 256 scaled by 8; logits SQNR dB)", "",
                "| model | tool | calibrator | clean | with the outlier | change |", "|---|---|---|---|---|---|"]
        cells: dict = {}
        for r in s["outlier"]:
            cells.setdefault((r["model"], r["tool"], r["method"]), {})[r["data"]] = (
                r.get("sqnr_db") if r.get("ok", True) else None)
        for (m, tool, meth), v in cells.items():
            a, b = v.get("clean"), v.get("outlier")
            d = f"{b - a:+.1f}" if a is not None and b is not None else "-"
            out.append(f"| {m} | {tool} | {meth} | {_fmt(a, 1)} | {_fmt(b, 1)} | {d} |")
        out.append("")
    if "arch" in s:
        out += ["### Architectures with random weights (32 calibration / 16 evaluation samples, standard normal; "
                "SQNR of the outputs vs FP32)", "",
                "| model | tool | method | SQNR dB | Q | DQ | lint err/warn | wall s | peak RSS MiB |",
                "|---|---|---|---|---|---|---|---|---|"]
        _rows(out, s["arch"], 9, lambda r: [r["model"], r["tool"], r["method"]],
              lambda r: [r["model"], r["tool"], f"`{r['method']}`", _fmt(r.get("sqnr_db"), 1), str(r.get("q", "-")),
                         str(r.get("dq", "-")), f"{r.get('lint_errors', '-')}/{r.get('lint_warnings', '-')}",
                         _fmt(r.get("wall_s")), _fmt(r.get("peak_rss_mib"), 0)])
        out.append("")
    if "calib" in s:
        out += ["### Calibration on the ResNet-50-sized model (224x224, batch 8)", "",
                "Calibration and plain inference alternate in one process; times and ratio are medians over the "
                "rounds (ratios of every round in the JSON).  Peak RSS: after the first calibration.", "",
                "| samples | tool | method | rounds | calibration s | plain inference s | ratio | peak RSS MiB |",
                "|---|---|---|---|---|---|---|---|"]
        for r in s["calib"]:
            if not r.get("ok"):
                out.append(f"| {r['samples']} | {r['tool']} | {r['method']} | | {r.get('error', '?')[:90]} | | | |")
                continue
            out.append(f"| {r['samples']} | {r['tool']} | {r['method']} | {r.get('rounds', 1)} | {_fmt(r['calib_s'])} | "
                       f"{_fmt(r['plain_s'])} | "
                       f"**{_fmt(r['ratio'])}** | {_fmt(r['peak_rss_mib'], 0)} |")
        out.append("")
    if "compile" in s:
        out += ["### Compile time without calibration (statistics cached), trt-int8", "",
                "| graph | nodes after | passes s | total s (load + passes + save) | peak RSS MiB |", "|---|---|---|---|---|"]
        for r in s["compile"]:
            if r.get("ok"):
                out.append(f"| {r['graph']} | {r['nodes']} | {_fmt(r['passes_s'], 3)} | {_fmt(r['total_s'], 3)} | "
                           f"{_fmt(r['peak_rss_mib'], 0)} |")
            else:
                out.append(f"| {r['graph']} | failed: {r.get('error')} | | | |")
        out.append("")
    if "latency" in s:
        out += ["### onnxruntime CPU latency (ORT_ENABLE_ALL, median)", "",
                "| model | batch | variant | median ms |", "|---|---|---|---|"]
        for r in s["latency"]:
            out.append(f"| {r['model']} | {r['batch']} | {r['variant']} | "
                       f"{_fmt(r.get('median_ms'), 3) if r.get('ok') else 'failed: ' + str(r.get('error'))} |")
        out.append("")
    if "cle" in s:
        out += ["### Cross-layer equalization", ""]
        for entry in s["cle"]["layers"]:
            rep = entry["layers"]
            sb = [x["spread_before"] for x in rep]
            sa = [x["spread_after"] for x in rep]
            out.append(f"**{entry['model']}**: {len(rep)} layers; median channel-range ratio {np.median(sb):.1f} -> "
                       f"{np.median(sa):.1f}, max {max(sb):.1f} -> {max(sa):.1f}; mean per-tensor int8 weight SQNR "
                       f"{np.mean([x['sqnr_before'] for x in rep]):.1f} -> {np.mean([x['sqnr_after'] for x in rep]):.1f} dB")
            out.append("")
            out += ["| layer | range ratio before | after | int8 per-tensor SQNR before dB | after dB |",
                    "|---|---|---|---|---|"]
            for x in rep[:12]:
                out.append(f"| `{x['layer']}` | {x['spread_before']:.1f} | {x['spread_after']:.1f} | "
                           f"{x['sqnr_before']:.1f} | {x['sqnr_after']:.1f} |")
            if len(rep) > 12:
                out.append(f"| ... {len(rep) - 12} more | | | | |")
            out.append("")
        out += ["| model | weights | pipeline | top-1 | SQNR dB |", "|---|---|---|---|---|"]
        for r in s["cle"]["accuracy"]:
            out.append(f"| {r['model']} | {r['weights']} | `{r['pipeline']}` | {_fmt(r.get('top1'))} | "
                       f"{_fmt(r.get('sqnr_db'), 1)} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        sys.path.insert(0, str(ROOT / "tools"))
        worker_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset (a few minutes on 2 cores)")
    ap.add_argument("--sections", default="accuracy,outlier,recovery,arch,calib,compile,latency,cle")
    ap.add_argument("--models", type=lambda s: s.split(","), default=None, help="zoo models for the accuracy, outlier, recovery and arch sections")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--md", default=None, help="write the Markdown report here")
    ap.add_argument("--big-ort", action="store_true", help="also run onnxruntime's histogram calibrators at 512 samples")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tools"))
    res = Bench(args).run()
    text = render(res)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
