"""Worker side of the benchmark: each measurement runs in its own process (``run_task``), so peak RSS is that
process's own and nothing one tool loads slows another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import ROOT, NpzReader, eval_model, model_facts, peak_rss_mib, plain_inference, ort_preprocess


def w_qcompiler(task: dict) -> dict:
    from qcompiler.api import compile_model
    from qcompiler.bridge.results import FinetuneResult

    t0 = time.perf_counter()
    res = compile_model(task["src"], task["out"], task["pipeline"], calib_data=task["calib"],
                        config=task.get("config"), calib_cache=task.get("cache"),
                        calib_options={"batch_size": task.get("batch", 8)}, rebuild=True)
    wall = time.perf_counter() - t0
    ft = res.context.state.get(FinetuneResult)
    guard = next((st for st in res.context.state if getattr(st, "fact", "") == "guard-report"), None)
    out = {"wall_s": round(wall, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
           "finetune_s": round(ft.seconds, 2) if ft else None,
           "finetune_ms_per_iter": round(1000 * ft.seconds_per_iteration, 2) if ft else None,
           "calib_s": round(res.context.timings.get("calibrate.total", 0.0), 3),
           "passes_s": round(sum(r.seconds for r in res.result.records), 3),
           "passes_wo_calib_s": round(sum(r.seconds for r in res.result.records if r.name != "calibrate"), 3),
           "guard": guard.to_dict() if guard is not None else None}
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


def w_qc_calib_mem(task: dict) -> dict:
    """Peak RSS of a whole calibration from a data file or folder (data loading included): load the model,
    open the data as the CLI does, run calibrate once; nothing else runs in the process."""
    from qcompiler.api import make_context
    from qcompiler.ir import load_model
    from qcompiler.pm import run_pipeline

    base = peak_rss_mib()
    g = load_model(task["src"])
    ctx = make_context(calib_data=task["calib"], calib_options={"batch_size": task.get("batch", 8)},
                       progress=False)
    t0 = time.perf_counter()
    run_pipeline(g, f"calibrate{{method={task['method']}}}", ctx)
    return {"calib_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak_rss_mib(), 1),
            "import_rss_mib": round(base, 1)}


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
    res = compile_model(task["src"], task["out"], task["pipeline"], calib_data=task["calib"], calib_cache=task["cache"],
                        rebuild=True)
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


class FeedReader:
    """onnxruntime CalibrationDataReader over every input of a model: an .npz (batches of ``batch`` along axis 0)
    or a folder of per-feed .npz files (one feed each, as they are)."""

    def __init__(self, path: str, batch: int = 8):
        if os.path.isdir(path):
            self.feeds = [dict(np.load(os.path.join(path, f))) for f in sorted(os.listdir(path))
                          if f.endswith(".npz")]
        else:
            d = dict(np.load(path))
            n = len(next(iter(d.values())))
            self.feeds = [{k: v[i:i + batch] for k, v in d.items()} for i in range(0, n, batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0

    def __iter__(self):  # onnxruntime's GPTQ weight-only quantizer iterates the reader
        return iter(self.feeds)

    def __len__(self):
        return len(self.feeds)


def w_hard_ort(task: dict) -> dict:
    """onnxruntime.quantization.quantize_static on a hard model (every input fed), TensorRT-style QDQ."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[task["method"]]
    t0 = time.perf_counter()
    pre = ort_preprocess(task["src"], task["out"] + ".pre.onnx")
    quantize_static(pre, task["out"], FeedReader(task["calib"]), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


def w_hard_modelopt(task: dict) -> dict:
    """ModelOpt ONNX PTQ on a hard model, in ModelOpt's virtualenv: calibration data as {input: array}."""
    import modelopt.onnx.quantization as moq

    calib = task["calib"]
    if os.path.isdir(calib):
        feeds = [dict(np.load(os.path.join(calib, f))) for f in sorted(os.listdir(calib)) if f.endswith(".npz")]
        data = {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}
    else:
        data = dict(np.load(calib))
    t0 = time.perf_counter()
    extra = {"block_size": task["block_size"]} if task.get("block_size") else {}
    moq.quantize(onnx_path=task["src"], quantize_mode=task.get("mode", "int8"), calibration_data=data,
                 calibration_method=task["method"], output_path=task["out"], high_precision_dtype="fp32",
                 calibration_eps=["cpu"], **extra)
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


def w_finetune(task: dict) -> dict:
    """qcompiler finetune on a quantized file (wall time and peak RSS of the fine-tuning alone)."""
    from qcompiler.bridge.finetune import finetune_model

    t0 = time.perf_counter()
    finetune_model(task["qdq"], task["src"], task["out"], method=task["method"], calib_data=task["calib"],
                   epochs=task.get("epochs", 5), milestones=task.get("milestones"),
                   max_samples=task.get("max_samples", 256), progress=False)
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


def w_executor(task: dict) -> dict:
    """Calibration or the sensitivity scan on an executor (``local`` or Ray with ``cpus`` workers): wall time of
    the work alone (Ray's start-up measured apart), the driver's and each worker's peak RSS, and a digest of the
    result (the same digest for every executor means the same statistics / sensitivities)."""
    import hashlib

    from qcompiler.api import make_context
    from qcompiler.calib import CalibrationStats
    from qcompiler.executor import LocalExecutor, RayExecutor
    from qcompiler.ir import load_model
    from qcompiler.pm import run_pipeline

    t0 = time.perf_counter()
    ex = LocalExecutor() if task["executor"] == "local" else RayExecutor(num_cpus=task["cpus"])
    startup = time.perf_counter() - t0
    h = hashlib.sha256()
    try:
        if task["what"] == "calib":
            g = load_model(task["src"])
            ctx = make_context(calib_data=task["calib"], progress=False, executor=ex)
            t0 = time.perf_counter()
            run_pipeline(g, f"calibrate{{method={task['method']}}}", ctx)
            wall = time.perf_counter() - t0
            for name, st in sorted(ctx.state.require(CalibrationStats, "bench").tensors.items()):
                h.update(name.encode() + np.asarray(st.range, np.float64).tobytes())
        elif task["what"] == "gptq":
            from qcompiler.bridge.finetune import finetune_model

            out = task["out"] + f".{task['executor']}{task['cpus']}.onnx"
            t0 = time.perf_counter()
            finetune_model(task["qdq"], task["src"], out, method="gptq", calib_data=task["calib"], progress=False,
                           executor=ex)
            wall = time.perf_counter() - t0
            with open(out, "rb") as f:
                h.update(f.read())
        else:
            from qcompiler.bridge.finetune import reference_graph
            from qcompiler.calib.data import as_data_source
            from qcompiler.diagnostics import DiagnosticEngine
            from qcompiler.quant.sensitivity import layer_sensitivity

            qdq = load_model(task["qdq"])
            ref = reference_graph(load_model(task["src"]), qdq, DiagnosticEngine())
            data = as_data_source(task["calib"])
            t0 = time.perf_counter()
            sens = layer_sensitivity(qdq, ref, data, executor=ex)
            wall = time.perf_counter() - t0
            for name in sorted(sens, key=lambda k: (sens[k], k)):
                h.update(name.encode() + np.float64(sens[name]).tobytes())
        workers = {w: round(v, 1) for w, v in ex.timing.peak_rss_mib.items()}
        return {"wall_s": round(wall, 2), "startup_s": round(startup, 2) if task["executor"] != "local" else None,
                "driver_rss_mib": round(peak_rss_mib(), 1),
                "worker_rss_mib": max(workers.values()) if workers else None, "workers": len(workers) or None,
                "tasks": sum(ex.timing.tasks.values()), "digest": h.hexdigest()[:12]}
    finally:
        ex.close()


def w_ort_nbits(task: dict) -> dict:
    """onnxruntime's weight-only quantizer (MatMulNBits, RTN or GPTQ)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer,
                                                                RTNWeightOnlyQuantConfig)

    t0 = time.perf_counter()
    if task["method"] == "gptq":
        algo = GPTQWeightOnlyQuantConfig(calibration_data_reader=FeedReader(task["calib"]),
                                         block_size=task["block_size"])
    else:
        algo = RTNWeightOnlyQuantConfig()
    q = MatMulNBitsQuantizer(onnx.load(task["src"]), bits=4, block_size=task["block_size"], is_symmetric=True,
                             algo_config=algo)
    q.process()
    q.model.save_model_to_file(task["out"], False)
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}


WORKERS = {"qcompiler": w_qcompiler, "ort": w_ort, "ort_calib": w_ort_calib, "qc_calib": w_qc_calib,
           "qc_calib_mem": w_qc_calib_mem,
           "latency": w_latency, "compile_only": w_compile_only, "modelopt": w_modelopt,
           "hard_ort": w_hard_ort, "hard_modelopt": w_hard_modelopt, "finetune": w_finetune, "executor": w_executor,
           "ort_nbits": w_ort_nbits}


def worker_main(spec: str) -> None:
    """The worker process: run one task, print its result on a marked line."""
    task = json.loads(spec)
    try:
        out = WORKERS[task["kind"]](task)
        out["ok"] = True
    except Exception as exc:  # the orchestrator records failures, it does not hide them
        import traceback

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out = {"ok": False, "error": f"{type(exc).__name__}: {first}", "trace": traceback.format_exc()[-2000:]}
    print("\n@@RESULT@@" + json.dumps(out))  # on its own line even after a progress bar without a newline


def register(kind: str):
    """Decorator: make a worker function available to ``run_task({"kind": kind, ...})``."""
    def deco(fn):
        WORKERS[kind] = fn
        return fn
    return deco


def run_task(task: dict, python: str | None = None, timeout: int = 3600) -> dict:
    """Run one measurement in a fresh process (``python tools/bench.py worker TASK``) and return its result."""
    cmd = [python or sys.executable, str(ROOT / "tools" / "bench.py"), "worker", json.dumps(task)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    if python and python != sys.executable:
        env["PYTHONPATH"] = ""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    for line in r.stdout.splitlines():
        if "@@RESULT@@" in line:
            return json.loads(line.split("@@RESULT@@", 1)[1])
    return {"ok": False, "error": f"worker exited {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}"}




@register("torch_compile")
def w_torch_compile(task: dict) -> dict:
    """qcompiler.compile_torch of a zoo architecture (random weights) with a DataLoader of ``samples`` images
    (deterministic random pixels, made one at a time as a Dataset does from files: memory does not depend on what
    they show); wall time and peak RSS of the whole call (export, calibration, compile)."""
    import torch

    import qcompiler
    from qcompiler.zoo import zoo

    entry = zoo.get(task["model"])
    torch.manual_seed(0)
    model = entry.build().eval()
    shape = tuple(entry.input_shape)

    class Pixels(torch.utils.data.Dataset):  # each sample made when asked for: the data is never all in memory
        def __len__(self):
            return task["samples"]

        def __getitem__(self, i):
            return torch.randn(*shape, generator=torch.Generator().manual_seed(i))

    loader = torch.utils.data.DataLoader(Pixels(), batch_size=task.get("batch", 16))
    t0 = time.perf_counter()
    qcompiler.compile_torch(model, (Pixels()[0][None],), task["out"], task.get("pipeline", "trt-int8"),
                            calib_data=loader, progress=False)
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": round(peak_rss_mib(), 1)}
