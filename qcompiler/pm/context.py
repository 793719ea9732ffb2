"""The context object that travels through a pipeline beside the graph.

Calibration statistics, the quantization recipe, calibration data, diagnostics and pass-to-pass
records live here, never in globals.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import DiagnosticEngine


@dataclass
class PassContext:
    diagnostics: DiagnosticEngine = field(default_factory=DiagnosticEngine)
    facts: set[str] = field(default_factory=set)
    #: quantization recipe (qcompiler.quant.recipe.Recipe); None means the target's default recipe
    recipe: Any = None
    #: calibration data (qcompiler.calib.data.DataSource) for passes that run the model
    calib_data: Any = None
    #: activation statistics (qcompiler.calib.stats.CalibrationStats), set by `calibrate`
    stats: Any = None
    calib_cache: str | None = None
    #: the graph as it was before quantization (set by insert-qdq), used by recovery passes
    reference: Any = None
    #: records passes leave for later passes (e.g. BatchNorm statistics kept by fold-bn)
    artifacts: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    #: progress bars: None = only when stderr is a terminal
    progress: bool | None = None
    #: number of onnxruntime threads (None = onnxruntime's default)
    threads: int | None = None
    allow_random_calibration: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: name of the pass being run (filled in by the manager for diagnostics)
    current_pass: str | None = None

    # -- diagnostics with the current pass filled in ---------------------------------------
    def remark(self, code: str, message: str, **kw: Any):
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.remark(code, message, **kw)

    def warning(self, code: str, message: str, **kw: Any):
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.warning(code, message, **kw)

    def note(self, code: str, message: str, **kw: Any):
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.note(code, message, **kw)

    def error(self, code: str, message: str, **kw: Any):
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.error(code, message, **kw)

    def show_progress(self) -> bool:
        if self.progress is not None:
            return self.progress
        return sys.stderr.isatty()
