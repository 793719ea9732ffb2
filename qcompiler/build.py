"""qcompiler in a build system (Make, Ninja, CMake, Bazel, a CI step): rebuild only what changed.

A compile's *inputs* are the model file and its external data, the calibration data (its files, or the
fingerprint of in-memory data when it has one), the recipe, the reproducer state, the canonical pipeline and the
options that change the result, and the versions of qcompiler (with a hash of its sources), onnx and
onnxruntime.  Their hash, the *build key*, is written into the output's metadata (``qcompiler.build_key``).
When the output exists and records the key the inputs have now, ``compile`` leaves it untouched (same bytes, same
mtime) and says so in one line.  Data whose content cannot be hashed without reading it all in (a Python
iterable, a DataLoader) has no key: such a compile always runs.

``--depfile out.d`` writes the files the output depends on in the Makefile form that Make and Ninja read
(``depfile`` in Ninja, ``DEPFILE`` in CMake's ``add_custom_command``); ``--manifest out.json`` records the inputs'
hashes, the canonical pipeline, the versions and a summary of the result.  docs/build-systems.md shows both.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsutil import file_digest

KEY = "qcompiler.build_key"


def _sha(path: Path) -> str:
    return file_digest(path)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    from . import __version__

    return {"qcompiler": __version__, "qcompiler-source": source_hash(), "onnx": version("onnx"),
            "onnxruntime": version("onnxruntime")}


@functools.cache
def source_hash() -> str:
    """The hash of qcompiler's own Python sources (the package and its passes): a checkout whose code changed
    under the same version number is another compiler, and its outputs are not up to date."""
    from importlib.util import find_spec

    from . import __path__ as core

    spec = find_spec("qcompiler.passes")  # (located, not imported: the core does not import the passes)
    h = hashlib.sha256()
    for root in [*core, *(spec.submodule_search_locations or [] if spec else [])]:
        for f in sorted(Path(root).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class BuildInputs:
    """What a compile reads: files (with their hashes) and the rest of what decides the result."""

    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    settings: dict[str, Any] = field(default_factory=dict)
    hashable: bool = True  # False: some input (in-memory data) has no content hash
    why_not: str = ""

    @property
    def key(self) -> str | None:
        if not self.hashable:
            return None
        blob = json.dumps({"files": sorted(self.files.values()), "settings": self.settings}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def gather(input_path: str | os.PathLike, pipeline_text: str, options: Any, calib_data: Any) -> BuildInputs:
    """The inputs of compiling ``input_path`` with ``pipeline_text`` and ``options`` (a CompileOptions) on
    ``calib_data`` (the context's CalibData, or None)."""
    from .ir.io import read_model_proto
    from .ir.tensordata import resolve_external

    b = BuildInputs()
    if options.model_files:  # the model was made from these (a .pt2 exported on the way)
        for f in options.model_files:
            b.files[str(f)] = _sha(Path(f))
    else:
        src = Path(input_path)
        model = read_model_proto(src)  # a missing or broken model: the error compile gives (QC201/QC202)
        b.files[str(src)] = _sha(src)
        _, ext_files = resolve_external(model, src.parent, str(src))
        for f in sorted(ext_files):
            b.files[f] = _sha(Path(f))
    cfg = options.config
    if isinstance(cfg, (str, os.PathLike)) and Path(cfg).is_file():
        b.files[str(cfg)] = _sha(Path(cfg))
    elif cfg is not None:
        b.settings["recipe"] = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
    if options.state is not None:
        for sf in sorted(Path(options.state).rglob("*")):
            if sf.is_file():
                b.files[str(sf)] = _sha(sf)
    if calib_data is not None:
        deps = calib_data.source.dependencies()
        for f in deps:
            b.files[str(f)] = _sha(Path(f))
        fp = calib_data.fingerprint()
        if fp is None and not deps:
            b.hashable = False
            b.why_not = "the calibration data is in memory (its content has no hash)"
        b.settings["calib"] = {"fingerprint": fp, "options": dict(options.calib_options or {})}
    b.settings.update({"pipeline": pipeline_text, "versions": versions(), "seed": options.seed,
                       "input_shapes": dict(options.input_shapes or {}), "external_data": options.external_data,
                       "allow_random_calibration": options.allow_random_calibration,
                       "save_recipe": options.save_recipe})
    return b


def newer_inputs(output: str | os.PathLike, inputs: BuildInputs) -> list[str]:
    """The input files modified after ``output`` was (touched, or changed back to what they were)."""
    try:
        stamp = os.stat(output).st_mtime_ns
    except OSError:
        return []
    out = []
    for f in inputs.files:
        try:
            if os.stat(f).st_mtime_ns > stamp:
                out.append(f)
        except OSError:
            continue
    return out


def recorded_key(output: str | os.PathLike) -> str | None:
    """The build key an existing output records (None: none, or not a readable model)."""
    from .ir.io import read_model_proto

    p = Path(output)
    if not p.is_file():
        return None
    try:
        model = read_model_proto(p)
    except Exception:  # noqa: BLE001 - a broken output is simply rebuilt
        return None
    return next((m.value for m in model.metadata_props if m.key == KEY), None)


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")


def write_depfile(depfile: str | os.PathLike, target: str | os.PathLike, inputs: BuildInputs) -> None:
    """``target: dep dep ...`` in the Makefile syntax Make and Ninja read."""
    from .fsutil import atomic_write

    deps = " \\\n  ".join(_escape(f) for f in inputs.files)
    atomic_write(Path(depfile), f"{_escape(str(target))}: \\\n  {deps}\n")


def write_manifest(manifest: str | os.PathLike, output: str | os.PathLike, inputs: BuildInputs,
                   summary: dict[str, Any], up_to_date: bool) -> None:
    from .fsutil import atomic_write

    doc = {"output": str(output), "output_sha256": _sha(Path(output)), "build_key": inputs.key,
           "up_to_date": up_to_date, "inputs": inputs.files, "pipeline": inputs.settings.get("pipeline"),
           "versions": inputs.settings.get("versions"), "summary": summary}
    atomic_write(Path(manifest), json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
