"""The benchmark's sections: what is measured, on which models, with which tools.  Each section fills
``results["sections"][name]`` with rows (one measurement each, from its own process); ``render.py`` turns
them into tables."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import (ARCHS, DIGITS, MODELOPT_PY, QUICK_DIGITS, eval_model, log, machine, model_facts,
                     modelopt_available, tag, versions)
from .real import run_real
from .workers import run_task

#: every section, in the default order
SECTIONS: dict[str, str] = {}
#: what ``--quick`` runs: a signal in at most 5 minutes on 2 cores with a warm cache
QUICK_SECTIONS = ("accuracy", "calib", "latency", "real")


def section(name: str):
    def deco(fn):
        SECTIONS[name] = fn.__name__
        return fn
    return deco


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="qc-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"versions": versions(), "machine": machine(), "command": " ".join(sys.argv),
                              "quick": args.quick, "sections": {}}
        from qcompiler.zoo import zoo

        self.zoo = zoo

    # -- inputs ---------------------------------------------------------------------------------
    def prepped(self, name: str) -> str:
        return str(self.zoo.onnx_path(name))

    def calib(self, name: str, n: int) -> str:
        return str(self.zoo.calibration_npz(name, n))

    def zoo_inputs(self, name: str) -> tuple[bool, str, str, str]:
        """A zoo model's (digits-trained?, path, calibration set: 128 samples if trained else 32, 16 held-out
        samples)."""
        trained = self.zoo.get(name).trained
        return trained, self.prepped(name), self.calib(name, 128 if trained else 32), self.eval_npz(name, 16)

    def eval_npz(self, name: str, n: int = 16) -> str:
        p = self.work / f"eval-{name}-{n}.npz"
        if not p.exists():
            entry = self.zoo.get(name)
            x = np.random.default_rng(123).standard_normal((n,) + entry.input_shape).astype(np.float32)
            np.savez(p, input=x)
        return str(p)

    # -- one measurement each -------------------------------------------------------------------
    def with_latency(self, row: dict, model: str, shape=(1, 16, 16), batch: int = 8) -> dict:
        """Add the onnxruntime CPU latency (median ms, own process) of a tool's output to its row."""
        if row.get("ok"):
            lat = run_task({"kind": "latency", "model": model, "batch": batch, "shape": list(shape),
                            "runs": 20 if self.args.quick else 200})
            row["latency_ms_b8"] = lat.get("median_ms")
        return row

    def qc(self, what: str, src: str, pipeline: str, calib: str, *, digits: bool = True, stem: str = "",
           **task) -> tuple[dict, str]:
        """qcompiler compile in its own process; returns (result row, output path)."""
        log(f"[{what}] qcompiler {pipeline}")
        out = str(self.work / f"{stem or what}-{tag(src + pipeline + str(task))}.onnx")
        return run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": pipeline, "calib": calib,
                         "digits": digits, **task}), out

    def ort(self, what: str, src: str, method: str, calib: str, *, digits: bool = True, **task) -> tuple[dict, str]:
        """onnxruntime.quantization.quantize_static in its own process."""
        log(f"[{what}] onnxruntime.quantization {method} {task.get('config', '')}")
        out = str(self.work / f"{what}-ort-{tag(src + method + str(task))}.onnx")
        return run_task({"kind": "ort", "src": src, "out": out, "method": method, "calib": calib, "digits": digits,
                         **task}), out

    def modelopt(self, what: str, src: str, method: str, calib: str, *, digits: bool = True,
                 eval_npz: str | None = None) -> tuple[dict, str] | None:
        """NVIDIA ModelOpt ONNX PTQ in its own virtualenv (None, with the reason recorded, when it is absent)."""
        ok, why = modelopt_available()
        if not ok:
            self.results["modelopt"] = why
            return None
        log(f"[{what}] modelopt {method}")
        out = str(self.work / f"{what}-mo-{tag(src + method)}.onnx")
        r = run_task({"kind": "modelopt", "src": src, "out": out, "method": method, "calib": calib},
                     python=MODELOPT_PY)
        if r.get("ok"):
            try:
                r.update(eval_model(src, out, digits, eval_npz))
                r.update(model_facts(out))
            except Exception as exc:
                r.update(ok=False, error=f"evaluating ModelOpt's output failed: {exc}")
        return r, out

    # -- sections -------------------------------------------------------------------------------
    @section("accuracy")
    def accuracy(self) -> None:
        models = self.args.models or (QUICK_DIGITS if self.args.quick else DIGITS)
        qc_pipes = ["trt-int8", "trt-int8{calib=entropy}", "trt-int8{calib=mse}", "trt-int8{calib=min_max}",
                    "trt-int8{cle=true}"]
        if self.args.quick:
            qc_pipes = ["trt-int8", "trt-int8{calib=entropy}"]
        ort_runs = [("minmax", None), ("entropy", None), ("percentile", None), ("minmax", "u8s8")]
        if self.args.quick:
            ort_runs = [("minmax", None), ("percentile", None), ("minmax", "u8s8")]
        rows = []
        for m in models:
            src, cal = self.prepped(m), self.calib(m, 256)
            rows.append({"model": m, "tool": "fp32", "method": "-", **self.with_latency({"ok": True}, src)})
            for p in qc_pipes:
                r, out = self.qc(f"accuracy {m}", src, p, cal, stem=f"acc-{m}")
                rows.append({"model": m, "tool": "qcompiler", "method": p, **self.with_latency(r, out)})
            for meth, cfg in ort_runs:
                r, out = self.ort(f"acc-{m}", src, meth, cal, config=cfg)
                label = meth + (f" {cfg}" if cfg else "")
                rows.append({"model": m, "tool": "ort.quantize_static", "method": label, **self.with_latency(r, out)})
            for meth in ("max", "entropy"):
                got = self.modelopt(f"acc-{m}", src, meth, cal)
                if got is None:
                    break
                rows.append({"model": m, "tool": "modelopt", "method": meth, **self.with_latency(*got)})
        self.results["sections"]["accuracy"] = rows

    @section("outlier")
    def outlier(self) -> None:
        """How much one bad calibration image costs each calibrator (1 of 256 images scaled by 8)."""
        models = self.args.models or (["resnet"] if self.args.quick else QUICK_DIGITS)
        rows = []
        for m in models:
            src, cal = self.prepped(m), self.calib(m, 256)
            bad = self.work / f"calib-{m}-256-outlier.npz"
            x = np.load(cal)["input"].copy()
            x[17] *= 8.0
            np.savez(bad, input=x)
            for data, path in (("clean", cal), ("outlier", str(bad))):
                for meth in ("min_max", "percentile", "entropy", "mse"):
                    r, _ = self.qc(f"outlier {m} {data}", src, f"trt-int8{{calib={meth}}}", path, stem=f"out-{m}")
                    rows.append({"model": m, "data": data, "tool": "qcompiler", "method": meth, **r})
                for meth in ("minmax", "percentile"):
                    r, _ = self.ort(f"out-{m}-{data}", src, meth, path)
                    rows.append({"model": m, "data": data, "tool": "ort.quantize_static", "method": meth, **r})
        self.results["sections"]["outlier"] = rows

    @section("recovery")
    def recovery(self) -> None:
        models = self.args.models or (QUICK_DIGITS if self.args.quick else DIGITS)
        pipes = ["trt-int8", "trt-int8{cle=true}", "trt-int8{cle=true bias-correct=true}",
                 "trt-int8{bias-correct=true}", "trt-int8{calib=min_max bias-correct=true}",
                 "trt-int8{finetune=adaround}", "trt-int8{finetune=lsq}", "trt-int8{target-sqnr=40}"]
        if self.args.quick:
            pipes = ["trt-int8", "trt-int8{bias-correct=true}", "trt-int8{finetune=lsq}"]
        w4 = self.work / "w4.yaml"
        w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
        pt = self.work / "pt8.yaml"
        pt.write_text("global:\n  weight: {dtype: s8, qscheme: per_tensor_symmetric}\n")
        plans = [("int8", None, pipes),
                 ("W4A8", str(w4), ["trt-int8", "trt-int8{bias-correct=true}", "trt-int8{finetune=adaround}",
                                    "trt-int8{finetune=lsq}"])]
        rows = []
        for m in models:
            for setting, cfg, ps in plans:
                for p in ps:
                    r, _ = self.qc(f"recovery {m} {setting}", self.prepped(m), p, self.calib(m, 256), config=cfg,
                                   stem=f"rec-{m}")
                    rows.append({"model": m, "setting": setting, "pipeline": p, **r})
        for p in ["trt-int8", "trt-int8{cle=true}", "trt-int8{cle=true bias-correct=true}", "trt-int8{finetune=lsq}",
                  "trt-int8{cle=true finetune=lsq}"]:
            r, _ = self.qc("recovery mobilenetv2 per-tensor int8 weights", self.prepped("mobilenetv2"), p,
                           self.calib("mobilenetv2", 256), config=str(pt), stem="rec-pt")
            rows.append({"model": "mobilenetv2", "setting": "int8 per-tensor weights", "pipeline": p, **r})
        self.results["sections"]["recovery"] = rows

    @section("arch")
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
                r, _ = self.qc(f"arch {m}", src, p, cal, digits=False, eval_npz=ev, stem=f"arch-{m}")
                rows.append({"model": m, "tool": "qcompiler", "method": p, **r})
            for meth in ("minmax", "entropy", "percentile"):
                r, _ = self.ort(f"arch-{m}", src, meth, cal, digits=False, eval_npz=ev)
                rows.append({"model": m, "tool": "ort.quantize_static", "method": meth, **r})
            for meth in ("max", "entropy"):
                got = self.modelopt(f"arch-{m}", src, meth, cal, digits=False, eval_npz=ev)
                if got is None:
                    break
                rows.append({"model": m, "tool": "modelopt", "method": meth, **got[0]})
        self.results["sections"]["arch"] = rows

    @section("calib")
    def calib_scaling(self) -> None:
        name = "resnet50"
        counts = [32, 64] if self.args.quick else [64, 256, 512]
        rounds = 1 if self.args.quick else 3  # median of alternating calibration / plain-inference rounds
        src = self.work / "resnet50-bnfold.onnx"
        if not src.exists():
            from qcompiler.api import compile_model

            compile_model(str(self.zoo.onnx_path(name)), str(src), "cleanup,fold-constants,fold-bn,cleanup")
        ours = ["min_max", "entropy", "percentile"] if not self.args.quick else ["min_max", "percentile"]
        theirs = ["minmax", "entropy", "percentile"] if not self.args.quick else ["minmax", "percentile"]
        rows = []
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

    @section("hard")
    def hard(self) -> None:
        """Issue #16: the stand-ins of the models every int8 tool loses on (models/hard.py), qcompiler's defaults
        beside onnxruntime.quantization and ModelOpt, with the task metric, each output's SQNR and the MACs left
        float."""
        from qcompiler.zoo import hard

        names = self.args.models or hard.NAMES
        qc = [("trt-int8", "default"), ("trt-int8{smooth=off guard=off}", "no smoothing, no guard"),
              ("trt-int8{calib=entropy guard=off}", "entropy, no guard"), ("trt-int8{calib=entropy}", "entropy"),
              ("trt-int8{calib=entropy smooth=off guard=off}", "entropy, nothing"),
              ("trt-int8{calib=entropy smooth=off}", "entropy, guard only"), ("trt-fp8", "fp8 default")]
        if self.args.quick:
            qc = qc[:2]
        rows = []
        for name in names:
            if name not in hard.NAMES:
                continue
            m = hard.get(name)
            src, calib = str(m.onnx_path()), str(m.calib_data(128))
            base = {"model": name, "metric_name": m.metric}
            for pipeline, what in qc:
                log(f"[hard] {name} qcompiler {pipeline}")
                out = str(self.work / f"hard-{name}-{tag(pipeline)}.onnx")
                r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": pipeline, "calib": calib,
                              "eval": False})
                rows.append({**base, "tool": "qcompiler", "setting": what, "method": pipeline,
                             **self._hard_eval(m, src, out, r)})
            for meth in (["minmax"] if self.args.quick else ["minmax", "entropy", "percentile"]):
                log(f"[hard] {name} onnxruntime {meth}")
                out = str(self.work / f"hard-{name}-ort-{meth}.onnx")
                r = run_task({"kind": "hard_ort", "src": src, "out": out, "method": meth, "calib": calib})
                rows.append({**base, "tool": "ort", "setting": f"quantize_static {meth}", "method": meth,
                             **self._hard_eval(m, src, out, r)})
            ok, why = modelopt_available()
            if not ok:
                self.results["modelopt"] = why
                continue
            for mode, meth in ([("int8", "max")] if self.args.quick else
                               [("int8", "max"), ("int8", "entropy"), ("fp8", "max")]):
                log(f"[hard] {name} modelopt {mode} {meth}")
                out = str(self.work / f"hard-{name}-mo-{mode}-{meth}.onnx")
                r = run_task({"kind": "hard_modelopt", "src": src, "out": out, "method": meth, "mode": mode,
                              "calib": calib}, python=MODELOPT_PY)
                rows.append({**base, "tool": "modelopt", "setting": f"{mode} {meth}", "method": f"{mode} {meth}",
                             **self._hard_eval(m, src, out, r)})
        self.results["sections"]["hard"] = rows

    @section("rounding")
    def rounding(self) -> None:
        """Issue #14: weight rounding at W4A8 (per-channel 4-bit weights, 8-bit activations): round-to-nearest,
        GPTQ (one pass, sequential), AdaRound, LSQ; wall time and peak RSS of each step; and W4A4 per-tensor with
        PTQ, AdaRound and QAT on the digits zoo."""
        import tempfile


        w4 = Path(tempfile.mkdtemp()) / "w4.yaml"
        w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
        w4a4 = w4.with_name("w4a4.yaml")
        w4a4.write_text("global:\n  weight: {dtype: s4, qscheme: per_tensor_symmetric}\n"
                        "  activation: {dtype: s4, qscheme: per_tensor_symmetric}\n")
        names = self.args.models or (["resnet", "transformer"] if self.args.quick else
                                     ["resnet", "mobilenetv2", "transformer", "text-cls"])
        rows = []
        for name in names:
            trained, src, calib, evn = self.zoo_inputs(name)
            rtn = str(self.work / f"rd-{name}-rtn.onnx")
            base = {"model": name, "bits": "W4A8"}
            r = run_task({"kind": "qcompiler", "src": src, "out": rtn, "pipeline": "trt-int8{guard=off}",
                          "calib": calib, "config": str(w4), "digits": trained, "eval_npz": evn})
            rows.append({**base, "method": "round to nearest", **r})
            for method, pipeline in (("GPTQ", "trt-int8{guard=off},gptq"),
                                     ("GPTQ sequential", "trt-int8{guard=off},gptq{inputs=sequential}")):
                log(f"[rounding] {name} {method}")
                out = str(self.work / f"rd-{name}-{tag(pipeline)}.onnx")
                rows.append({**base, "method": method, **run_task(
                    {"kind": "qcompiler", "src": src, "out": out, "pipeline": pipeline, "calib": calib,
                     "config": str(w4), "digits": trained, "eval_npz": evn})})
            for method in ("adaround", "lsq"):
                log(f"[rounding] {name} {method}")
                out = str(self.work / f"rd-{name}-{method}.onnx")
                r = run_task({"kind": "finetune", "qdq": rtn, "src": src, "out": out, "method": method,
                              "calib": calib})
                if r.get("ok"):
                    r.update(eval_model(src, out, trained, evn))
                rows.append({**base, "method": {"adaround": "AdaRound", "lsq": "LSQ"}[method], **r})
        if not self.args.quick:
            for name in ("mobilenetv2", "transformer"):
                src = str(self.zoo.onnx_path(name))
                ptq = str(self.work / f"rd-{name}-w4a4.onnx")
                base = {"model": name, "bits": "W4A4 per-tensor"}
                r = run_task({"kind": "qcompiler", "src": src, "out": ptq, "pipeline": "trt-int8{guard=off smooth=off}",
                              "calib": self.calib(name, 128), "config": str(w4a4), "digits": True})
                rows.append({**base, "method": "PTQ", **r})
                for method in ("adaround", "qat"):
                    log(f"[rounding] {name} W4A4 {method}")
                    out = str(self.work / f"rd-{name}-w4a4-{method}.onnx")
                    task = {"kind": "finetune", "qdq": ptq, "src": src, "out": out, "method": method,
                            "calib": self.calib(name, 1024 if method == "qat" else 128), "max_samples": 1024,
                            "epochs": 6, "milestones": "observers=4"}
                    r = run_task(task)
                    if r.get("ok"):
                        r.update(eval_model(src, out, True, None))
                    rows.append({**base, "method": {"adaround": "AdaRound", "qat": "QAT (6 epochs)"}[method], **r})
        self.results["sections"]["rounding"] = rows

    @section("weight-only")
    def weight_only(self) -> None:
        """Issue #14: blocked int4 weight-only on transformer-class models: trt-int4-weights (RTN, AWQ, GPTQ)
        beside onnxruntime's MatMulNBits quantizer (RTN, GPTQ) and ModelOpt's int4 AWQ: output SQNR, task metric,
        size on disk, time."""
        from qcompiler.zoo import hard

        rows = []
        models = [("transformer", None), ("encoder", hard.get("encoder"))]
        for name, hm in models:
            src = str(hm.onnx_path()) if hm else str(self.zoo.onnx_path(name))
            calib = str(hm.calib_data(128)) if hm else self.calib(name, 128)
            bs = 32 if name == "transformer" else 128  # the digits transformer's layers are 64 wide
            for method in (["rtn", "gptq"] if self.args.quick else ["rtn", "awq", "gptq", "awq+gptq"]):
                pipeline = f"trt-int4-weights{{method={method} block-size={bs}}}"
                log(f"[weight-only] {name} {pipeline}")
                out = str(self.work / f"wo-{name}-{tag(pipeline)}.onnx")
                r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": pipeline, "calib": calib,
                              "eval": False})
                rows.append({"model": name, "tool": "qcompiler", "method": method,
                             **self._wo_eval(name, hm, src, out, r)})
            # the others get the weights as constants at the MatMuls (the exports route them through Transpose
            # nodes, which onnxruntime's and ModelOpt's weight-only quantizers skip)
            folded = str(self.work / f"wo-{name}-folded.onnx")
            if not os.path.exists(folded):
                from qcompiler.api import compile_model

                compile_model(src, folded, "tidy")
            for method in ("rtn", "gptq"):
                log(f"[weight-only] {name} onnxruntime MatMulNBits {method}")
                out = str(self.work / f"wo-{name}-ort-{method}.onnx")
                r = run_task({"kind": "ort_nbits", "src": folded, "out": out, "method": method, "calib": calib,
                              "block_size": bs})
                rows.append({"model": name, "tool": "ort", "method": f"MatMulNBits {method}",
                             **self._wo_eval(name, hm, src, out, r)})
            ok, why = modelopt_available()
            if ok:
                log(f"[weight-only] {name} modelopt int4 awq_clip")
                out = str(self.work / f"wo-{name}-mo.onnx")
                r = run_task({"kind": "hard_modelopt", "src": folded, "out": out, "method": "awq_clip",
                              "mode": "int4", "calib": calib, "block_size": bs}, python=MODELOPT_PY)
                rows.append({"model": name, "tool": "modelopt", "method": "int4 awq_clip",
                             **self._wo_eval(name, hm, src, out, r)})
            else:
                self.results["modelopt"] = why
        self.results["sections"]["weight-only"] = rows

    def _wo_eval(self, name: str, hm, src: str, out: str, r: dict) -> dict:
        if not r.get("ok"):
            return r
        try:
            from qcompiler.quant.lint import lint_model

            size = os.path.getsize(out) + (os.path.getsize(out + ".data") if os.path.exists(out + ".data") else 0)
            r = {**r, "mib": round(size / 2 ** 20, 3), "fp32_mib": round(os.path.getsize(src) / 2 ** 20, 3)}
            if hm is not None:
                ev = hm.evaluate(src, out)
                r.update(metric=ev["metric"], sqnr_db=ev["sqnr_db"])
            else:
                r.update(eval_model(src, out, True, None))
            try:
                r["lint_errors"] = lint_model(out).n_errors
            except Exception:  # noqa: BLE001 - contrib ops (MatMulNBits) are not ONNX standard
                r["lint_errors"] = None
        except Exception as exc:
            r = {**r, "ok": False, "error": f"evaluating the output failed: {type(exc).__name__}: {exc}"}
        return r

    @section("zoo-defaults")
    def zoo_defaults(self) -> None:
        """Issue #16's no-regression check: every zoo model with today's defaults (smoothing of outlier channels,
        the guard) beside the defaults before them (smooth=off guard=off): output SQNR vs FP32 on held-out data, and
        what the guard decided (nothing, when the outputs are healthy)."""
        from qcompiler.zoo import zoo

        names = self.args.models or (["resnet", "transformer"] if self.args.quick else zoo.names())
        rows = []
        for name in names:
            trained, src, calib, evn = self.zoo_inputs(name)
            for pipeline, what in (("trt-int8", "today's defaults"), ("trt-int8{smooth=off guard=off}", "before")):
                log(f"[zoo-defaults] {name} {pipeline}")
                out = str(self.work / f"zd-{name}-{tag(pipeline)}.onnx")
                r = run_task({"kind": "qcompiler", "src": src, "out": out, "pipeline": pipeline, "calib": calib,
                              "digits": trained, "eval_npz": evn})
                rows.append({"model": name, "setting": what, "pipeline": pipeline, **r})
        self.results["sections"]["zoo-defaults"] = rows

    @staticmethod
    def _hard_eval(m, src: str, out: str, r: dict) -> dict:
        """Metric, output SQNRs, Q/DQ counts (subgraphs included), lint and MACs left float of one output."""
        if not r.get("ok"):
            return r
        try:
            from qcompiler.ir import load_model
            from qcompiler.ir.graph import iter_graphs
            from qcompiler.quant.guard import layer_macs
            from qcompiler.quant.lint import lint_model

            ev = m.evaluate(src, out)
            g = load_model(out)
            ops = [n.op for sub in iter_graphs(g) for n in sub.nodes]
            macs = layer_macs(load_model(src))
            quantized = set()
            for sub in iter_graphs(g):
                for n in sub.nodes:
                    w = n.inputs[1] if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.inputs) > 1 \
                        else None
                    if w is not None and w.inputs and w.inputs[0].op == "DequantizeLinear":
                        quantized.add(n.name)
            total = sum(v for k, v in macs.items()) or 1.0
            lint = lint_model(out)
            r = {**r, "metric": ev["metric"], "fp32_metric": ev.get("fp32_metric"), "sqnr_db": ev["sqnr_db"],
                 "q": ops.count("QuantizeLinear"), "dq": ops.count("DequantizeLinear"),
                 "float_macs_pct": round(100 * sum(v for k, v in macs.items() if k not in quantized) / total, 2),
                 "lint_errors": lint.n_errors, "lint_warnings": lint.n_warnings}
        except Exception as exc:  # recorded, not hidden
            r = {**r, "ok": False, "error": f"evaluating the output failed: {type(exc).__name__}: {exc}"}
        return r

    @section("calib-memory")
    def calib_memory(self) -> None:
        """Peak RSS of calibration, data loading included, at 32 and 1024 samples of a 224x224 model, for each
        on-disk form of the data (.npz, compressed .npz, a folder of per-sample .npy files)."""
        name = "mobilenetv2-full"
        counts = [32, 256] if self.args.quick else [32, 1024]
        src = self.work / f"{name}-bnfold.onnx"
        if not src.exists():
            from qcompiler.api import compile_model

            compile_model(str(self.zoo.onnx_path(name)), str(src), "cleanup,fold-constants,fold-bn,cleanup")
        rows = []
        for n in counts:
            for form in ("npz", "npz-compressed", "npy-folder", "image-folder"):
                data = self._calib_form(name, n, form)
                for meth in ("percentile", "min_max"):
                    log(f"[calib-memory] {name} n={n} {form} {meth}")
                    rows.append({"samples": n, "data": form, "method": meth,
                                 **run_task({"kind": "qc_calib_mem", "src": str(src), "calib": data,
                                             "method": meth})})
        self.results["sections"]["calib-memory"] = rows

    def _calib_form(self, name: str, n: int, form: str) -> str:
        """The zoo's random calibration set for ``name`` written as ``form`` (written once, sample by sample)."""
        shape = self.zoo.get(name).input_shape
        out = self.work / (f"calmem-{name}-{n}-{form}" + ("" if form.endswith("folder") else ".npz"))
        if out.exists():
            return str(out)
        rng = np.random.default_rng(0)
        if form == "image-folder":  # 8-bit RGB PNGs, preprocessed by the default spec while calibrating
            from PIL import Image

            tmp = Path(str(out) + ".tmp")
            tmp.mkdir(exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (shape[1], shape[2], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp / f"{i:05d}.png")
            tmp.rename(out)
        elif form == "npy-folder":
            tmp = Path(str(out) + ".tmp")
            tmp.mkdir(exist_ok=True)
            for i in range(n):
                np.save(tmp / f"{i:05d}.npy", rng.standard_normal((1,) + shape).astype(np.float32))
            tmp.rename(out)
        else:
            x = rng.standard_normal((n,) + shape).astype(np.float32)
            (np.savez_compressed if form == "npz-compressed" else np.savez)(str(out) + ".tmp.npz", input=x)
            del x
            os.replace(str(out) + ".tmp.npz", out)
        return str(out)

    @section("executor")
    def executor(self) -> None:
        """1 vs 2 Ray workers against one process: calibration of the ResNet-50 architecture (512 samples, entropy),
        the one-layer-at-a-time sensitivity scan of MobileNetV2 (16 samples) and GPTQ of its 4-bit weights; each
        run in its own process."""
        from qcompiler.api import compile_model

        rows = []
        n = 64 if self.args.quick else 512
        src = self.work / "resnet50-bnfold.onnx"
        if not src.exists():
            compile_model(str(self.zoo.onnx_path("resnet50")), str(src), "cleanup,fold-constants,fold-bn,cleanup")
        calib = self.calib("resnet50", n)
        name = "mobilenetv2-full"
        qdq = self.work / f"{name}-sens.onnx"
        scal = self.calib(name, 8 if self.args.quick else 16)
        if not qdq.exists():
            compile_model(str(self.zoo.onnx_path(name)), str(qdq), "trt-int8{guard=off smooth=off}",
                          calib_data=scal)
        w4 = self.work / "w4.yaml"
        w4.write_text("global:\n  weight: {dtype: s4, qscheme: per_channel_symmetric}\n")
        w4q = self.work / f"{name}-w4.onnx"
        if not w4q.exists():
            compile_model(str(self.zoo.onnx_path(name)), str(w4q), "trt-int8{guard=off smooth=off}",
                          calib_data=scal, config=str(w4))
        for what, task in (("calibration: ResNet-50, %d samples" % n,
                            {"what": "calib", "src": str(src), "calib": calib, "method": "entropy"}),
                           ("sensitivity scan: MobileNetV2", {"what": "sensitivity", "src": str(self.zoo.onnx_path(
                               name)), "qdq": str(qdq), "calib": scal}),
                           ("GPTQ W4A8: MobileNetV2 (finetune --method gptq)",
                            {"what": "gptq", "src": str(self.zoo.onnx_path(name)), "qdq": str(w4q),
                             "calib": scal, "out": str(self.work / f"{name}-gptq")})):
            base = None
            for ex, cpus in (("local", 0), ("ray", 1), ("ray", 2)):
                log(f"[executor] {what} {ex} {cpus or ''}")
                r = run_task({"kind": "executor", "executor": ex, "cpus": cpus, **task})
                label = "one process" if ex == "local" else f"Ray, {cpus} worker{'s' if cpus > 1 else ''}"
                row = {"work": what, "executor": label, **r}
                if ex == "local":
                    base = r
                elif base and base.get("ok") and r.get("ok"):
                    row["speedup"] = round(base["wall_s"] / r["wall_s"], 2)
                    row["same"] = "yes" if r["digest"] == base["digest"] else "**no**"
                rows.append(row)
        self.results["sections"]["executor"] = rows

    @section("compile")
    def compile_time(self) -> None:
        from tools_graphs import deep_resnet  # tools/ is on sys.path

        from qcompiler.ir import load_model

        factors = [1, 4] if self.args.quick else [1, 4, 16]
        graphs = [("resnet50", str(self.zoo.onnx_path("resnet50")))]
        for k in factors:
            p = self.work / f"deep-{k}.onnx"
            if not p.exists():
                deep_resnet(k, str(p))
            graphs.append((f"deep-resnet x{k}", str(p)))
        rows = []
        for label, path in graphs:
            cal = self.work / f"cal-{Path(path).stem}.npz"
            shape = [int(d) if isinstance(d, int) else 1 for d in load_model(path).inputs[0].shape]
            np.savez(cal, input=np.random.default_rng(0).standard_normal([2] + shape[1:]).astype(np.float32))
            stem = Path(path).stem
            task = {"kind": "compile_only", "src": path, "out": str(self.work / f"compiled-{stem}.onnx"),
                    "pipeline": "trt-int8", "calib": str(cal), "cache": str(self.work / f"cache-{stem}.json")}
            run_task(task)  # fills the cache
            log(f"[compile] {label}")
            rows.append({"graph": label, **run_task(task)})
        self.results["sections"]["compile"] = rows

    @section("latency")
    def latency(self) -> None:
        models = [("resnet", [1, 16, 16], True), ("mobilenetv2", [1, 16, 16], True)]
        if not self.args.quick:
            models.append(("resnet50", [3, 224, 224], False))
        rows = []
        for name, shape, digits_model in models:
            src = self.prepped(name)
            cal = self.calib(name, 64 if digits_model else 32)
            variants = {"fp32": src}
            for pipe in ("trt-int8", "ort-int8"):
                r, out = self.qc(f"latency {name}", src, pipe, cal, digits=digits_model, eval=False, stem=f"lat-{name}")
                if r.get("ok"):
                    variants[f"qcompiler {pipe}"] = out
            for cfg, label in (("s8s8", "ort.quantize_static"), ("u8s8", "ort.quantize_static u8s8")):
                r, out = self.ort(f"lat-{name}", src, "minmax", cal, digits=digits_model, eval=False, config=cfg)
                if r.get("ok"):
                    variants[label] = out
            for batch in (1, 8):
                for label, path in variants.items():
                    log(f"[latency] {name} b={batch} {label}")
                    runs = (10 if self.args.quick else 30) * (1 if name == "resnet50" else 10)  # sub-ms models: more
                    r = run_task({"kind": "latency", "model": path, "batch": batch, "shape": shape, "runs": runs})
                    rows.append({"model": name, "batch": batch, "variant": label, **r})
        self.results["sections"]["latency"] = rows

    @section("cle")
    def cle(self) -> None:
        from qcompiler.ir import load_model
        from qcompiler.passes.cle import CLEReport
        from qcompiler.pm import PassContext, run_pipeline

        layers = []
        for name in ("mobilenetv2", "mobilenetv2-full"):
            g = load_model(self.zoo.onnx_path(name))
            ctx = PassContext()
            run_pipeline(g, "fold-bn,merge-conv1x1,cle{measure=true}", ctx)
            layers.append({"model": name, "layers": ctx.state.require(CLEReport).layers})
        acc = []
        for m in ("mobilenetv2", "resnet"):
            for dtype in ("s8", "s4"):
                for scheme in ("per_tensor_symmetric", "per_channel_symmetric"):
                    cfg = self.work / f"w-{dtype}-{scheme}.yaml"
                    cfg.write_text(f"global:\n  weight: {{dtype: {dtype}, qscheme: {scheme}}}\n")
                    for pipe in ("trt-int8", "trt-int8{cle=true}"):
                        r, _ = self.qc(f"cle {m} {dtype} {scheme}", self.prepped(m), pipe, self.calib(m, 256),
                                       config=str(cfg), stem=f"cle-{m}")
                        acc.append({"model": m, "weights": f"{dtype} {scheme}", "pipeline": pipe, **r})
        self.results["sections"]["cle"] = {"layers": layers, "accuracy": acc}

    @section("torch")
    def torch_front(self) -> None:
        """Issue #25: compile_torch with a DataLoader: peak RSS at 32 and 1024 samples (memory must stay flat)."""
        rows = []
        for m in (self.args.models or ["resnet18", "mobilenetv2-full"]):
            for n in (32, 1024):
                log(f"[torch] {m} compile_torch, DataLoader of {n} samples")
                r = run_task({"kind": "torch_compile", "model": m, "samples": n,
                              "out": str(self.work / f"torch-{m}-{n}.onnx")})
                rows.append({"model": m, "samples": n, **r})
        self.results["sections"]["torch"] = rows

    @section("real")
    def real(self) -> None:
        """Issue #22: the development set of shipped models (models/real/) through every tool."""
        self.results["sections"]["real"] = run_real(self)

    def run(self) -> dict:
        for s in self.args.sections.split(","):
            if s not in SECTIONS:
                raise SystemExit(f"unknown section '{s}' (sections: {', '.join(SECTIONS)})")
            t0 = time.perf_counter()
            getattr(self, SECTIONS[s])()
            log(f"[{s}] {time.perf_counter() - t0:.0f} s")
        return self.results
