"""The Python entry points behind ``qcompiler compile``.

``compile_model`` is what build systems call: it checks everything cheap first (paths, pipeline
text, pipeline facts, recipe, data signature), then runs the passes, verifies the result and writes
it atomically.  The input model is never modified; on any error nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import onnx_graphsurgeon as gs

from .diagnostics import DiagnosticEngine, ModelLoadError, QCompilerError, Severity, UsageError
from .fsutil import atomic_write
from .ir import fix_input_shapes, load_model, save_model, verify_graph
from .ir.shapes import reconcile_inputs, reconcile_shapes
from .ir.verify import type_problems
from .ir.graph import get_meta
from .ir.io import normalize_graph, writable_parent
from .pm import DumpIR, PassContext, PassManager, PipelineResult, Registry, Reproducer, Timing, load_pipeline
from .pm.manager import initial_facts
from .pm.state import StateStore
from .quant.state import QuantizationRecord


@dataclass
class CompileResult:
    graph: gs.Graph
    pipeline: str
    result: PipelineResult
    diagnostics: DiagnosticEngine
    context: PassContext
    output: Path | None = None
    extra_files: list[Path] = field(default_factory=list)
    #: the output already held this compile's result (same build key): nothing ran, nothing was written
    up_to_date: bool = False


def check_output_path(input_path: str | os.PathLike, output_path: str | os.PathLike) -> Path:
    out = Path(output_path)
    inp = Path(input_path)
    if out.exists() and out.is_dir():
        raise UsageError(f"output path '{out}' is a directory", code="QC204",
                         hint="give a file name, e.g. -o model.int8.onnx")
    try:
        same = out.exists() and inp.exists() and os.path.samefile(out, inp)
    except OSError:
        same = False
    if same or out.resolve() == inp.resolve():
        raise UsageError(f"output path '{out}' is the input model", code="QC204",
                         hint="write to a new file; qcompiler never modifies its input")
    writable_parent(out)
    return out


@dataclass(frozen=True)
class CompileOptions:
    """Everything a compile takes besides the model, the output path and the pipeline: one object that the command
    line, :func:`compile_model`, :func:`compile_graph` and the torch front end all build (keyword arguments of those
    functions are these fields)."""

    #: the recipe: a path to YAML/JSON, a dict, or a Recipe
    config: Any = None
    #: calibration data: a path (.npz, folder of .npz/.npy/images), arrays, an iterable of feeds, a CalibData
    calib_data: Any = None
    #: how the data is read: batch_size, layout, skip_bad, ... (qcompiler.calib.data.DataOptions)
    calib_options: Mapping[str, Any] | None = None
    #: a folder of cached statistics, keyed by model, data and observers
    calib_cache: str | None = None
    #: NAME -> dims fixing symbolic input dims
    input_shapes: Mapping[str, list[int]] | None = None
    allow_random_calibration: bool = False
    seed: int = 0
    threads: int | None = None
    #: a progress bar (None: when stderr is a terminal)
    progress: bool | None = None
    #: where independent work runs: "local", "ray", "ray:ADDRESS" or an Executor (which the caller closes)
    executor: Any = None
    verify_each: bool = False
    dump_ir: str | None = None
    timing: bool = False
    reproducer: str | None = None
    #: "auto" (a model over 2 GB writes its weights beside it), "always" or "never"
    external_data: str = "auto"
    #: write the recipe actually used beside the output (OUTPUT.recipe.json)
    save_recipe: bool = True
    #: a folder of pass state saved by a reproducer (DIR/state): the pipeline starts with it
    state: str | os.PathLike | None = None
    #: a warning (a pass that did nothing, a layer that fell back) fails the run and writes nothing
    werror: bool = False
    #: write the files the output depends on here (Makefile syntax, for Make/Ninja/CMake: qcompiler/build.py)
    depfile: str | os.PathLike | None = None
    #: write the inputs' hashes, the canonical pipeline, versions and a summary here (JSON)
    manifest: str | os.PathLike | None = None
    #: compile even when the output records the build key of the inputs as they are now
    rebuild: bool = False
    #: the files the model was made from when it is not the input file itself (a .pt2 exported on the way): the
    #: build key and the depfile name them instead of the temporary export
    model_files: tuple[str, ...] | None = None

    @classmethod
    def of(cls, options: "CompileOptions | None", kwargs: Mapping[str, Any]) -> "CompileOptions":
        """``options`` (or the defaults) with ``kwargs`` in place of its fields; an unknown name is a usage
        error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            raise UsageError(f"unknown compile option '{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close
                                                                         else ""), code="QC101",
                             hint="the options are the fields of qcompiler.CompileOptions")
        return replace(options or cls(), **kwargs)


def make_context(options: CompileOptions | None = None, *, diagnostics: DiagnosticEngine | None = None,
                 **kwargs: Any) -> PassContext:
    """The pass context a compile runs in (``kwargs``: fields of :class:`CompileOptions`)."""
    from .executor import make_executor

    o = CompileOptions.of(options, kwargs)
    ctx = PassContext(diagnostics=diagnostics if diagnostics is not None else DiagnosticEngine(), seed=o.seed,
                      progress=o.progress, threads=o.threads,
                      allow_random_calibration=o.allow_random_calibration, calib_cache=o.calib_cache,
                      executor=make_executor(o.executor))
    if o.config is not None:
        from .quant.recipe import load_recipe

        ctx.recipe = load_recipe(o.config)
    if o.calib_data is not None:
        from .calib.data import as_data_source

        ctx.calib_data = as_data_source(o.calib_data, **dict(o.calib_options or {}))
    return ctx


def compile_graph(graph: gs.Graph, pipeline: Any, options: CompileOptions | None = None, *,
                  ctx: PassContext | None = None, instruments: list | None = None, registry: Registry | None = None,
                  diagnostics: DiagnosticEngine | None = None, **kwargs: Any) -> CompileResult:
    """Run a pipeline on a graph in place (``kwargs``: fields of :class:`CompileOptions`; only those that reach
    the context and ``verify_each`` apply to a graph in memory)."""
    o = CompileOptions.of(options, kwargs)
    spec = load_pipeline(pipeline, registry)
    ctx = ctx or make_context(o, diagnostics=diagnostics)
    pm = PassManager(spec, verify_each=o.verify_each, instruments=instruments or [], registry=registry)
    pm.check_facts(ctx.facts | ctx.state.facts() | initial_facts(graph))
    result = pm.run(graph, ctx)
    return CompileResult(graph, str(spec), result, ctx.diagnostics, ctx)


def compile_model(input_path: str | os.PathLike, output_path: str | os.PathLike, pipeline: Any,
                  options: CompileOptions | None = None, *, diagnostics: DiagnosticEngine | None = None,
                  registry: Registry | None = None, **kwargs: Any) -> CompileResult:
    """Load ``input_path``, run ``pipeline``, verify, and write ``output_path`` atomically.

    ``options`` (a :class:`CompileOptions`) and/or its fields as keyword arguments: ``compile_model(src, out,
    "trt-int8", calib_data="calib.npz", threads=2)``.  ``executor``: an :class:`~qcompiler.executor.Executor`
    given here is the caller's to close; one made here from a string is closed here.  ``state`` is a folder of
    pass state saved by a reproducer (``DIR/state``): the pipeline starts with it, so a saved ``insert-qdq``
    failure replays with its calibration statistics."""
    from . import build

    o = CompileOptions.of(options, kwargs)
    out = check_output_path(input_path, output_path)
    spec = load_pipeline(pipeline, registry)  # syntax, names and options: fail before loading anything
    diags = diagnostics if diagnostics is not None else DiagnosticEngine()
    ctx = make_context(o, diagnostics=diags)
    try:
        inputs = build.gather(input_path, str(spec), o, ctx.calib_data)
        key = inputs.key
        if key is not None and not o.rebuild and build.recorded_key(out) == key:
            stale = build.newer_inputs(out, inputs)
            if stale:  # an input touched but not changed: make would run this rule again and again
                t = max([time.time_ns()] + [os.stat(f).st_mtime_ns for f in stale])
                os.utime(out, ns=(t, t))
            diags.remark("QC140", f"{out} is up to date (model, data, recipe and pipeline unchanged): not rebuilt"
                         + (f"; its time stamp brought past {len(stale)} touched input(s)" if stale else ""))
            res = CompileResult(load_model(out, normalize=False), str(spec), PipelineResult(), diags, ctx, out,
                                up_to_date=True)
        else:
            if key is None and o.depfile is None and o.manifest is None:
                pass
            elif key is None:
                diags.remark("QC140", f"no build key: {inputs.why_not}; the output is always rebuilt")
            res = _compile_in(ctx, input_path, out, spec, diags, o, registry, key)
        if o.depfile is not None:
            build.write_depfile(o.depfile, out, inputs)
        if o.manifest is not None:
            build.write_manifest(o.manifest, out, inputs, _summary(res), res.up_to_date)
        return res
    finally:
        if ctx.executor is not o.executor:
            ctx.executor.close()


def _summary(res: CompileResult) -> dict[str, Any]:
    """What the manifest says about the result: the state reports' summaries."""
    out: dict[str, Any] = {"pipeline": res.pipeline}
    for st in res.context.state:
        d = getattr(st, "to_dict", None)
        if d is not None and getattr(st, "fact", "") in ("guard-report", "float-type-report"):
            out[st.fact] = d()
    return out


def _compile_in(ctx: PassContext, input_path: str | os.PathLike, out: Path, spec: Any, diags: DiagnosticEngine,
                o: CompileOptions, registry: Registry | None, key: str | None = None) -> CompileResult:
    if o.state is not None:
        ctx.state, saved_facts = StateStore.load(Path(o.state))
        ctx.facts |= saved_facts
    graph = load_model(input_path, normalize=False)
    verify_graph(graph)  # the file as it is: normalizing an invalid graph could hide what is wrong with it
    fixes = normalize_graph(graph)  # declared shapes are hints: wrong ones must not steer the passes
    inputs_changed = bool(o.input_shapes)
    if o.input_shapes:
        fix_input_shapes(graph, dict(o.input_shapes))
    if ctx.calib_data is not None and any(t.shape is None or len(t.shape) == 0 for t in graph.inputs):
        lines = reconcile_inputs(graph, ctx.calib_data.ranks())  # an input declared without a rank
        fixes = lines + fixes
        inputs_changed = inputs_changed or bool(lines)
    if inputs_changed:
        fixes += reconcile_shapes(graph)
    for line in fixes:
        diags.remark("QC212", f"declaration corrected: {line}")
    for p in type_problems(graph)[:1]:  # a graph onnxruntime and TensorRT would refuse: say so before any pass
        raise ModelLoadError(f"{input_path}: the model is not valid: {p.message}", code="QC203", node=p.node,
                             location=str(input_path), hint="fix or re-export the model")
    instruments: list[Any] = []
    if o.dump_ir:
        instruments.append(DumpIR(o.dump_ir))
    if o.reproducer:
        instruments.append(Reproducer(o.reproducer))
    if o.timing:
        instruments.append(Timing())
    pm = PassManager(spec, verify_each=o.verify_each, instruments=instruments, verify_result=True, registry=registry)
    pm.check_facts(ctx.facts | ctx.state.facts() | initial_facts(graph))
    if ctx.calib_data is not None:
        ctx.calib_data.check_signature(graph)
    result = pm.run(graph, ctx)
    if diags.has_errors:
        first = diags.errors[0]
        raise QCompilerError(first.message, code=first.code, node=first.node, pass_name=first.pass_name,
                             hint=first.hint)
    warnings = [d for d in diags if d.severity == Severity.WARNING]
    if o.werror and warnings:
        w = warnings[0]
        more = f" (and {len(warnings) - 1} more warning(s))" if len(warnings) > 1 else ""
        raise QCompilerError(f"{w.message}{more}", code=w.code, node=w.node, pass_name=w.pass_name,
                             hint="warnings are errors here (--Werror); nothing was written")
    meta = get_meta(graph)
    meta.metadata_props["qcompiler.pipeline"] = str(spec)
    from . import __version__

    meta.metadata_props["qcompiler.version"] = __version__
    if key is not None:
        from .build import KEY

        meta.metadata_props[KEY] = key
    written = save_model(graph, out, external_data=o.external_data)
    extra: list[Path] = []
    record = ctx.state.get(QuantizationRecord)
    if o.save_recipe and record is not None:
        rp = Path(str(out) + ".recipe.json")
        atomic_write(rp, json.dumps(record.recipe_used, indent=2, sort_keys=True) + "\n")
        extra.append(rp)
    return CompileResult(graph, str(spec), result, diags, ctx, written, extra)


def severity_from_name(name: str) -> Severity:
    return {"error": Severity.ERROR, "warning": Severity.WARNING, "remark": Severity.REMARK,
            "note": Severity.NOTE}[name]
