"""``qcompiler demo``: build a digits-trained zoo model, compile it, show what changed and what it costs."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from .diagnostics import DiagnosticEngine, QCompilerError, Severity


def run_demo(model: str = "resnet", pipeline: str = "trt-int8", workdir: str | None = None, verbose: int = 0) -> int:
    try:
        from .zoo import digits, zoo
    except ImportError as exc:  # torch / scikit-learn missing
        raise QCompilerError(f"the demo builds its model with torch and scikit-learn ({exc.name} is missing)",
                             code="QC601",
                             hint="pip install 'qcompiler[torch]' (install torch==2.13.0 first)") from None
    from .api import compile_model
    from .ir.runtime import Session
    from .quant.lint import lint_model
    from .quant.state import QuantizationRecord
    from .testing import sqnr_db

    entry = zoo.get(model)
    out_dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="qcompiler-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] zoo model '{model}': {entry.description}")
    src = zoo.onnx_path(model)
    print(f"      exported with BatchNormalization kept: {src}")
    calib = zoo.calibration_npz(model, 256)
    print(f"[2/4] calibration data: 256 digits training images ({calib})")
    out = out_dir / f"{model}.{pipeline.split('{')[0]}.onnx"
    diags = DiagnosticEngine()
    res = compile_model(str(src), str(out), pipeline, calib_data=str(calib), diagnostics=diags)
    print(f"[3/4] qcompiler compile --pipeline '{pipeline}' -> {out}")
    print(res.result.summary())
    for d in diags:
        if d.severity >= (Severity.REMARK if verbose else Severity.WARNING):
            print("      " + d.render().replace("\n", "\n      "))

    print("[4/4] FP32 vs quantized on the 540 held-out digits (onnxruntime, ORT_ENABLE_BASIC):")
    data = digits.load()
    x = data["x_test"]
    s_fp = Session(_load(src))
    s_q = Session(_load(out))
    a = s_fp.run({"input": x})[0]
    b = s_q.run({"input": x})[0]
    top_fp = 100.0 * float(np.mean(a.argmax(1) == data["y_test"]))
    top_q = 100.0 * float(np.mean(b.argmax(1) == data["y_test"]))
    agree = 100.0 * float(np.mean(a.argmax(1) == b.argmax(1)))
    lint = lint_model(out)
    from .inspection import inspect_model

    info = inspect_model(out)
    print(f"      top-1 FP32 {top_fp:.2f}%   quantized {top_q:.2f}%   (delta {top_q - top_fp:+.2f} points, "
          f"{agree:.1f}% same predictions)")
    print(f"      logits SQNR {sqnr_db(a, b):.1f} dB")
    record = res.context.state.get(QuantizationRecord)
    print(f"      Q/DQ: {info.qdq['quantize']} QuantizeLinear, {info.qdq['dequantize']} DequantizeLinear; "
          f"{len(record.plan.float_nodes) if record is not None else 0} layer(s) kept float")
    print(f"      lint-trt: {lint.n_errors} error(s), {lint.n_warnings} warning(s)"
          + (" - TensorRT-ready" if lint.n_errors == 0 else ""))
    sys.stdout.flush()
    return 0


def _load(path):
    from .ir import load_model

    return load_model(path)
