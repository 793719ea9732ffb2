"""The context object that travels through a pipeline beside the graph.

What the user gives a compilation (the recipe, calibration data, run settings) are typed fields; what
passes hand each other lives in :attr:`PassContext.state`, typed objects bound to facts
(:mod:`qcompiler.pm.state`); diagnostics collect every message.  Nothing travels in globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..diagnostics import Diagnostic, DiagnosticEngine
from ..executor import Executor, LocalExecutor
from .state import StateStore

if TYPE_CHECKING:  # pragma: no cover - annotations only: pm never imports calibration or quantization code
    from ..calib.data import CalibData
    from ..quant.recipe import Recipe


@dataclass
class PassContext:
    diagnostics: DiagnosticEngine = field(default_factory=DiagnosticEngine)
    #: facts that hold for the graph now (those of ``state`` included)
    facts: set[str] = field(default_factory=set)
    #: typed pass-to-pass state (calibration statistics, BatchNorm statistics, the FP32 reference, ...)
    state: StateStore = field(default_factory=StateStore)
    #: the quantization recipe; None means the target's default recipe (created by the first pass needing it)
    recipe: "Recipe | None" = None
    #: calibration data for passes that run the model
    calib_data: "CalibData | None" = None
    #: statistics cache file used by calibrate
    calib_cache: str | None = None
    seed: int = 0
    #: progress bars: None = only when stderr is a terminal
    progress: bool | None = None
    #: number of onnxruntime threads (None = onnxruntime's default)
    threads: int | None = None
    allow_random_calibration: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: where independent work runs (this process, or Ray tasks: qcompiler/executor.py)
    executor: Executor = field(default_factory=LocalExecutor)
    #: name of the pass being run (filled in by the manager for diagnostics)
    current_pass: str | None = None

    # -- diagnostics with the current pass filled in ---------------------------------------
    def remark(self, code: str, message: str, **kw: Any) -> Diagnostic:
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.remark(code, message, **kw)

    def warning(self, code: str, message: str, **kw: Any) -> Diagnostic:
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.warning(code, message, **kw)

    def note(self, code: str, message: str, **kw: Any) -> Diagnostic:
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.note(code, message, **kw)

    def error(self, code: str, message: str, **kw: Any) -> Diagnostic:
        kw.setdefault("pass_name", self.current_pass)
        return self.diagnostics.error(code, message, **kw)

    def progress_mode(self) -> str:
        """``bar`` on a terminal, ``lines`` in a log, ``off`` when asked (qcompiler/progress.py)."""
        from ..progress import mode_for

        return mode_for(self.progress)
