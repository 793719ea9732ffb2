"""The pass contract.

A pass is a class with

* ``name``: kebab-case identifier used by pipelines, the CLI, the registry, dumps and diagnostics;
* ``Options``: a frozen dataclass of typed options (see :mod:`qcompiler.pm.options`);
* ``requires`` / ``provides`` / ``invalidates``: facts the manager checks before anything runs
  (``insert-qdq`` requires ``calibrated``; ``cle`` invalidates it); a fact may stand for typed state in
  ``ctx.state`` (:mod:`qcompiler.pm.state`), which the manager then checks and drops with the fact;
  ``uses``: facts read when present (documentation: ``qcompiler passes describe``);
* ``call(graph, ctx) -> PassResult``: mutate the graph in place and say whether anything changed
  (``modified`` must be computed from what really changed: ``repeat`` groups stop on it and
  ``--verify-each`` checks the claim), plus counters such as ``{"folded": 12, "skipped.shared_weight": 1}``.

A pass keeps no state between runs.  A rewrite that does not apply is a remark with its reason
(``ctx.remark(...)``), never an exception and never silent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .options import NoOptions, build_options, options_dict

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

    from .context import PassContext

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

@dataclass
class PassResult:
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def unchanged(**stats: Any) -> "PassResult":
        return PassResult(False, dict(stats))


#: a pass's options dataclass (``class FoldBN(Pass["FoldBN.Options"])``: ``self.options`` is typed from there)
OptionsT = TypeVar("OptionsT")


class Pass(Generic[OptionsT]):
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    invalidates: ClassVar[frozenset[str]] = frozenset()
    #: facts (and the state they stand for) the pass reads when present but does not need; listed in
    #: ``qcompiler passes describe`` and checked by the manager only for a remark
    uses: ClassVar[frozenset[str]] = frozenset()
    #: True for passes that must leave the model's outputs unchanged (up to float rounding);
    #: tests run every such pass through the onnxruntime before/after comparison.
    fp32_preserving: ClassVar[bool] = False

    def __init__(self, options: Any = None, **kwargs: Any):
        if options is None:
            options = build_options(self.Options, kwargs, self.name) if kwargs else self.Options()
        elif kwargs:
            raise TypeError("give either an Options instance or keyword options, not both")
        if not isinstance(options, self.Options):
            raise TypeError(f"{self.name}: options must be {self.Options.__qualname__}, not {type(options).__name__}")
        self.options: OptionsT = options  # type: ignore[assignment]  # checked against Options just above

    def call(self, graph: "gs.Graph", ctx: "PassContext") -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def description(cls) -> str:
        import inspect
        import sys

        doc = inspect.cleandoc(cls.__doc__ or "")
        mod = sys.modules.get(cls.__module__)
        mdoc = inspect.cleandoc(mod.__doc__ or "") if mod is not None else ""
        return doc + ("\n\n" + mdoc if mdoc and mdoc not in doc else "")

    def options_dict(self, include_defaults: bool = True) -> dict[str, Any]:
        return options_dict(self.options, include_defaults=include_defaults)

    def __repr__(self) -> str:
        opts = self.options_dict(include_defaults=False)
        return f"<pass {self.name} {opts}>" if opts else f"<pass {self.name}>"
