"""Pass instrumentation: timing, IR dumps after each pass, and crash reproducers.

An instrument is any object with (some of) these hooks; the manager calls them in order:

    before_pipeline(graph, ctx, manager)
    before_pass(pass_, index, graph, ctx)
    after_pass(pass_, index, graph, ctx, record)
    on_failure(pass_, index, graph, ctx, error)
    on_verification_failure(graph, ctx, error)      # the final result failed verification
    after_pipeline(graph, ctx, result)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..ir.io import save_model
from ..ir.graph import copy_graph
from ..ir.text import graph_to_text


class Instrument:
    def before_pipeline(self, graph, ctx, manager) -> None:
        pass

    def before_pass(self, pass_, index, graph, ctx) -> None:
        pass

    def after_pass(self, pass_, index, graph, ctx, record) -> None:
        pass

    def on_failure(self, pass_, index, graph, ctx, error) -> None:
        pass

    def on_verification_failure(self, graph, ctx, error) -> None:
        pass

    def after_pipeline(self, graph, ctx, result) -> None:
        pass


class Timing(Instrument):
    """Per-pass wall time; prints a table at the end (``--timing``)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.rows: list[tuple[str, float]] = []

    def after_pass(self, pass_, index, graph, ctx, record) -> None:
        self.rows.append((f"{index:>2}. {record.spec}", record.seconds))

    def after_pipeline(self, graph, ctx, result) -> None:
        total = sum(s for _, s in self.rows)
        print("timing:", file=self.stream)
        for name, s in self.rows:
            share = 100 * s / total if total else 0.0
            print(f"  {s * 1000:9.1f} ms {share:5.1f}%  {name}", file=self.stream)
        extra = {k: v for k, v in ctx.timings.items() if not k[:2].isdigit()}
        for k, v in sorted(extra.items()):
            print(f"  {v * 1000:9.1f} ms         ({k})", file=self.stream)
        print(f"  {total * 1000:9.1f} ms total", file=self.stream)


class DumpIR(Instrument):
    """Write the graph after each pass to numbered files: ``00-input.onnx``, ``01-cleanup.onnx``...

    Each dump has a text twin (``.txt``, see qcompiler.ir.text) for diffing.
    """

    def __init__(self, directory: str | Path, *, onnx_files: bool = True):
        self.dir = Path(directory)
        self.onnx_files = onnx_files
        self.count = 0

    def _dump(self, graph, label: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.count:02d}-{label}"
        (self.dir / f"{stem}.txt").write_text(graph_to_text(graph) + "\n")
        if self.onnx_files:
            g = copy_graph(graph)
            g.qc_meta.path = None
            g.qc_meta.external_files = ()
            save_model(g, self.dir / f"{stem}.onnx", external_data="never", source_graph=graph)
        self.count += 1

    def before_pipeline(self, graph, ctx, manager) -> None:
        self._dump(graph, "input")

    def after_pass(self, pass_, index, graph, ctx, record) -> None:
        self._dump(graph, pass_.name)


class Reproducer(Instrument):
    """On failure, save what replays it: the graph, the pipeline, the pass state and the recipe.

    A pass that fails (raises, breaks the graph under ``--verify-each``, lies about ``modified``) leaves
    the graph as it was *before that pass* and a one-pass pipeline; a result that fails the final
    verification leaves the pipeline's *input* and the whole pipeline.  Either way ``DIR`` holds
    ``reproducer.onnx``, ``pipeline.txt``, ``state/`` (the pass state at that point: calibration statistics,
    BatchNorm statistics, the FP32 reference, ...), ``recipe.json`` when a recipe was in use,
    ``failure.json``, ``replay.sh`` (the command that replays the failure) and ``README.txt``.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.written: Path | None = None
        self._input: tuple[Any, list, set[str], str] | None = None
        self._before: tuple[Any, list, set[str]] | None = None

    def before_pipeline(self, graph, ctx, manager) -> None:
        from .pipeline import print_pipeline

        self._input = (copy_graph(graph), list(ctx.state), set(ctx.facts), print_pipeline(manager.spec))

    def before_pass(self, pass_, index, graph, ctx) -> None:
        # state objects are never changed in place (passes put new ones), so a list of them is a snapshot
        self._before = (copy_graph(graph), list(ctx.state), set(ctx.facts))

    def on_failure(self, pass_, index, graph, ctx, error) -> None:
        if self._before is None:
            return
        from .pipeline import PassSpec, print_pipeline

        g, state, facts = self._before
        spec = print_pipeline([PassSpec(pass_.name, tuple(pass_.options_dict(include_defaults=False).items()))])
        self._write(g, spec, state, facts, ctx, error,
                    {"failed_pass": pass_.name, "position": index}, f"Pass '{pass_.name}' (#{index}) failed")

    def on_verification_failure(self, graph, ctx, error) -> None:
        if self._input is None:
            return
        g, state, facts, spec = self._input
        self._write(g, spec, state, facts, ctx, error, {"failed_pass": None, "position": None},
                    "The pipeline's result failed verification")

    def _write(self, g, spec: str, state: list, facts: set[str], ctx, error, where: dict[str, Any],
               title: str) -> None:
        import shlex

        from .state import StateStore

        self.dir.mkdir(parents=True, exist_ok=True)
        g.qc_meta.path = None
        save_model(g, self.dir / "reproducer.onnx", external_data="auto", source_graph=g)
        (self.dir / "pipeline.txt").write_text(spec + "\n")
        store = StateStore()
        for obj in state:
            store.put(obj)
        manifest = store.save(self.dir / "state", facts)
        cmd = ["qcompiler", "compile", "reproducer.onnx", "-o", "/tmp/repro-out.onnx", "--pipeline", spec,
               "--state", "state"]
        recipe = getattr(ctx, "recipe", None)
        if recipe is not None:
            (self.dir / "recipe.json").write_text(json.dumps(recipe.source, indent=2, sort_keys=True) + "\n")
            cmd += ["--config", "recipe.json"]
        data = getattr(ctx, "calib_data", None)
        location = data.location() if data is not None else None
        if location is not None:
            cmd += ["--calib-data", location]
        info: dict[str, Any] = {**where, "error": str(error), "facts": sorted(facts),
                                "state_saved": sorted(manifest["state"]), "state_not_saved": manifest["not_saved"],
                                "calibration_data": location if data is not None else None}
        (self.dir / "failure.json").write_text(json.dumps(info, indent=2) + "\n")
        line = " ".join(shlex.quote(c) for c in cmd)
        (self.dir / "replay.sh").write_text(
            '#!/bin/sh\n# replays the failure from this folder\ncd "$(dirname "$0")" && ' + line + "\n")
        os.chmod(self.dir / "replay.sh", 0o755)
        notes = []
        if manifest["not_saved"]:
            notes.append("state not saved (recomputed by earlier passes if needed): "
                         + ", ".join(manifest["not_saved"]))
        if data is not None and location is None:
            notes.append("the calibration data was a Python object: pass it again with --calib-data")
        (self.dir / "README.txt").write_text(
            f"{title}: {error}\n\nReplay (from this folder, or run replay.sh):\n  {line}\n"
            + ("(facts before it: " + ", ".join(sorted(facts)) + ")\n" if facts else "")
            + "".join(f"Note: {n}\n" for n in notes))
        self.written = self.dir / "reproducer.onnx"
