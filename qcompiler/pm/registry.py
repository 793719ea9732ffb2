"""Pass and named-pipeline registry.

Built-in passes live in ``qcompiler.passes`` (the ``passes/`` folder, one module per pass, module
name = pass name with ``_``); they are imported on first lookup, so ``qcompiler`` itself never imports
a specific pass.  Third-party passes register through the ``qcompiler.passes`` entry-point group.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from ..diagnostics import UnknownPassError
from .base import NAME_RE, Pass
from .options import NoOptions

_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, "NamedPipeline"] = {}
_LOADED = False

RESERVED = {"repeat"}


@dataclass(frozen=True)
class NamedPipeline:
    """A pipeline with a name and options (``trt-int8{calib=entropy}``), expanded when run."""

    name: str
    summary: str
    build: Callable[[Any], Any]  # options -> PipelineSpec
    Options: type = NoOptions
    doc: str = ""

    def description(self) -> str:
        return self.doc or self.summary


def _check_class(cls: type[Pass]) -> None:
    if not isinstance(cls.name, str) or not NAME_RE.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} of {cls.__qualname__} must be kebab-case")
    if cls.name in RESERVED:
        raise ValueError(f"'{cls.name}' is reserved")
    if not dataclasses.is_dataclass(cls.Options) or not cls.Options.__dataclass_params__.frozen:
        raise ValueError(f"{cls.__qualname__}.Options must be a frozen dataclass")
    for facts in (cls.requires, cls.provides, cls.invalidates):
        if not isinstance(facts, frozenset):
            raise ValueError(f"{cls.__qualname__}: requires/provides/invalidates must be frozensets")


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its name."""
    _check_class(cls)
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"pass '{cls.name}' is registered twice ({existing.__module__} and {cls.__module__})")
    if cls.name in _PIPELINES:
        raise ValueError(f"'{cls.name}' is already a named pipeline")
    _PASSES[cls.name] = cls
    return cls


def register_pipeline(pipeline: NamedPipeline) -> NamedPipeline:
    if not NAME_RE.match(pipeline.name):
        raise ValueError(f"pipeline name {pipeline.name!r} must be kebab-case")
    if pipeline.name in _PASSES:
        raise ValueError(f"'{pipeline.name}' is already a pass")
    _PIPELINES[pipeline.name] = pipeline
    return pipeline


def load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import qcompiler.passes as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"qcompiler.passes.{mod.name}")
    importlib.import_module("qcompiler.pipelines")
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="qcompiler.passes"):
            ep.load()
    except Exception:  # pragma: no cover - broken third-party plugins must not break the CLI
        pass


def all_passes() -> dict[str, type[Pass]]:
    load_builtin()
    return dict(sorted(_PASSES.items()))


def all_pipelines() -> dict[str, NamedPipeline]:
    load_builtin()
    return dict(sorted(_PIPELINES.items()))


def suggest(name: str) -> list[str]:
    load_builtin()
    return difflib.get_close_matches(name, list(_PASSES) + list(_PIPELINES) + ["repeat"], n=3, cutoff=0.5)


def lookup(name: str, *, location: str | None = None) -> type[Pass] | NamedPipeline:
    load_builtin()
    if name in _PASSES:
        return _PASSES[name]
    if name in _PIPELINES:
        return _PIPELINES[name]
    close = suggest(name)
    hint = (f"did you mean '{close[0]}'? " if close else "") + "list passes with `qcompiler passes`"
    raise UnknownPassError(f"unknown pass or pipeline '{name}'", location=location, hint=hint)


def get_pass(name: str) -> type[Pass]:
    found = lookup(name)
    if not isinstance(found, type):
        raise UnknownPassError(f"'{name}' is a named pipeline, not a pass")
    return found


def providers_of(fact: str) -> list[str]:
    return [n for n, cls in all_passes().items() if fact in cls.provides]
