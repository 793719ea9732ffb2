"""What may import what (docs/architecture.md): the layers of qcompiler/, checked on the source.

Imports inside ``if TYPE_CHECKING:`` are annotations only and do not count.  The rules:

* ``ir`` (the only package touching ONNX protos: ruff's banned-api rule enforces that part) depends on nothing
  but diagnostics, fsutil, progress and executor;
* ``pm`` (pass manager) on ``ir``; ``calib`` and ``quant`` on ``pm`` and ``ir``; ``bridge`` on those;
* the application modules (api, cli, report, demo, ...) may use everything in qcompiler/;
* nothing in qcompiler/ imports ``qcompiler.passes`` (passes arrive through the registry), and passes never import
  the command line or the API.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = {"diagnostics", "fsutil", "progress", "executor"}
ALLOWED = {
    "diagnostics": set(), "fsutil": {"diagnostics"}, "progress": set(), "executor": {"diagnostics", "progress"},
    "ir": BASE,
    "pm": BASE | {"ir"},
    "calib": BASE | {"ir", "pm"},
    "quant": BASE | {"ir", "pm"},
    "bridge": BASE | {"ir", "pm", "calib", "quant"},
}


def _imports(path: Path, module: str) -> list[str]:
    """Absolute names of the qcompiler modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out += [name] + [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [n for n in out if n.startswith("qcompiler")]


def _modules(folder: str, package: str):
    for p in sorted((ROOT / folder).rglob("*.py")):
        rel = p.relative_to(ROOT / folder).with_suffix("")
        parts = [package] + [x for x in rel.parts if x != "__init__"]
        yield p, ".".join(parts)


def test_core_layers_import_only_downwards():
    bad = []
    for path, module in _modules("qcompiler", "qcompiler"):
        parts = module.split(".")
        me = parts[1] if len(parts) > 1 else None
        if me not in ALLOWED:
            continue
        for name in _imports(path, module):
            target = name.split(".")
            dep = target[1] if len(target) > 1 else None
            if dep is not None and dep != me and dep not in ALLOWED[me]:
                bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_qcompiler_never_imports_a_pass_and_passes_never_import_the_front_ends():
    bad = [f"{m} imports {n}" for p, m in _modules("qcompiler", "qcompiler") for n in _imports(p, m)
           if n.startswith("qcompiler.passes")]
    bad += [f"{m} imports {n}" for p, m in _modules("passes", "qcompiler.passes") for n in _imports(p, m)
            if n.startswith(("qcompiler.cli", "qcompiler.api"))]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports():
    """(The rules above would pass vacuously if no import were found.)"""
    names = _imports(ROOT / "qcompiler" / "quant" / "plan.py", "qcompiler.quant.plan")
    assert "qcompiler.ir.query" in names and "qcompiler.quant.targets" in names
    assert "qcompiler.calib.data" not in _imports(ROOT / "qcompiler" / "pm" / "context.py", "qcompiler.pm.context")
