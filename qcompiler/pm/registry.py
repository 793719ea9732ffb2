"""Registries of passes and named pipelines.

A :class:`Registry` is an instance: the pass manager, the pipeline parser and the CLI take one (the
default registry unless told otherwise), and tests build their own instead of registering test passes
globally.

What fills the default registry is the ``qcompiler.passes`` entry-point group, read once on first use:
qcompiler's own passes come in through its ``builtin`` entry point (``qcompiler.passes:register``, next
to the passes), third-party packages add theirs the same way.  An entry point names either a function
``register(registry)`` or a Pass subclass.  ``qcompiler`` itself never imports a specific pass.  A plugin
that fails to load is recorded in :attr:`Registry.load_errors` (shown as QC110 warnings by the CLI)
instead of stopping every command.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable

from ..diagnostics import Diagnostic, QCompilerError, Severity, UnknownPassError
from .base import NAME_RE, Pass
from .options import NoOptions

#: entry-point group read by :func:`default_registry`
ENTRY_POINT_GROUP = "qcompiler.passes"
#: the entry point that registers qcompiler's own passes and pipelines (loaded first)
BUILTIN_ENTRY_POINT = "builtin"
RESERVED = {"repeat"}


@dataclass(frozen=True)
class NamedPipeline:
    """A pipeline with a name and options (``trt-int8{calib=entropy}``), expanded when run."""

    name: str
    summary: str
    build: Callable[[Any], Any]  # options -> pipeline text or PipelineSpec
    Options: type = NoOptions
    doc: str = ""

    def description(self) -> str:
        return self.doc or self.summary


def _check_class(cls: type[Pass]) -> None:
    if not isinstance(cls, type) or not issubclass(cls, Pass):
        raise ValueError(f"{cls!r} is not a Pass subclass")
    if not isinstance(cls.name, str) or not NAME_RE.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} of {cls.__qualname__} must be kebab-case")
    if cls.name in RESERVED:
        raise ValueError(f"'{cls.name}' is reserved")
    if not dataclasses.is_dataclass(cls.Options) or not cls.Options.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ValueError(f"{cls.__qualname__}.Options must be a frozen dataclass")
    for facts in (cls.requires, cls.provides, cls.invalidates, cls.uses):
        if not isinstance(facts, frozenset):
            raise ValueError(f"{cls.__qualname__}: requires/provides/invalidates/uses must be frozensets")


class Registry:
    """Passes and named pipelines by name.  ``Registry(base)`` starts as a copy of ``base``."""

    def __init__(self, base: Registry | None = None):
        self._passes: dict[str, type[Pass]] = dict(base._passes) if base is not None else {}
        self._pipelines: dict[str, NamedPipeline] = dict(base._pipelines) if base is not None else {}
        #: facts that are plain properties of the graph (no state object), with what they mean
        self.facts: dict[str, str] = dict(base.facts) if base is not None else {}
        self.load_errors: list[Diagnostic] = list(base.load_errors) if base is not None else []

    # -- registering ---------------------------------------------------------------------------
    def register_pass(self, cls: type[Pass]) -> type[Pass]:
        _check_class(cls)
        existing = self._passes.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(f"pass '{cls.name}' is registered twice ({existing.__module__} and {cls.__module__})")
        if cls.name in self._pipelines:
            raise ValueError(f"'{cls.name}' is already a named pipeline")
        self._passes[cls.name] = cls
        return cls

    def register_pipeline(self, pipeline: NamedPipeline) -> NamedPipeline:
        if not NAME_RE.match(pipeline.name):
            raise ValueError(f"pipeline name {pipeline.name!r} must be kebab-case")
        if pipeline.name in self._passes or pipeline.name in RESERVED:
            raise ValueError(f"'{pipeline.name}' is already a pass")
        existing = self._pipelines.get(pipeline.name)
        if existing is not None and existing is not pipeline:
            raise ValueError(f"pipeline '{pipeline.name}' is registered twice")
        self._pipelines[pipeline.name] = pipeline
        return pipeline

    def register_fact(self, name: str, meaning: str) -> None:
        """Document a fact that is a property of the graph (facts standing for state are documented by their
        State class)."""
        if not NAME_RE.match(name):
            raise ValueError(f"fact name {name!r} must be kebab-case")
        self.facts[name] = meaning

    def load_plugins(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load every entry point of ``group`` (``builtin`` first, then by name); failures go to load_errors."""
        from importlib.metadata import entry_points

        eps = sorted(entry_points(group=group), key=lambda ep: (ep.name != BUILTIN_ENTRY_POINT, ep.name))
        for ep in eps:
            try:
                obj = ep.load()
                if isinstance(obj, type) and issubclass(obj, Pass):
                    self.register_pass(obj)
                elif isinstance(obj, NamedPipeline):
                    self.register_pipeline(obj)
                elif callable(obj):
                    obj(self)
                else:
                    raise TypeError("an entry point must name register(registry), a Pass subclass or a NamedPipeline")
            except Exception as exc:  # a broken plugin must not break every command: report it
                self.load_errors.append(Diagnostic(
                    Severity.WARNING, "QC110", f"plugin '{ep.name}' ({ep.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}", hint=f"fix or uninstall the package that provides the "
                    f"'{group}' entry point '{ep.name}'"))

    # -- looking up ----------------------------------------------------------------------------
    def passes(self) -> dict[str, type[Pass]]:
        return dict(sorted(self._passes.items()))

    def pipelines(self) -> dict[str, NamedPipeline]:
        return dict(sorted(self._pipelines.items()))

    def suggest(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, list(self._passes) + list(self._pipelines) + ["repeat"], n=3,
                                         cutoff=0.5)

    def lookup(self, name: str, *, location: str | None = None) -> type[Pass] | NamedPipeline:
        if name in self._passes:
            return self._passes[name]
        if name in self._pipelines:
            return self._pipelines[name]
        close = self.suggest(name)
        hint = (f"did you mean '{close[0]}'? " if close else "") + "list passes with `qcompiler passes`"
        raise UnknownPassError(f"unknown pass or pipeline '{name}'", location=location, hint=hint)

    def get_pass(self, name: str) -> type[Pass]:
        found = self.lookup(name)
        if isinstance(found, NamedPipeline):
            raise UnknownPassError(f"'{name}' is a named pipeline, not a pass")
        return found

    def providers_of(self, fact: str) -> list[str]:
        return [n for n, cls in self.passes().items() if fact in cls.provides]


_DEFAULT: Registry | None = None
_LOADING = False


def default_registry() -> Registry:
    """The process-wide registry: qcompiler's built-in passes and every installed plugin (loaded once)."""
    global _DEFAULT, _LOADING
    if _DEFAULT is not None:
        return _DEFAULT
    if _LOADING:
        raise QCompilerError("a qcompiler plugin asked for the default registry while it was being loaded",
                             code="QC110", hint="a plugin's register(registry) must use the registry it is given")
    _LOADING = True
    try:
        reg = Registry()
        reg.load_plugins()
        if not reg.passes():
            raise QCompilerError(
                f"qcompiler's built-in passes are not registered (no '{BUILTIN_ENTRY_POINT}' entry point in the "
                f"'{ENTRY_POINT_GROUP}' group)" + (f": {reg.load_errors[0].message}" if reg.load_errors else ""),
                code="QC110", hint="reinstall qcompiler (pip install -e .) so its package metadata is current")
        _DEFAULT = reg
    finally:
        _LOADING = False
    return _DEFAULT


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator for scripts: add a pass to the default registry (plugins use an entry point instead)."""
    return default_registry().register_pass(cls)


def register_pipeline(pipeline: NamedPipeline) -> NamedPipeline:
    """Add a named pipeline to the default registry."""
    return default_registry().register_pipeline(pipeline)
