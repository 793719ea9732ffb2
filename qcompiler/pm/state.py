"""Typed state that passes hand each other.

A pass that leaves something for later passes (calibration statistics, BatchNorm statistics, the FP32
graph before quantization, ...) puts a :class:`State` object into ``ctx.state``; a pass that needs it
asks for it by type.  Every State class stands for a *fact* (``CalibrationStats.fact == "calibrated"``),
so passes declare it in ``requires`` / ``provides`` / ``invalidates`` / ``uses`` like any fact, and the
pass manager

* checks before anything runs that a required fact has a provider earlier in the pipeline,
* checks after a pass that each state fact it provides is really in ``ctx.state``,
* drops the state object of every fact a pass invalidates (``cle`` invalidates ``calibrated``, so the
  statistics of the graph before equalization can never reach ``insert-qdq``).

State classes that can be written to disk (``save``/``load``) travel with crash reproducers, so a
replayed ``insert-qdq`` finds its statistics again.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

from ..diagnostics import QCompilerError

T = TypeVar("T", bound="State")

_BY_FACT: dict[str, type["State"]] = {}


class State:
    """Base of pass-to-pass state.  Subclasses set ``fact`` (kebab-case, unique) and may implement
    ``save``/``load`` for reproducers."""

    fact: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.fact:
            return
        other = _BY_FACT.get(cls.fact)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"state fact '{cls.fact}' is claimed by {other.__qualname__} and {cls.__qualname__}")
        _BY_FACT[cls.fact] = cls

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the docstring, on one line."""
        doc = (cls.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split()) if doc else ""

    # -- reproducers -----------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any] | None:
        """Write yourself under ``directory`` and return what :meth:`load` needs (None: not saved)."""
        return None

    @classmethod
    def load(cls: type[T], directory: Path, meta: dict[str, Any]) -> T:  # pragma: no cover - see subclasses
        raise NotImplementedError(f"{cls.__qualname__} cannot be loaded")


def state_type(fact: str) -> type[State] | None:
    """The State class bound to ``fact`` (None for facts that are plain properties of the graph)."""
    return _BY_FACT.get(fact)


class MissingStateError(QCompilerError):
    default_code = "QC120"


class StateStore:
    """One object per State type; ``ctx.state``."""

    def __init__(self) -> None:
        self._items: dict[type[State], State] = {}

    def get(self, cls: type[T]) -> T | None:
        obj = self._items.get(cls)
        return obj if isinstance(obj, cls) else None

    def require(self, cls: type[T], who: str | None = None) -> T:
        obj = self.get(cls)
        if obj is None:
            raise MissingStateError(
                f"{'pass ' + repr(who) if who else 'this step'} needs '{cls.fact}' ({cls.summary() or cls.__name__}), "
                "which no earlier pass left", pass_name=who,
                hint=f"run a pass that provides '{cls.fact}' earlier in the same pipeline")
        return obj

    def put(self, obj: State) -> None:
        if not isinstance(obj, State) or not type(obj).fact:
            raise TypeError(f"{obj!r} is not a State with a fact")
        self._items[type(obj)] = obj

    def drop(self, fact: str) -> bool:
        cls = _BY_FACT.get(fact)
        return cls is not None and self._items.pop(cls, None) is not None

    def facts(self) -> set[str]:
        return {cls.fact for cls in self._items}

    def __iter__(self) -> Iterator[State]:
        return iter(list(self._items.values()))

    def __contains__(self, fact: str) -> bool:
        return fact in self.facts()

    # -- reproducers -------------------------------------------------------------------------------
    def save(self, directory: str | Path, facts: set[str] | None = None) -> dict[str, Any]:
        """Write every savable state object and a ``state.json`` manifest (facts included) to ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {"facts": sorted(facts if facts is not None else self.facts()), "state": {},
                                    "not_saved": []}
        for obj in self:
            cls = type(obj)
            sub = d / cls.fact
            meta = obj.save(sub)
            if meta is None:
                manifest["not_saved"].append(cls.fact)
                continue
            manifest["state"][cls.fact] = {"type": f"{cls.__module__}:{cls.__qualname__}", "meta": meta}
        (d / "state.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return manifest

    @staticmethod
    def load(directory: str | Path) -> tuple["StateStore", set[str]]:
        """The store and facts saved by :meth:`save` (``directory`` or its ``state.json``)."""
        p = Path(directory)
        if p.is_file():
            p = p.parent
        manifest_path = p / "state.json"
        if not manifest_path.exists():
            raise QCompilerError(f"'{p}' holds no state.json", code="QC121",
                                 hint="give the state folder of a reproducer (DIR/state)")
        try:
            manifest = json.loads(manifest_path.read_text())
            store = StateStore()
            for fact, entry in sorted(manifest.get("state", {}).items()):
                module, _, qual = entry["type"].partition(":")
                cls: Any = importlib.import_module(module)
                for part in qual.split("."):
                    cls = getattr(cls, part)
                if not (isinstance(cls, type) and issubclass(cls, State)) or cls.fact != fact:
                    raise TypeError(f"{entry['type']} is not the State class of '{fact}'")
                store.put(cls.load(p / fact, entry["meta"]))
            return store, set(manifest.get("facts", []))
        except QCompilerError:
            raise
        except Exception as exc:
            raise QCompilerError(f"cannot read pass state from '{p}': {type(exc).__name__}: {exc}", code="QC121",
                                 hint="the folder was written by another qcompiler version or edited") from None
