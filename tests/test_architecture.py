"""What may import what (docs/architecture.md): the layers of qcompiler/, checked on the source.

Imports inside ``if TYPE_CHECKING:`` are annotations only and do not count.  The rules:

* ``ir`` (the only package touching ONNX protos: ruff's banned-api rule enforces that part) depends on nothing
  but diagnostics, fsutil and progress: it serializes and reads graphs and knows no executor;
* ``executor`` (where work runs: map_over_graph ships graphs) on ``ir``;
* ``pm`` (pass manager) on ``ir`` and ``executor``; ``calib`` and ``quant`` on ``pm``, ``ir`` and ``executor``;
  ``bridge`` on those;
* the application modules (api, cli, report, demo, ...) may use everything in qcompiler/;
* nothing in qcompiler/ imports ``qcompiler.passes`` (passes arrive through the registry), and passes never import
  the command line or the API.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = {"diagnostics", "fsutil", "progress"}
ALLOWED = {
    "diagnostics": set(), "fsutil": {"diagnostics"}, "progress": set(), "executor": BASE | {"ir"},
    "ir": BASE,
    "pm": BASE | {"ir", "executor"},
    "calib": BASE | {"ir", "pm", "executor"},
    "quant": BASE | {"ir", "pm", "executor"},
    "bridge": BASE | {"ir", "pm", "executor", "calib", "quant"},
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


def _sources():
    for folder, package in (("qcompiler", "qcompiler"), ("passes", "qcompiler.passes")):
        for path, module in _modules(folder, package):
            yield path, module


def test_the_ir_knows_no_executor():
    bad = [f"{m} imports {n}" for p, m in _modules("qcompiler/ir", "qcompiler.ir") for n in _imports(p, m)
           if n.startswith("qcompiler.executor")]
    assert not bad, "\n".join(bad)


def test_one_definition_of_sqnr_and_of_dequantization():
    """dB and SQNR are computed in quant/numerics.py only; (q - zero point) * scale of a Q/DQ pair in
    quant/qspec.py only: every other module calls them (docs/architecture.md, "Where each algorithm lives")."""
    bad = []
    for path, module in _sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if module != "qcompiler.quant.numerics" and isinstance(node, ast.Call) and \
                    ast.unparse(node.func).endswith("log10"):
                bad.append(f"{module}:{node.lineno}: log10 (use quant.numerics.db / db_each / sqnr_db)")
            if module != "qcompiler.quant.qspec" and isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                text = ast.unparse(node)
                if ("zp" in text or "zero_point" in text) and "scale" in text and "-" in text:
                    bad.append(f"{module}:{node.lineno}: {text} (use quant.qspec.dequantize_linear)")
    assert not bad, "\n".join(bad)


def test_the_definition_checks_see_what_they_look_for():
    """(The check above would pass vacuously if it could not see a definition.)"""
    tree = ast.parse((ROOT / "qcompiler" / "quant" / "qspec.py").read_text())
    assert any(isinstance(n, ast.BinOp) and "zp" in ast.unparse(n) and "scale" in ast.unparse(n)
               for n in ast.walk(tree))
    tree = ast.parse((ROOT / "qcompiler" / "quant" / "numerics.py").read_text())
    assert any(isinstance(n, ast.Call) and ast.unparse(n.func).endswith("log10") for n in ast.walk(tree))


def test_passes_are_type_checked_with_the_core():
    """mypy (run by .ci/run) covers passes/ as well as qcompiler/: a pass's options are typed from its Options
    dataclass (``Pass["X.Options"]``), so a misspelt option is a finding, not a run-time AttributeError."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"qcompiler", "passes"} <= set(conf["files"])
    generic = [p.name for p in (ROOT / "passes").glob("*.py")
               if "(Pass)" in p.read_text()]
    assert not generic, f"passes deriving from the bare Pass (options untyped): {generic}"


def test_every_fact_a_pass_names_is_declared():
    """Facts are kebab-case strings; each one a built-in pass names stands for a State class or is registered with
    its meaning (Registry.register_fact), so a misspelt fact fails here, not in a user's pipeline."""
    from qcompiler.pm.registry import default_registry
    from qcompiler.pm.state import state_type

    reg = default_registry()
    unknown = sorted({f"{name}: {fact}" for name, cls in reg.passes().items()
                      for fact in cls.requires | cls.provides | cls.invalidates | cls.uses
                      if state_type(fact) is None and fact not in reg.facts})
    assert not unknown, "\n".join(unknown)
    assert reg.facts and any(state_type(f) for cls in reg.passes().values() for f in cls.provides)


def test_long_files_say_why():
    """No module of qcompiler/ or passes/ over 500 lines without a reason at its top (docs/architecture.md)."""
    long = [str(p.relative_to(ROOT)) for p, _ in _sources()
            if len(p.read_text().splitlines()) > 500 and "Over 500 lines on purpose" not in p.read_text()[:2000]]
    assert not long, long
