#!/usr/bin/env python
"""Hashes of what every named pipeline writes for every zoo model: the check behind "behaviour unchanged".

A refactoring that must not change outputs is checked by running this before and after and comparing:

    python tools/pipeline_hashes.py --json before.json            # on the old commit
    python tools/pipeline_hashes.py --json after.json --compare before.json

Each (model, pipeline) compiles in this process with the zoo's calibration data (``--samples`` per model)
and records the sha256 of the written model and of its ``.recipe.json``.  ``--models`` and
``--pipelines`` narrow the run; ``--skip-big`` leaves out the 224x224 architectures (a few minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

PIPELINES = ["tidy", "fp32-prep", "trt-int8", "trt-fp8", "ort-int8"]
#: option variants that reach the recovery passes and the state they share (BatchNorm statistics, the
#: FP32 reference); run on the small models only (``--variants`` to change)
VARIANTS = ["trt-int8{cle=true fold-residual=true bias-correct=true}", "trt-int8{target-sqnr=45}",
            "fold-bn,cle,calibrate,insert-qdq,bias-correct{mode=data-free},cleanup"]
BIG = {"resnet18", "resnet50", "mobilenetv2-full", "efficientnet-b0"}


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def run(models: list[str], pipelines: list[str], samples: int,
        variants: list[str] = ()) -> dict[str, dict[str, str | None]]:
    import qcompiler as qc
    from qcompiler.zoo import zoo

    out: dict[str, dict[str, str | None]] = {}
    with tempfile.TemporaryDirectory(prefix="qc-hash-") as tmp:
        for m in models:
            src = zoo.onnx_path(m)
            calib = zoo.calibration_npz(m, samples)
            for k, p in enumerate(pipelines + ([] if m in BIG else list(variants))):
                dst = Path(tmp) / f"{m}.{k}.onnx"
                t0 = time.perf_counter()
                try:
                    qc.compile_model(src, dst, p, calib_data=str(calib), progress=False)
                    model_sha = _sha(dst)
                except qc.QCompilerError as exc:
                    model_sha = f"error {exc.diagnostic.code}: {exc.diagnostic.message}"
                out[f"{m} {p}"] = {"model": model_sha, "recipe": _sha(Path(str(dst) + ".recipe.json"))}
                print(f"{m:<18} {p[:40]:<40} {time.perf_counter() - t0:6.1f} s  {str(model_sha)[:16]}", file=sys.stderr)
    return out


def main() -> int:
    from qcompiler.zoo import zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated zoo models (default: all)")
    ap.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated named pipelines")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated extra pipelines (small models)")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples per model (default 32)")
    ap.add_argument("--skip-big", action="store_true", help="leave out the 224x224 architectures")
    ap.add_argument("--json", help="write the hashes here")
    ap.add_argument("--compare", help="compare with an earlier --json file; exit 1 on any difference")
    args = ap.parse_args()
    models = args.models.split(",") if args.models else zoo.names()
    if args.skip_big:
        models = [m for m in models if m not in BIG]
    hashes = run(models, args.pipelines.split(","), args.samples, [v for v in args.variants.split(";") if v])
    if args.json:
        Path(args.json).write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        diff = [k for k in hashes if old.get(k) != hashes[k]]
        missing = [k for k in old if k not in hashes]
        for k in diff:
            print(f"DIFFERENT {k}: {old.get(k)} -> {hashes[k]}")
        print(f"{len(hashes) - len(diff)}/{len(hashes)} identical" + (f", {len(missing)} not run" if missing else ""))
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
