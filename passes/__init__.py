"""Built-in passes, one module per pass (the module name is the pass name with '_' for '-'), and the named
pipelines (``_pipelines.py``).

:func:`register` is qcompiler's ``builtin`` entry point in the ``qcompiler.passes`` group
(pyproject.toml): the default registry calls it, exactly as it calls a third-party plugin.  Importing
this package imports no pass.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from qcompiler.pm.registry import Registry


#: facts that are properties of the graph (facts that stand for state are documented by their State class)
FACTS = {
    "quantized": "the graph carries QuantizeLinear/DequantizeLinear nodes",
    "bn-folded": "BatchNormalization nodes with a foldable producer were folded",
    "shapes-inferred": "tensor shapes and element types were inferred",
}


def register(registry: "Registry") -> None:
    """Register the graph facts, every pass class defined in this package's public modules, then the named
    pipelines."""
    from qcompiler.pm.base import Pass

    for name, meaning in FACTS.items():
        registry.register_fact(name, meaning)

    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Pass) and obj.__module__ == module.__name__ and obj.name:
                registry.register_pass(obj)
    from ._pipelines import PIPELINES

    for pipeline in PIPELINES:
        registry.register_pipeline(pipeline)
