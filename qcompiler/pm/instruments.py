"""Pass instrumentation: timing, IR dumps after each pass, and crash reproducers.

An instrument is any object with (some of) these hooks; the manager calls them in order:

    before_pipeline(graph, ctx, manager)
    before_pass(pass_, index, graph, ctx)
    after_pass(pass_, index, graph, ctx, record)
    on_failure(pass_, index, graph, ctx, error)
    after_pipeline(graph, ctx, result)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..ir.io import copy_graph, save_model
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
    """On failure, save the graph as it was before the failing pass and a one-pass pipeline.

    Writes ``DIR/reproducer.onnx``, ``DIR/pipeline.txt`` and ``DIR/README.txt`` with the command that
    replays the failure: ``qcompiler compile DIR/reproducer.onnx -o /tmp/x.onnx --pipeline "$(cat DIR/pipeline.txt)"``.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.snapshot = None
        self.written: Path | None = None

    def before_pass(self, pass_, index, graph, ctx) -> None:
        self.snapshot = copy_graph(graph)

    def on_failure(self, pass_, index, graph, ctx, error) -> None:
        if self.snapshot is None:
            return
        from .pipeline import print_pipeline, PassSpec

        self.dir.mkdir(parents=True, exist_ok=True)
        g = self.snapshot
        g.qc_meta.path = None
        save_model(g, self.dir / "reproducer.onnx", external_data="auto", source_graph=g)
        spec = print_pipeline([PassSpec(pass_.name, tuple(pass_.options_dict(include_defaults=False).items()))])
        (self.dir / "pipeline.txt").write_text(spec + "\n")
        info: dict[str, Any] = {"failed_pass": pass_.name, "position": index, "error": str(error),
                                "facts": sorted(ctx.facts)}
        (self.dir / "failure.json").write_text(json.dumps(info, indent=2) + "\n")
        (self.dir / "README.txt").write_text(
            f"Pass '{pass_.name}' (#{index}) failed.\n"
            f"Replay: qcompiler compile {self.dir / 'reproducer.onnx'} -o /tmp/repro-out.onnx --pipeline '{spec}'\n"
            + ("(facts before the pass: " + ", ".join(sorted(ctx.facts)) + ")\n" if ctx.facts else ""))
        self.written = self.dir / "reproducer.onnx"
