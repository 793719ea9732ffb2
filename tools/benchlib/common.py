"""Shared pieces of the benchmark: process measurements, versions, the machine, model evaluation, data readers."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
DIGITS = ["resnet", "resnet-bottleneck", "mobilenetv2", "conv1x1", "transformer"]
QUICK_DIGITS = ["resnet", "mobilenetv2", "transformer"]
ARCHS = ["resnet18", "mobilenetv2-full", "efficientnet-b0", "decoder"]
MODELOPT_PY = os.environ.get("QCOMPILER_MODELOPT_PYTHON", "/tmp/mo-venv/bin/python")


def tag(text: str) -> str:
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
    """onnxruntime's recommended pre-processing; a model below opset 13 is converted to 13 first (quantize_static
    writes per-channel DequantizeLinear with ``axis``, which needs 13: below it its output is an invalid model, so a
    user would convert first)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = onnx.load(src, load_external_data=False)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        up = dst + ".opset13.onnx"
        onnx.save(version_converter.convert_version(onnx.load(src), 13), up)
        src = up
    quant_pre_process(src, dst, skip_symbolic_shape=True)
    return dst


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


