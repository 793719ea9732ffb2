"""The ``qcompiler`` command line.

(Over 500 lines on purpose: one parser and one handler per subcommand, so the whole command surface reads in one
place; the work itself is in qcompiler/api.py and the libraries.)

Exit codes: 0 success, 1 errors (bad model, failed pass, lint errors), 2 usage errors (bad pipeline,
unknown pass or option, wrong arguments), 3 internal errors (a bug: please report with the
reproducer written by --reproducer DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import traceback
from typing import Any, NoReturn, Sequence

from .diagnostics import (Diagnostic, DiagnosticEngine, QCompilerError, Severity, UsageError, render_json,
                          render_text)

EXAMPLES = {
    "compile": """
        examples:
          qcompiler compile model.onnx -o model.int8.onnx --pipeline trt-int8 --calib-data calib.npz
          qcompiler compile model.onnx -o prep.onnx --pipeline 'fold-bn,merge-conv1x1,fold-residual,cle'
          qcompiler compile model.onnx -o out.onnx --pipeline 'calibrate{method=entropy},insert-qdq' \\
              --calib-data calib.npz --calib-cache stats.json --config recipe.yaml --timing
    """,
    "passes": """
        examples:
          qcompiler passes                 # list passes and named pipelines
          qcompiler passes describe cle    # options, facts and the math of one pass
    """,
    "pipeline": """
        examples:
          qcompiler pipeline --print 'cleanup,repeat{max-steps=2}(fold-constants,cleanup)'
          qcompiler pipeline --check 'fold-bn,cle{max-iters=20}'
          qcompiler pipeline --print trt-int8 --expand --format json
    """,
    "inspect": """
        examples:
          qcompiler inspect model.onnx
          qcompiler inspect model.onnx --json
          qcompiler inspect model.onnx --text     # the whole graph, one node per line
    """,
    "lint-trt": """
        examples:
          qcompiler lint-trt model.int8.onnx
          qcompiler lint-trt model.int8.onnx --format json --Werror
    """,
    "report": """
        examples:
          qcompiler report model.onnx model.int8.onnx --calib-data calib.npz -o report/
    """,
    "finetune": """
        examples:
          qcompiler finetune model.w4.onnx --fp32 model.onnx --calib-data calib.npz --method adaround -o model.ada.onnx
          qcompiler finetune model.int8.onnx --fp32 model.onnx --calib-data calib.npz --method lsq -o model.lsq.onnx
          qcompiler finetune model.w4.onnx --fp32 model.onnx --calib-data calib.npz --method gptq -o model.gptq.onnx
          qcompiler finetune model.w4a4.onnx --fp32 model.onnx --calib-data train.npz --method qat --epochs 8 \
              --milestones observers=6 -o model.qat.onnx
    """,
    "demo": """
        examples:
          qcompiler demo                        # trt-int8 on a digits-trained ResNet, FP32 vs int8
          qcompiler demo --model mobilenetv2 --pipeline 'trt-int8{calib=percentile}'
    """,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 on usage errors; keep that, add a hint
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}\n  hint: run `{self.prog} --help` for examples", file=sys.stderr)
        sys.exit(2)


def _sub(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=help,
                                 epilog=textwrap.dedent(EXAMPLES.get(name, "")),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_diag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--diagnostics-format", choices=("text", "json"), default="text",
                   help="how diagnostics are printed to stderr (default text)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="show remarks (-v) and notes (-vv), not only warnings and errors")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def _add_calib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-data", metavar="PATH",
                   help="calibration data: .npz (arrays keyed by input name, samples on axis 0), a folder of "
                        ".npz/.npy files, a folder of images (see --preprocess), or MODULE:FUNCTION, a Python "
                        "function returning an iterable of feeds (a torch DataLoader, a Dataset, tensors, tuples "
                        "or dicts; the current folder is importable)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="calibration batch size (default: 8, or 1 for models with a fixed batch of 1)")
    p.add_argument("--max-samples", type=int, default=None, metavar="N", help="use at most N calibration samples")
    p.add_argument("--preprocess", metavar="SPEC", default=None,
                   help="image preprocessing, e.g. 'resize=256 crop=224 mean=0.485,0.456,0.406 "
                        "std=0.229,0.224,0.225 layout=NCHW color=RGB'")
    p.add_argument("--skip-bad-samples", action="store_true",
                   help="skip samples with NaN/Inf (warning) instead of failing")
    p.add_argument("--layout", choices=("auto", "batch", "stacked", "feed"), default="auto",
                   help="how the data's arrays are laid out: batch (samples on axis 0), stacked (feeds on a new "
                        "leading axis), feed (each file is one onnxruntime run, as it is); auto (default) decides "
                        "per file from the ranks against the model's inputs; folders: one feed per file")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="qcompiler", description="Graph-rewriting quantization compiler over ONNX "
                     "(FP32 rewrites, calibration with onnxruntime, TensorRT-ready Q/DQ).",
                     epilog="run `qcompiler COMMAND --help` for the options and examples of each command",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qcompiler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _sub(sub, "compile", "run a pipeline on a model and write the result")
    p.add_argument("input", help="input .onnx model, or a saved torch.export program (.pt2: exported to ONNX "
                                 "first); never modified")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    p.add_argument("--pipeline", required=True, metavar="SPEC",
                   help="pipeline text (e.g. 'fold-bn,cle,calibrate,insert-qdq' or 'trt-int8'), or a .json/.yaml file")
    p.add_argument("--config", metavar="FILE", help="quantization recipe (.yaml/.json)")
    _add_calib_args(p)
    p.add_argument("--calib-cache", metavar="FILE", help="statistics cache (.json or .npz): reused when it matches")
    p.add_argument("--allow-random-calibration", action="store_true",
                   help="calibrate on random inputs when no --calib-data is given (accuracy will suffer)")
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS", default=[],
                   help="fix an input's symbolic dims, e.g. input:1x3x224x224 (repeatable)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the graph after each pass to DIR/NN-pass.{onnx,txt}")
    p.add_argument("--timing", action="store_true", help="print per-pass wall time (and per-worker time)")
    p.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]",
                   help="where independent work runs: local (default), ray (a local Ray runtime), ray:auto or "
                        "ray://host:port (a cluster); needs pip install 'qcompiler[ray]'")
    p.add_argument("--verify-each", action="store_true", help="verify the graph and each pass's modified flag")
    p.add_argument("--reproducer", metavar="DIR",
                   help="on a failure, save what replays it: the graph before the failing pass, a one-pass pipeline, "
                        "the pass state and replay.sh")
    p.add_argument("--state", metavar="DIR", help="start from pass state saved by a reproducer (DIR/state)")
    p.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                   help="store weights in OUTPUT.data (auto: when the input did, or when over 2 GB)")
    p.add_argument("--report", action="store_true",
                   help="print output SQNR vs the input model (and top-1 if labels are in the calibration data)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed for anything random (default 0)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress of long steps: auto (a bar on a terminal, plain lines in a log; off with -q), "
                        "on, off")
    p.add_argument("--Werror", action="store_true",
                   help="treat warnings (a pass that did nothing, a layer that fell back) as errors: exit 1, "
                        "nothing written")
    p.add_argument("--depfile", metavar="FILE",
                   help="write the files the output depends on (model, external data, calibration files, recipe) "
                        "in the Makefile form Make and Ninja read")
    p.add_argument("--manifest", metavar="FILE",
                   help="write the inputs' hashes, the canonical pipeline, versions and a summary (JSON)")
    p.add_argument("--rebuild", action="store_true",
                   help="compile even when the output is up to date (it records the inputs it was built from)")
    _add_diag_args(p)

    p = _sub(sub, "passes", "list passes and named pipelines, or describe one")
    p.add_argument("action", nargs="?", choices=("list", "describe"), default="list")
    p.add_argument("name", nargs="?", help="pass or pipeline to describe")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _sub(sub, "pipeline", "check or print a pipeline without a model")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", metavar="SPEC", help="exit 0 if SPEC parses and its facts are in order")
    g.add_argument("--print", dest="print_", metavar="SPEC", help="print SPEC in canonical form")
    p.add_argument("--format", choices=("text", "json", "yaml"), default="text")
    p.add_argument("--expand", action="store_true", help="replace named pipelines by their passes")
    p.add_argument("--all-options", action="store_true", help="spell out every option, defaults included")
    _add_diag_args(p)

    p = _sub(sub, "inspect", "summarise a model: inputs, outputs, opset, op histogram, Q/DQ, size")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.add_argument("--text", action="store_true", help="print the whole graph in text form")
    _add_diag_args(p)

    p = _sub(sub, "lint-trt", "check a Q/DQ model for TensorRT readiness (offline)")
    p.add_argument("model")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--Werror", action="store_true", help="treat warnings as errors (exit 1)")
    p.add_argument("--fp8", action="store_true", help="apply the FP8 variants of the shape rules")
    _add_diag_args(p)

    p = _sub(sub, "report", "per-layer error, sensitivity and plots for a quantized model")
    p.add_argument("fp32", help="the FP32 model")
    p.add_argument("qdq", help="the quantized (Q/DQ) model compiled from it")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for report.html, report.md, report.json")
    _add_calib_args(p)
    p.add_argument("--no-sensitivity", action="store_true", help="skip the one-layer-at-a-time sensitivity scan")
    p.add_argument("--no-plots", action="store_true", help="skip matplotlib plots")
    p.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]",
                   help="where independent work runs: local (default), ray (a local Ray runtime), ray:auto or "
                        "ray://host:port (a cluster); needs pip install 'qcompiler[ray]'")
    p.add_argument("--timing", action="store_true", help="print per-worker time")
    _add_diag_args(p)

    p = _sub(sub, "finetune", "fine-tune a Q/DQ model's scales or rounding in torch and write it back")
    p.add_argument("qdq", help="quantized model (from `qcompiler compile`)")
    p.add_argument("--fp32", required=True, help="the FP32 model it came from (the distillation teacher)")
    p.add_argument("--method", choices=("adaround", "lsq", "lsq+", "gptq", "qat"), required=True,
                   help="adaround / lsq / lsq+ / qat: torch; gptq: second-order weight rounding in numpy")
    p.add_argument("--epochs", type=int, default=5, help="qat: epochs over the calibration data")
    p.add_argument("--milestones", default=None, metavar="NAME=EPOCH,...",
                   help="qat: freeze from an epoch on, e.g. observers=2,bn=3 (step sizes, BatchNorm statistics)")
    p.add_argument("-o", "--output", required=True)
    _add_calib_args(p)
    p.add_argument("--iters", type=int, default=None, help="iterations (per layer for adaround)")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--train-weights", action="store_true", help="lsq: also learn the weights (QAT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--executor", default="local", metavar="local|ray[:ADDRESS]",
                   help="where independent work runs: local (default), ray (a local Ray runtime), ray:auto or "
                        "ray://host:port (a cluster); needs pip install 'qcompiler[ray]'")
    p.add_argument("--timing", action="store_true", help="print per-worker time")
    _add_diag_args(p)

    p = _sub(sub, "demo", "build a zoo model, compile it, and show what changed")
    p.add_argument("--model", default="resnet", help="zoo model (default resnet; see models/zoo.py)")
    p.add_argument("--pipeline", default="trt-int8", help="pipeline to run (default trt-int8)")
    p.add_argument("--workdir", default=None, help="where to write the models (default: a cache folder)")
    _add_diag_args(p)
    return parser


def _min_severity(args) -> Severity:
    if getattr(args, "quiet", False):
        return Severity.ERROR
    v = getattr(args, "verbose", 0)
    return Severity.NOTE if v >= 2 else Severity.REMARK if v == 1 else Severity.WARNING


def _emit(diags: list[Diagnostic], args, stream=None) -> None:
    stream = stream or sys.stderr
    sev = _min_severity(args)
    if getattr(args, "diagnostics_format", "text") == "json":
        print(render_json(diags, sev), file=stream)
    else:
        text = render_text(diags, sev)
        if text:
            print(text, file=stream)


def _progress(args) -> bool | None:
    """``--progress auto|on|off``; ``-q`` (print only errors) means off unless ``--progress on`` asks for it."""
    v = getattr(args, "progress", "auto")
    if v == "auto" and getattr(args, "quiet", False):
        return False
    return None if v == "auto" else v == "on"


def _calib_data(spec: str | None) -> Any:
    """``--calib-data``: a path as it is, or ``MODULE:FUNCTION`` (not an existing path) imported from the current
    folder or the environment: the function is called for each pass over the data, and what it returns (an
    iterable of feeds: a DataLoader, a list, a generator) is the data."""
    import re

    if spec is None or os.path.exists(spec) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        return spec
    import importlib

    mod_name, fn_name = spec.split(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--calib-data {spec}: cannot import it ({exc})", code="QC401",
                         hint="MODULE:FUNCTION names a function in an importable module (the current folder is on "
                              "the path), or give a file or folder") from None
    return fn


def _calib_options(args) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if getattr(args, "batch_size", None):
        opts["batch_size"] = args.batch_size
    if getattr(args, "max_samples", None):
        opts["max_samples"] = args.max_samples
    if getattr(args, "preprocess", None):
        opts["preprocess"] = args.preprocess
    if getattr(args, "skip_bad_samples", False):
        opts["skip_bad"] = True
    if getattr(args, "layout", "auto") != "auto":
        opts["layout"] = args.layout
    return opts


def _make_executor(args):
    from .executor import make_executor

    return make_executor(getattr(args, "executor", "local"), verbose=bool(getattr(args, "verbose", 0)))


def _print_timing(ex, args) -> None:
    """``--timing``: the executor's workers, their tasks and seconds (and Ray's start-up)."""
    if not getattr(args, "timing", False) or not ex.timing.seconds:
        return
    start = getattr(ex, "startup_seconds", None)
    print(f"executor {ex.name}: {ex.workers} worker(s)" + (f", started in {start:.1f} s" if start else ""),
          file=sys.stderr)
    for line in ex.timing.lines():
        print(line, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def cmd_compile(args) -> int:
    from .api import CompileOptions, compile_model
    from .ir.shapes import parse_input_shapes

    diags = DiagnosticEngine()
    shapes = parse_input_shapes(args.input_shape)
    ex = _make_executor(args)
    try:
        opts = CompileOptions(
            config=args.config, calib_data=_calib_data(args.calib_data), calib_options=_calib_options(args),
            calib_cache=args.calib_cache, input_shapes=shapes, allow_random_calibration=args.allow_random_calibration,
            seed=args.seed, threads=args.threads, progress=_progress(args), executor=ex,
            verify_each=args.verify_each, dump_ir=args.dump_ir, timing=args.timing, reproducer=args.reproducer,
            external_data=args.external_data, state=args.state, werror=args.Werror, depfile=args.depfile,
            manifest=args.manifest, rebuild=args.rebuild)
        if str(args.input).endswith(".pt2"):  # a saved torch.export program: exported to ONNX, then compiled
            from .torch import compile_torch, load_exported_program

            from dataclasses import replace

            ep, example = load_exported_program(args.input)
            res = compile_torch(ep, example, args.output, args.pipeline,
                                replace(opts, model_files=(str(args.input),)), diagnostics=diags)
        else:
            res = compile_model(args.input, args.output, args.pipeline, opts, diagnostics=diags)
    except QCompilerError:
        _emit(list(diags), args)
        raise
    finally:
        ex.close()
    _emit(list(diags), args)
    if res.up_to_date:
        if not args.quiet:
            print(f"up to date: {res.output} (model, data, recipe and pipeline unchanged; --rebuild to compile "
                  "anyway)", file=sys.stderr)
        return 0
    if not args.quiet:
        print(f"wrote {res.output} ({res.pipeline})", file=sys.stderr)
        guard: Any = next((st for st in res.context.state if getattr(st, "fact", "") == "guard-report"), None)
        if guard is not None and guard.result.decisions:
            r = guard.result
            n_float = sum(1 for d in r.decisions if d.remedy == "float")
            print(f"guard: worst output part {r.worst_before:.1f} -> {r.worst_after:.1f} dB "
                  f"({len(r.decisions) - n_float} tensor group(s) given another range, {n_float} kept float: "
                  f"{100 * r.float_macs_fraction:.2f} % of MACs; -v lists them)", file=sys.stderr)
        if args.verbose or args.timing:
            print(res.result.summary(), file=sys.stderr)
        _print_timing(ex, args)
    if args.report:
        from .report import compare_models

        rep = compare_models(args.input, str(res.output), calib_data=res.context.calib_data,
                             threads=args.threads)
        print(rep.render_text())
    return 0


def cmd_passes(args) -> int:
    from .pm.options import option_specs, format_value
    from .pm.registry import NamedPipeline, default_registry

    registry = default_registry()

    if args.action == "describe" or (args.action == "list" and args.name):
        if not args.name:
            raise UsageError("`qcompiler passes describe` needs a NAME", hint="qcompiler passes describe cle")
        target = registry.lookup(args.name)
        specs = option_specs(target.Options)
        if args.json:
            d: dict[str, Any] = {"name": args.name, "kind": "pipeline" if isinstance(target, NamedPipeline) else "pass",
                                 "summary": target.summary if isinstance(target, NamedPipeline) else target.summary(),
                                 "options": [{"name": s.name, "type": s.type_name(), "default": _jsonable(s.default),
                                              "help": s.help} for s in specs]}
            if not isinstance(target, NamedPipeline):
                d.update(requires=sorted(target.requires), provides=sorted(target.provides),
                         invalidates=sorted(target.invalidates))
            print(json.dumps(d, indent=2))
            return 0
        if isinstance(target, NamedPipeline):
            print(f"{args.name} (named pipeline): {target.summary}\n")
            from .pm.pipeline import PassSpec, PipelineSpec, expand, print_pipeline

            print("expands to:\n  " + print_pipeline(expand(PipelineSpec((PassSpec(args.name),)))) + "\n")
            if target.doc:
                print(textwrap.dedent(target.doc).strip() + "\n")
        else:
            print(f"{args.name}: {target.summary()}\n")
            for label, facts in (("requires", target.requires), ("provides", target.provides),
                                 ("invalidates", target.invalidates)):
                if facts:
                    print(f"{label}: {', '.join(sorted(facts))}")
        if specs:
            print("\noptions:")
            for s in specs:
                print(f"  {s.name}={format_value(s.default):<12} {s.type_name()}")
                if s.help:
                    print(textwrap.indent(textwrap.fill(s.help, 76), "      "))
        if not isinstance(target, NamedPipeline):
            print("\n" + target.description())
        return 0
    passes = registry.passes()
    pipes = registry.pipelines()
    if args.json:
        print(json.dumps({"passes": {n: c.summary() for n, c in passes.items()},
                          "pipelines": {n: p.summary for n, p in pipes.items()}}, indent=2))
        return 0
    print("passes:")
    for n, c in passes.items():
        print(f"  {n:<18} {c.summary()}")
    print("\nnamed pipelines:")
    for n, p in pipes.items():
        print(f"  {n:<18} {p.summary}")
    print("\n`qcompiler passes describe NAME` shows options and details.")
    return 0


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def cmd_pipeline(args) -> int:
    from .pm import PassManager, expand, load_pipeline, print_pipeline, to_json, to_yaml
    from .pm.pipeline import with_all_options

    source = args.check if args.check is not None else args.print_
    spec = load_pipeline(source)
    if args.expand:
        spec = expand(spec)
    if args.check is not None:
        PassManager(spec).check_facts(set())
        if not args.quiet:
            print(f"ok: {print_pipeline(spec)}")
        return 0
    if args.format == "json":
        print(to_json(spec))
    elif args.format == "yaml":
        print(to_yaml(spec), end="")
    elif args.all_options:
        print(with_all_options(spec))
    else:
        print(print_pipeline(spec))
    return 0


def cmd_inspect(args) -> int:
    from .inspection import inspect_model

    info = inspect_model(args.model)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    elif args.text:
        print(info.text())
    else:
        print(info.render())
    return 0


def cmd_lint(args) -> int:
    from .quant.lint import lint_model

    result = lint_model(args.model, fp8=args.fp8)
    sev = _min_severity(args)
    if args.format == "json":
        print(json.dumps({"model": args.model, "errors": result.n_errors, "warnings": result.n_warnings,
                          "findings": [d.to_dict() for d in result.findings]}, indent=2))
    else:
        for d in result.findings:
            if d.severity >= sev:
                print(d.render())
        print(f"{args.model}: {result.n_errors} error(s), {result.n_warnings} warning(s)"
              + (" - TensorRT-ready" if result.n_errors == 0 else ""))
    if result.n_errors or (args.Werror and result.n_warnings):
        return 1
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    if not args.calib_data:
        raise UsageError("`qcompiler report` needs --calib-data PATH (the data the layers are measured on)")
    ex = _make_executor(args)
    try:
        paths = write_report(args.fp32, args.qdq, args.output, calib_data=args.calib_data,
                             calib_options=_calib_options(args), sensitivity=not args.no_sensitivity,
                             plots=not args.no_plots, executor=ex)
    finally:
        ex.close()
    for p in paths:
        print(f"wrote {p}")
    _print_timing(ex, args)
    return 0


def cmd_finetune(args) -> int:
    from .bridge.finetune import finetune_model

    if not args.calib_data:
        raise UsageError("`qcompiler finetune` needs --calib-data PATH")
    diags = DiagnosticEngine()
    ex = _make_executor(args) if args.method == "gptq" else args.executor
    try:
        out = finetune_model(args.qdq, args.fp32, args.output, method=args.method, calib_data=args.calib_data,
                             calib_options=_calib_options(args), iters=args.iters, lr=args.lr,
                             train_weights=args.train_weights, seed=args.seed, progress=_progress(args),
                             diagnostics=diags, epochs=args.epochs, milestones=args.milestones, executor=ex)
    finally:
        _emit(list(diags), args)
        if not isinstance(ex, str):
            ex.close()
    print(f"wrote {out}", file=sys.stderr)
    if not isinstance(ex, str):
        _print_timing(ex, args)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, pipeline=args.pipeline, workdir=args.workdir, verbose=args.verbose)


USES_REGISTRY = {"compile", "passes", "pipeline", "finetune", "demo"}
COMMANDS = {"compile": cmd_compile, "passes": cmd_passes, "pipeline": cmd_pipeline, "inspect": cmd_inspect,
            "lint-trt": cmd_lint, "report": cmd_report, "finetune": cmd_finetune, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("ORT_LOG_SEVERITY_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if args.command in USES_REGISTRY:  # a plugin that failed to load is a warning on every such command
            from .pm.registry import default_registry

            _emit(default_registry().load_errors, args)
        return COMMANDS[args.command](args)
    except QCompilerError as exc:
        d = exc.diagnostic
        if getattr(args, "diagnostics_format", "text") == "json":
            print(json.dumps(d.to_dict(), indent=2), file=sys.stderr)
        else:
            print(d.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # pragma: no cover - `qcompiler ... | head`
        return 0
    except Exception:
        print("internal error (a bug in qcompiler; please report it with the traceback below):", file=sys.stderr)
        traceback.print_exc()
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
