"""Diagnostics: what the compiler tells the user, and the one exception tree.

Every message the compiler emits is a :class:`Diagnostic` with a severity, a stable code, the
node and the pass it is about and, where there is one, a hint saying what to do.  Codes are
grouped by hundreds and never reused:

* ``QC1xx`` pipeline text, pass names, options, fact ordering (usage errors, exit code 2)
* ``QC2xx`` reading, verifying and writing models
* ``QC3xx`` pass remarks: a rewrite that did not apply, and why
* ``QC4xx`` calibration data and statistics
* ``QC5xx`` quantization recipes and target (TensorRT / onnxruntime) constraints
* ``QC6xx`` accuracy recovery and the torch bridge

Errors are raised as :class:`QCompilerError` (or a subclass); the CLI renders them like any
other diagnostic and exits with ``error.exit_code`` (1, or 2 for usage errors).
"""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


class Severity(enum.IntEnum):
    NOTE = 0
    REMARK = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.name.lower()


#: Stable codes with a one-line title (documented in docs/diagnostics.md).
CODES: dict[str, str] = {
    # pipeline and options
    "QC101": "pipeline syntax error",
    "QC102": "unknown pass or named pipeline",
    "QC103": "unknown option",
    "QC104": "invalid option value",
    "QC105": "pipeline facts out of order",
    "QC106": "invalid pipeline file",
    "QC107": "invalid command-line usage",
    "QC110": "plugin failed to load",
    "QC120": "pass state missing",
    "QC121": "pass state folder unreadable",
    "QC130": "executor unavailable",
    "QC131": "cannot start or join the Ray cluster",
    "QC132": "a task failed on the Ray cluster",
    "QC140": "output up to date (nothing rebuilt)",
    # models
    "QC201": "model file not found",
    "QC202": "model file is not a valid ONNX model",
    "QC203": "model fails verification",
    "QC204": "cannot write output",
    "QC205": "external data missing or unreadable",
    "QC206": "unsupported operator domain",
    "QC207": "opset conversion failed",
    "QC208": "shape inference failed",
    "QC209": "input shape override invalid",
    "QC210": "pass broke the graph (verify-each)",
    "QC211": "pass reported a wrong 'modified' flag",
    "QC212": "declared shape or element type corrected",
    # pass remarks
    "QC301": "rewrite applied",
    "QC302": "rewrite skipped",
    "QC303": "semantics-changing rewrite (opt-in)",
    "QC304": "pass failed",
    "QC305": "opset upgraded",
    # calibration
    "QC401": "calibration data missing or empty",
    "QC402": "calibration data does not match the model inputs",
    "QC403": "NaN or Inf in calibration data",
    "QC404": "calibration cache",
    "QC405": "statistics missing for a tensor",
    "QC406": "calibration run failed, or a tensor took NaN/Inf",
    "QC407": "random calibration data",
    "QC408": "tensor never computed on the calibration data (If branch not taken)",
    "QC409": "per-channel statistics whose channel count changes between batches",
    # recipes and targets
    "QC501": "invalid recipe",
    "QC502": "recipe not supported by target",
    "QC503": "model already quantized",
    "QC504": "layer left in float",
    "QC505": "recipe pattern matched nothing",
    "QC506": "nothing quantized",
    "QC507": "weight holds NaN or Inf",
    "QC510": "TensorRT lint finding",
    # recovery and bridge
    "QC601": "torch is not installed",
    "QC602": "operator not supported by the torch bridge",
    "QC603": "fine-tuning",
    "QC604": "accuracy recovery",
}


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    node: str | None = None
    pass_name: str | None = None
    hint: str | None = None
    location: str | None = None  # a file, or a pipeline string
    rule: str | None = None  # a target rule id (R4, P4, L8, ...)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"severity": str(self.severity), "code": self.code, "message": self.message}
        for key in ("node", "pass_name", "hint", "location", "rule"):
            value = getattr(self, key)
            if value is not None:
                d["pass" if key == "pass_name" else key] = value
        if self.extra:
            d["extra"] = self.extra
        return d

    def render(self) -> str:
        where = []
        if self.location:
            where.append(self.location)
        if self.pass_name:
            where.append(f"[{self.pass_name}]")
        if self.node:
            where.append(f"node '{self.node}'")
        prefix = " ".join(where)
        head = f"{self.severity}: {self.code}: "
        text = head + (prefix + ": " if prefix else "") + self.message
        if self.rule:
            text += f" (rule {self.rule})"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class DiagnosticEngine:
    """Collects diagnostics; optionally streams them to a file as they arrive."""

    def __init__(self, stream=None, min_severity: Severity = Severity.WARNING):
        self._items: list[Diagnostic] = []
        self.stream = stream
        self.min_severity = min_severity

    def emit(self, diag: Diagnostic) -> Diagnostic:
        self._items.append(diag)
        if self.stream is not None and diag.severity >= self.min_severity:
            print(diag.render(), file=self.stream)
        return diag

    def _make(self, severity: Severity, code: str, message: str, **kw: Any) -> Diagnostic:
        return self.emit(Diagnostic(severity, code, message, **kw))

    def error(self, code: str, message: str, **kw: Any) -> Diagnostic:
        return self._make(Severity.ERROR, code, message, **kw)

    def warning(self, code: str, message: str, **kw: Any) -> Diagnostic:
        return self._make(Severity.WARNING, code, message, **kw)

    def remark(self, code: str, message: str, **kw: Any) -> Diagnostic:
        return self._make(Severity.REMARK, code, message, **kw)

    def note(self, code: str, message: str, **kw: Any) -> Diagnostic:
        return self._make(Severity.NOTE, code, message, **kw)

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def filter(self, *, severity: Severity | None = None, code: str | None = None,
               pass_name: str | None = None) -> list[Diagnostic]:
        out = []
        for d in self._items:
            if severity is not None and d.severity != severity:
                continue
            if code is not None and d.code != code:
                continue
            if pass_name is not None and d.pass_name != pass_name:
                continue
            out.append(d)
        return out

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self._items if d.severity >= Severity.ERROR]

    @property
    def has_errors(self) -> bool:
        return any(d.severity >= Severity.ERROR for d in self._items)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self._items:
            out[str(d.severity)] = out.get(str(d.severity), 0) + 1
        return out


def render_text(diags: Iterable[Diagnostic], min_severity: Severity = Severity.NOTE) -> str:
    return "\n".join(d.render() for d in diags if d.severity >= min_severity)


def render_json(diags: Iterable[Diagnostic], min_severity: Severity = Severity.NOTE) -> str:
    return json.dumps([d.to_dict() for d in diags if d.severity >= min_severity], indent=2)


# --------------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------------


class QCompilerError(Exception):
    """Base of every error the compiler raises on purpose.  Carries a diagnostic."""

    exit_code = 1
    default_code = "QC304"

    def __init__(self, message: str, *, code: str | None = None, node: str | None = None,
                 pass_name: str | None = None, hint: str | None = None, location: str | None = None,
                 rule: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic(Severity.ERROR, code or self.default_code, message, node=node,
                                     pass_name=pass_name, hint=hint, location=location, rule=rule,
                                     extra=extra or {})

    @property
    def code(self) -> str:
        return self.diagnostic.code

    def __str__(self) -> str:
        return self.diagnostic.render()


class UsageError(QCompilerError):
    """Wrong pipeline text, pass name, option or command-line use (exit code 2)."""

    exit_code = 2
    default_code = "QC107"


class PipelineSyntaxError(UsageError):
    default_code = "QC101"


class UnknownPassError(UsageError):
    default_code = "QC102"


class OptionError(UsageError):
    default_code = "QC104"


class FactOrderError(UsageError):
    default_code = "QC105"


class ModelLoadError(QCompilerError):
    default_code = "QC202"


class ModelSaveError(QCompilerError):
    default_code = "QC204"


class VerificationError(QCompilerError):
    default_code = "QC203"


class CalibrationError(QCompilerError):
    default_code = "QC406"


class RecipeError(QCompilerError):
    default_code = "QC501"


class TargetError(QCompilerError):
    default_code = "QC502"


class PassError(QCompilerError):
    """A pass failed while running; the manager adds its position and the passes before it."""

    default_code = "QC304"


class BridgeError(QCompilerError):
    default_code = "QC602"


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr)
