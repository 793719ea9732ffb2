"""The Python entry points behind ``qcompiler compile``.

``compile_model`` is what build systems call: it checks everything cheap first (paths, pipeline
text, pipeline facts, recipe, data signature), then runs the passes, verifies the result and writes
it atomically.  The input model is never modified; on any error nothing is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_graphsurgeon as gs

from .diagnostics import DiagnosticEngine, ModelLoadError, QCompilerError, Severity, UsageError
from .fsutil import atomic_write
from .ir import fix_input_shapes, load_model, save_model, verify_graph
from .ir.shapes import reconcile_inputs, reconcile_shapes
from .ir.verify import type_problems
from .ir.io import get_meta, normalize_graph, writable_parent
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


def make_context(*, config: Any = None, calib_data: Any = None, calib_cache: str | None = None,
                 diagnostics: DiagnosticEngine | None = None, seed: int = 0, progress: bool | None = None,
                 threads: int | None = None, allow_random_calibration: bool = False,
                 calib_options: dict[str, Any] | None = None, executor: Any = None) -> PassContext:
    from .executor import make_executor

    ctx = PassContext(diagnostics=diagnostics if diagnostics is not None else DiagnosticEngine(), seed=seed,
                      progress=progress, threads=threads,
                      allow_random_calibration=allow_random_calibration, calib_cache=calib_cache,
                      executor=make_executor(executor))
    if config is not None:
        from .quant.recipe import load_recipe

        ctx.recipe = load_recipe(config)
    if calib_data is not None:
        from .calib.data import as_data_source

        ctx.calib_data = as_data_source(calib_data, **(calib_options or {}))
    return ctx


def compile_graph(graph: gs.Graph, pipeline: Any, *, ctx: PassContext | None = None, verify_each: bool = False,
                  instruments: list | None = None, registry: Registry | None = None,
                  **ctx_kwargs: Any) -> CompileResult:
    """Run a pipeline on a graph in place.  ``ctx_kwargs`` go to :func:`make_context`."""
    spec = load_pipeline(pipeline, registry)
    ctx = ctx or make_context(**ctx_kwargs)
    pm = PassManager(spec, verify_each=verify_each, instruments=instruments or [], registry=registry)
    pm.check_facts(ctx.facts | ctx.state.facts() | initial_facts(graph))
    result = pm.run(graph, ctx)
    return CompileResult(graph, str(spec), result, ctx.diagnostics, ctx)


def compile_model(input_path: str | os.PathLike, output_path: str | os.PathLike, pipeline: Any, *,
                  config: Any = None, calib_data: Any = None, calib_cache: str | None = None,
                  input_shapes: dict[str, list[int]] | None = None, verify_each: bool = False,
                  dump_ir: str | None = None, timing: bool = False, reproducer: str | None = None,
                  diagnostics: DiagnosticEngine | None = None, external_data: str = "auto",
                  seed: int = 0, progress: bool | None = None, threads: int | None = None,
                  allow_random_calibration: bool = False, calib_options: dict[str, Any] | None = None,
                  save_recipe: bool = True, state: str | os.PathLike | None = None,
                  registry: Registry | None = None, werror: bool = False, executor: Any = None) -> CompileResult:
    """Load ``input_path``, run ``pipeline``, verify, and write ``output_path`` atomically.

    ``executor``: where independent work runs: ``"local"`` (default), ``"ray"``, ``"ray:ADDRESS"`` or an
    :class:`~qcompiler.executor.Executor` (which the caller closes; one made here from a string is closed here).

    ``werror``: a warning (a pass that did nothing, a layer that fell back) fails the run and writes nothing.

    ``state`` is a folder of pass state saved by a reproducer (``DIR/state``): the pipeline starts with it,
    so a saved ``insert-qdq`` failure replays with its calibration statistics."""
    out = check_output_path(input_path, output_path)
    spec = load_pipeline(pipeline, registry)  # syntax, names and options: fail before loading anything
    diags = diagnostics if diagnostics is not None else DiagnosticEngine()
    ctx = make_context(config=config, calib_data=calib_data, calib_cache=calib_cache, diagnostics=diags, seed=seed,
                       progress=progress, threads=threads, allow_random_calibration=allow_random_calibration,
                       calib_options=calib_options, executor=executor)
    try:
        return _compile_in(ctx, input_path, out, spec, diags, state=state, input_shapes=input_shapes,
                           verify_each=verify_each, dump_ir=dump_ir, timing=timing, reproducer=reproducer,
                           external_data=external_data, save_recipe=save_recipe, registry=registry, werror=werror)
    finally:
        if ctx.executor is not executor:
            ctx.executor.close()


def _compile_in(ctx: PassContext, input_path: str | os.PathLike, out: Path, spec: Any, diags: DiagnosticEngine, *,
                state: str | os.PathLike | None, input_shapes: dict[str, list[int]] | None, verify_each: bool,
                dump_ir: str | None, timing: bool, reproducer: str | None, external_data: str, save_recipe: bool,
                registry: Registry | None, werror: bool) -> CompileResult:
    if state is not None:
        ctx.state, saved_facts = StateStore.load(Path(state))
        ctx.facts |= saved_facts
    graph = load_model(input_path, normalize=False)
    verify_graph(graph)  # the file as it is: normalizing an invalid graph could hide what is wrong with it
    fixes = normalize_graph(graph)  # declared shapes are hints: wrong ones must not steer the passes
    inputs_changed = bool(input_shapes)
    if input_shapes:
        fix_input_shapes(graph, input_shapes)
    if ctx.calib_data is not None and any(t.shape is None or len(t.shape) == 0 for t in graph.inputs):
        lines = reconcile_inputs(graph, ctx.calib_data.ranks())  # an input declared without a rank
        fixes = lines + fixes
        inputs_changed = inputs_changed or bool(lines)
    if inputs_changed:
        fixes += reconcile_shapes(graph)
    for line in fixes:
        diags.remark("QC212", f"declared shape corrected: {line}")
    for p in type_problems(graph)[:1]:  # a graph onnxruntime and TensorRT would refuse: say so before any pass
        raise ModelLoadError(f"{input_path}: the model is not valid: {p.message}", code="QC203", node=p.node,
                             location=str(input_path), hint="fix or re-export the model")
    instruments: list[Any] = []
    if dump_ir:
        instruments.append(DumpIR(dump_ir))
    if reproducer:
        instruments.append(Reproducer(reproducer))
    if timing:
        instruments.append(Timing())
    pm = PassManager(spec, verify_each=verify_each, instruments=instruments, verify_result=True, registry=registry)
    pm.check_facts(ctx.facts | ctx.state.facts() | initial_facts(graph))
    if ctx.calib_data is not None:
        ctx.calib_data.check_signature(graph)
    result = pm.run(graph, ctx)
    if diags.has_errors:
        first = diags.errors[0]
        raise QCompilerError(first.message, code=first.code, node=first.node, pass_name=first.pass_name,
                             hint=first.hint)
    warnings = [d for d in diags if d.severity == Severity.WARNING]
    if werror and warnings:
        w = warnings[0]
        more = f" (and {len(warnings) - 1} more warning(s))" if len(warnings) > 1 else ""
        raise QCompilerError(f"{w.message}{more}", code=w.code, node=w.node, pass_name=w.pass_name,
                             hint="warnings are errors here (--Werror); nothing was written")
    meta = get_meta(graph)
    meta.metadata_props["qcompiler.pipeline"] = str(spec)
    from . import __version__

    meta.metadata_props["qcompiler.version"] = __version__
    written = save_model(graph, out, external_data=external_data)
    extra: list[Path] = []
    record = ctx.state.get(QuantizationRecord)
    if save_recipe and record is not None:
        rp = Path(str(out) + ".recipe.json")
        atomic_write(rp, json.dumps(record.recipe_used, indent=2, sort_keys=True) + "\n")
        extra.append(rp)
    return CompileResult(graph, str(spec), result, diags, ctx, written, extra)


def severity_from_name(name: str) -> Severity:
    return {"error": Severity.ERROR, "warning": Severity.WARNING, "remark": Severity.REMARK,
            "note": Severity.NOTE}[name]
