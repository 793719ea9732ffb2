#!/usr/bin/env python
"""Benchmark qcompiler against onnxruntime.quantization (and NVIDIA ModelOpt when it runs here).

Every measurement runs in its own process (peak RSS is that process's), and both sides are
measured in the same invocation, so the ratios compare like with like.

    python tools/bench.py --quick                      # a quick signal: at most 5 minutes on 2 cores (warm cache)
    python tools/bench.py --real                       # the development set of shipped models, every tool
    python tools/bench.py                              # every section (the runs behind docs/benchmarks.md)
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
  real      the development set (models/real/, ../shared/real-models.md): shipped models with real inputs
            through FP32, onnxruntime.quantization, ModelOpt and qcompiler's named pipelines; task metric vs FP32,
            compile time, peak RSS, the guard's time ratio
  arch      random-weight architectures (ResNet-18, MobileNetV2, EfficientNet-B0, a decoder): output SQNR of
            qcompiler's recovery pipelines, quantize_static and ModelOpt

Output: a Markdown report on stdout (and --md FILE) and all numbers as JSON (--json FILE).

Parts (tools/benchlib/): ``workers.py`` (one measurement per process), ``sections.py`` (what each section
measures), ``render.py`` (the tables), ``common.py`` (RSS, versions, evaluation helpers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (benchlib, tools_graphs)

from benchlib.render import render  # noqa: E402
from benchlib.sections import QUICK_SECTIONS, SECTIONS, Bench  # noqa: E402
from benchlib.workers import worker_main  # noqa: E402


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        worker_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset (a few minutes on 2 cores)")
    ap.add_argument("--real", action="store_true", help="the development set only (same as --sections real)")
    ap.add_argument("--sections", default=None, help="comma-separated: " + ", ".join(SECTIONS)
                    + " (default: all; with --quick: " + ",".join(QUICK_SECTIONS) + ")")
    ap.add_argument("--models", type=lambda s: s.split(","), default=None,
                    help="zoo models for the accuracy, outlier, recovery and arch sections")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--md", default=None, help="write the Markdown report here")
    ap.add_argument("--resume", action="store_true",
                    help="real: reuse the rows an interrupted run in the same --workdir measured")
    ap.add_argument("--big-ort", action="store_true",
                    help="also run onnxruntime's histogram calibrators at 512 samples")
    args = ap.parse_args()
    if args.sections is None:
        args.sections = "real" if args.real else ",".join(QUICK_SECTIONS if args.quick else SECTIONS)
    res = Bench(args).run()
    text = render(res)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
