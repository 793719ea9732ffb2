"""Checking calibration data against the model and cutting it into what onnxruntime runs.

Layout (``--layout``, qcompiler/calib/sources.py explains each) ``auto`` is decided from the array ranks
against the model inputs' ranks, per file:

* every array has the model input's rank + 1: ``stacked`` feeds;
* every array has the model input's rank: ``batch`` (samples on axis 0) when all arrays agree on the
  length of axis 0; otherwise the file is one ``feed`` (an RNN's ``input [T, 576]`` with its state
  ``h [1, 1, 128]``);
* every array has one axis less than its input: one sample without its batch axis (one feed);
* anything else is ambiguous: an error naming each input's rank and the model's, and the option to use.

``batch`` data is cut and joined into batches of the size the model accepts (a fixed batch dim B gives
exactly B samples per run; a symbolic one ``batch_size``); a ``feed`` is run as it is, never cut or joined.
Nothing holds more than one chunk plus one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError, DiagnosticEngine
from .sources import LABEL_KEYS, Chunk, InputSpec, check_lengths, model_inputs, static_dim

if TYPE_CHECKING:  # pragma: no cover
    from .data import CalibData


@dataclass
class Batch:
    """One onnxruntime run's worth of inputs."""

    first: int  # index of its first sample in the data (feeds count one each unless they have a batch axis)
    feeds: dict[str, np.ndarray]
    samples: int  # samples in it
    batch_axis: bool  # axis 0 of every input is a batch axis of ``samples`` (so the batch may be sliced)
    origin: str | None = None


def _fmt_shape(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def check_names(specs: list[InputSpec], keys: list[str], where: str) -> None:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in keys]
    if missing:
        raise CalibrationError(
            f"{where} has no data for model input '{missing[0]}'" +
            (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), code="QC402",
            hint=f"the model inputs are {names}; the data holds {sorted(keys)}; arrays must be keyed by input name")
    extra = [k for k in keys if k not in names and k not in LABEL_KEYS]
    if extra:
        raise CalibrationError(f"{where} holds '{extra[0]}', which is not a model input", code="QC402",
                               hint=f"the model inputs are {names}; remove or rename the extra arrays")


def resolve_layout(shapes: dict[str, tuple], specs: dict[str, InputSpec], where: str) -> str:
    """``batch``, ``stacked`` or ``feed`` for arrays of these shapes (see the module docstring)."""
    deltas = {}
    for name, shape in shapes.items():
        spec = specs.get(name)
        if spec is None or spec.shape is None:
            continue
        deltas[name] = len(shape) - len(spec.shape)
    kinds = set(deltas.values())
    if not kinds or kinds == {0}:
        lens = {n: shapes[n][0] for n in deltas if len(shapes[n])}
        if len(set(lens.values())) <= 1 and len(lens) == len(deltas):
            return "batch"
        return "feed"
    if kinds == {1}:
        return "stacked"
    if kinds == {-1}:
        return "feed"
    desc = ", ".join(f"'{n}' rank {len(shapes[n])} (model {len(specs[n].shape or ())})" for n in deltas)
    raise CalibrationError(f"{where}: cannot tell how the arrays are laid out: {desc}", code="QC402",
                           hint="give --layout batch (samples on axis 0), stacked (feeds on a new leading axis) or "
                                "feed (the file is one feed), and arrays that agree with it")


class _Checker:
    def __init__(self, specs: list[InputSpec], description: str, diagnostics: DiagnosticEngine | None = None):
        self.specs = {s.name: s for s in specs}
        self.description = description
        self.diagnostics = diagnostics
        self.converted: set[str] = set()  # inputs whose float data was converted (said once each)

    def arrays(self, chunk: Chunk) -> dict[str, np.ndarray]:
        where = self.where(chunk)
        arrays = dict(chunk.arrays)
        if chunk.unnamed is not None:
            if len(self.specs) != 1:
                raise CalibrationError(f"{where}: a bare array can only feed a single-input model "
                                       f"(inputs: {list(self.specs)})", code="QC402",
                                       hint="use .npz files keyed by input name")
            arrays = {next(iter(self.specs)): chunk.unnamed}
        for k in LABEL_KEYS:
            arrays.pop(k, None)
        check_names(list(self.specs.values()), list(arrays), where)
        return arrays

    def where(self, chunk: Chunk) -> str:
        """How messages name a chunk: its file, or the data and the item."""
        if chunk.origin and not chunk.origin.startswith("item "):
            return f"'{chunk.origin}'"
        return f"{self.description} ({chunk.origin})" if chunk.origin else self.description

    def check(self, arrays: dict[str, np.ndarray], where: str, batch: bool) -> tuple[dict[str, np.ndarray], int, bool]:
        """Ranks, static dims and dtypes; a missing batch axis added.  Returns (arrays, samples, batch_axis)."""
        out = {}
        for name, arr in arrays.items():
            spec = self.specs[name]
            arr = np.asarray(arr)
            if spec.shape is not None:
                r = len(spec.shape)
                if arr.ndim == r - 1 and r > 0 and all(
                        not static_dim(dm) or dm == dd for dm, dd in zip(spec.shape[1:], arr.shape)):
                    arr = arr[None]  # a single sample without its batch axis
                elif arr.ndim != r:
                    raise CalibrationError(
                        f"{where}: input '{name}' has rank {arr.ndim} (shape {list(arr.shape)}); the model "
                        f"expects rank {r} {_fmt_shape(spec.shape)}", code="QC402",
                        hint="samples go on axis 0; a single sample may omit the batch axis")
                first_axis = 1 if batch else 0
                for i in range(first_axis, r):
                    dm, dd = spec.shape[i], arr.shape[i]
                    if static_dim(dm) and dm != dd:
                        raise CalibrationError(
                            f"{where}: input '{name}' has dim {i} = {dd}; the model fixes it to {dm} "
                            f"(data {list(arr.shape)} vs model {_fmt_shape(spec.shape)})", code="QC402",
                            hint="resize the data, or pick the matching model")
            if arr.dtype != spec.dtype:
                if arr.dtype == np.float64 and spec.dtype == np.float32:
                    arr = arr.astype(np.float32)
                elif _is_float(arr.dtype) and _is_float(spec.dtype):  # fp32 data for an fp16 input, ...
                    if name not in self.converted and self.diagnostics is not None:
                        self.diagnostics.remark("QC402", f"{where}: input '{name}' is {arr.dtype}; the model takes "
                                                         f"{spec.dtype}: the data is converted")
                    self.converted.add(name)
                    arr = arr.astype(spec.dtype)
                elif arr.dtype.kind == spec.dtype.kind == "i" and np.can_cast(arr.dtype, spec.dtype):
                    arr = arr.astype(spec.dtype)
                else:
                    raise CalibrationError(f"{where}: input '{name}' is {arr.dtype}; the model expects "
                                           f"{spec.dtype}", code="QC402",
                                           hint=f"convert the data with .astype(numpy.{spec.dtype})")
            out[name] = arr
        lens = {n: (a.shape[0] if a.ndim else 1) for n, a in out.items()}
        if batch:
            if len(set(lens.values())) > 1:
                raise CalibrationError(f"{where}: inputs have different sample counts {lens}", code="QC402",
                                       hint="with --layout batch every input has its samples on axis 0; "
                                            "--layout feed runs each file as it is")
            return out, next(iter(lens.values()), 0), True
        # a feed: axis 0 is a batch axis only where every input agrees on it and the model leaves it free
        n = next(iter(lens.values()), 1)
        batch_axis = bool(out) and len(set(lens.values())) == 1 and all(
            a.ndim and self.specs[k].shape is not None and not static_dim(self.specs[k].shape[0])  # type: ignore[index]
            for k, a in out.items())
        return out, (n if batch_axis else 1), batch_axis


def _is_float(dtype) -> bool:
    """numpy floats and ml_dtypes' (bfloat16, float8): their kind is 'f' or 'V'."""
    d = np.dtype(dtype)
    return d.kind == "f" or d.name in ("bfloat16",)


def _finite(arrays: dict[str, np.ndarray], n: int, batch_axis: bool) -> dict[str, np.ndarray]:
    """Per input: the indices (within this chunk) of samples holding NaN or Inf."""
    bad = {}
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            if batch_axis and n > 1:
                bad[name] = np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
            else:
                bad[name] = np.zeros(1, np.int64)
    return bad


def iter_batches(data: "CalibData", graph: gs.Graph, diagnostics: DiagnosticEngine | None = None,
                 batch_size: int | None = None) -> Iterator[Batch]:
    """Checked, finite batches (or feeds) for onnxruntime, in data order."""
    specs = model_inputs(graph)
    by_name = {s.name: s for s in specs}
    source = data.source
    source.bind(graph)
    checker = _Checker(specs, source.description, diagnostics)
    fixed = None
    for s in specs:
        if s.shape and static_dim(s.shape[0]):
            fixed = int(s.shape[0]) if fixed is None else fixed
    want = fixed or batch_size or data.options.batch_size or source.default_batch or 8
    limit = data.options.max_samples
    layout = data.options.layout
    shapes = source.shapes()
    if layout == "auto" and shapes is not None:
        layout = resolve_layout(shapes, by_name, source.description)
    pending: list[dict[str, np.ndarray]] = []
    pending_n = 0
    sample = 0  # index of the next sample in the data
    emitted = 0
    skipped = 0

    def take(k: int) -> dict[str, np.ndarray]:
        nonlocal pending, pending_n
        out: dict[str, list[np.ndarray]] = {}
        need = k
        rest: list[dict[str, np.ndarray]] = []
        for ch in pending:
            n = next(iter(ch.values())).shape[0]
            if need == 0:
                rest.append(ch)
                continue
            if n <= need:
                for key, v in ch.items():
                    out.setdefault(key, []).append(v)
                need -= n
            else:
                for key, v in ch.items():
                    out.setdefault(key, []).append(v[:need])
                rest.append({key: v[need:] for key, v in ch.items()})
                need = 0
        pending = rest
        pending_n -= k
        return {key: (vs[0] if len(vs) == 1 else np.concatenate(vs)) for key, vs in out.items()}

    def chunks() -> Iterator[tuple[Chunk, str]]:
        for chunk in source.chunks(layout, want):
            kind = chunk.layout
            if kind == "auto":  # a file of a folder: one feed as it is, or feeds stacked in it
                arrays = checker.arrays(chunk)
                kind = resolve_layout({k: tuple(np.shape(v)) for k, v in arrays.items()}, by_name,
                                      checker.where(chunk))
                kind = "stacked" if kind == "stacked" else "feed"
            if kind == "stacked":
                arrays = checker.arrays(chunk)
                check_lengths({k: len(v) if np.ndim(v) else 1 for k, v in arrays.items()}, "stacked",
                              checker.where(chunk))
                n = min((len(v) for v in arrays.values()), default=0)
                for i in range(n):
                    yield Chunk({k: v[i] for k, v in arrays.items()}, chunk.origin, layout="feed"), "feed"
                continue
            yield chunk, kind

    start = data.options.start
    for chunk, kind in chunks():
        where = checker.where(chunk)
        arrays, n, batch_axis = checker.check(checker.arrays(chunk), where, kind == "batch")
        first = sample
        sample += n
        if sample <= start:
            continue  # before this shard
        if first < start:  # the shard starts inside this chunk
            arrays = {k: v[start - first:] for k, v in arrays.items()}
            n -= start - first
            first = start
        bad = _finite(arrays, n, batch_axis)
        if bad:
            name, idx = next(iter(bad.items()))
            what = (f"sample {first + int(idx[0])}" if batch_axis else f"the feed starting at sample {first}")
            if not data.options.skip_bad:
                more = len(idx) - 1
                raise CalibrationError(f"{source.description}: input '{name}' has NaN or Inf in {what}"
                                       + (f" (and {more} more samples)" if more > 0 else ""), code="QC403",
                                       hint="clean the data, or pass --skip-bad-samples to drop such samples")
            keep = np.ones(n, bool)
            for idx in bad.values():
                keep[idx] = False
            skipped += int((~keep).sum())
            if diagnostics is not None:
                diagnostics.warning("QC403", f"skipped {int((~keep).sum())} sample(s) with NaN/Inf in input "
                                             f"'{name}' (first: {what})")
            if not batch_axis:  # a feed without a batch axis goes whole
                continue
            arrays = {k: v[keep] for k, v in arrays.items()}
            n = int(keep.sum())
        if kind == "feed":
            if limit is not None and emitted >= limit:
                break
            if n:
                yield Batch(start + emitted, arrays, n, batch_axis, chunk.origin)
                emitted += n
            continue
        if limit is not None:
            room = limit - emitted - pending_n
            if room <= 0:
                break
            if n > room:
                arrays = {k: v[:room] for k, v in arrays.items()}
                n = room
        if n == 0:
            continue
        pending.append(arrays)
        pending_n += n
        while pending_n >= want:
            yield Batch(start + emitted, take(want), want, True)
            emitted += want
    if pending_n:
        if fixed is not None:
            if diagnostics is not None:
                diagnostics.remark("QC401", f"dropped the last {pending_n} sample(s): the model's batch dim is fixed "
                                            f"to {fixed}")
        else:
            k = pending_n
            yield Batch(start + emitted, take(k), k, True)
            emitted += k
    if emitted == 0:
        raise CalibrationError(f"{source.description} holds no usable samples" +
                               (f" ({skipped} skipped for NaN/Inf)" if skipped else ""), code="QC401",
                               hint="give at least one sample per model input")


def check_signature(data: "CalibData", graph: gs.Graph) -> None:
    """Cheap checks before heavy work: names (and, for files with known shapes, the layout)."""
    source = data.source
    source.bind(graph)
    specs = model_inputs(graph)
    keys = source.keys()
    if keys is not None:
        check_names(specs, keys, source.description)
    shapes = source.shapes()
    if data.options.layout == "auto" and shapes is not None:
        resolve_layout(shapes, {s.name: s for s in specs}, source.description)
