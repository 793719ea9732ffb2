"""Calibration data: what ``--calib-data`` and the Python API accept, and how it is batched.

Accepted forms:

* ``calib.npz``: one array per model input, keyed by input name; samples on axis 0 (``--layout batch``),
  or several feeds stacked on a new leading axis (``--layout stacked``), or one feed (``--layout feed``);
  ``auto`` (the default) tells them apart by rank against the model (qcompiler/calib/batching.py);
* a folder of ``.npz`` (keyed by input name) or ``.npy`` (single-input models) files, read in name order,
  **each file one feed** taken as it is (sequence-first inputs, RNN states and scalars included);
  ``--layout batch`` makes each file a chunk of samples on axis 0 instead, joined into batches;
* a single ``.npy`` file: samples on axis 0 of a single-input model;
* a folder of images (``.png``/``.jpg``/...) with a preprocessing spec (qcompiler/calib/images.py);
* any iterable of feed dicts, or an object with ``get_next()`` (onnxruntime's ``CalibrationDataReader``):
  one feed per item;
* a dict of arrays (samples on axis 0).

Everything streams from disk: memory holds one batch (or one feed), whatever the number of samples.
Parts: ``npy.py`` (reading arrays by rows, memory-mapped when stored uncompressed), ``images.py``,
``sources.py`` (the forms above), ``batching.py`` (checks against the model, layouts, batches).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError, DiagnosticEngine
from .batching import Batch, check_signature, iter_batches, resolve_layout
from .images import IMAGE_EXT
from .sources import (LAYOUTS, ArraySource, DataSource, FolderSource, ImageFolderSource, InputSpec, IterableSource,
                      NpyFileSource, NpzSource, RandomSource, check_layout, model_inputs, static_dim)

__all__ = ["Batch", "CalibData", "DataOptions", "as_data_source", "iter_batches", "DataSource", "ArraySource",
           "FolderSource", "ImageFolderSource", "IterableSource", "NpyFileSource", "NpzSource", "RandomSource",
           "InputSpec", "LAYOUTS", "model_inputs", "static_dim"]


@dataclass(frozen=True)
class DataOptions:
    batch_size: int | None = None
    max_samples: int | None = None
    skip_bad: bool = False
    preprocess: str | None = None
    layout: str = "auto"
    start: int = 0  # the first sample used (a shard of the data; max_samples counts from here)


class CalibData:
    """A data source plus how to batch it (what ``ctx.calib_data`` holds)."""

    def __init__(self, source: DataSource, options: DataOptions | None = None):
        self.source = source
        self.options = options or DataOptions()

    def limited(self, max_samples: int | None = None, batch_size: int | None = None) -> "CalibData":
        """The same data with other limits (passes that need fewer samples than calibration)."""
        opts = self.options
        if max_samples is not None:
            opts = replace(opts, max_samples=max_samples)
        if batch_size is not None:
            opts = replace(opts, batch_size=batch_size)
        return CalibData(self.source, opts)

    def shard(self, start: int, stop: int) -> "CalibData":
        """Samples [start, stop) of this data (relative to its own start), batched the same way."""
        base = self.options.start
        return CalibData(self.source, replace(self.options, start=base + start, max_samples=stop - start))

    def ranks(self) -> dict[str, int]:
        """The rank of each named input array as stored (a batch or a feed), read from the first chunk when the
        source does not know it without reading (an iterable is not consumed: it yields a new iterator)."""
        shapes = self.source.shapes()
        if shapes is not None:
            return {k: len(v) for k, v in shapes.items()}
        for chunk in self.source.chunks("feed", 1):
            return {k: int(np.ndim(v)) for k, v in chunk.arrays.items()}
        return {}

    def samples(self, graph: gs.Graph) -> int | None:
        """How many samples the batches for ``graph`` will hold, when the source knows without reading them
        (None otherwise: a Python iterable, a folder of .npz files, feeds taken as they are)."""
        layout = self.options.layout
        shapes = self.source.shapes()
        if layout == "auto" and shapes is not None:
            try:
                layout = resolve_layout(shapes, {s.name: s for s in model_inputs(graph)}, self.source.description)
            except CalibrationError:
                return None  # the batches will say what is wrong with the data
        n = self.source.exact_samples(layout)
        if n is None:
            return None
        n = max(0, n - self.options.start)
        return n if self.options.max_samples is None else min(n, self.options.max_samples)

    def fingerprint(self) -> str | None:
        fp = self.source.fingerprint()
        if fp is None:
            return None
        o = self.options
        return hashlib.sha1(f"{fp}|{o.max_samples}|{o.skip_bad}|{o.layout}|{o.start}".encode()).hexdigest()

    def check_signature(self, graph: gs.Graph) -> None:
        check_signature(self, graph)

    def location(self) -> str | None:
        return self.source.location()

    def size_hint(self) -> int | None:
        """About how many samples the batches will hold (progress displays)."""
        n = self.source.size_hint()
        limit = self.options.max_samples
        return n if limit is None else (limit if n is None else min(n, limit))

    def labels(self) -> np.ndarray | None:
        lab = self.source.labels()
        if lab is not None and self.options.max_samples:
            lab = lab[: self.options.max_samples]
        return lab

    def batches(self, graph: gs.Graph, diagnostics: DiagnosticEngine | None = None,
                batch_size: int | None = None) -> Iterator[Batch]:
        return iter_batches(self, graph, diagnostics, batch_size)


def as_data_source(data: Any, *, batch_size: int | None = None, max_samples: int | None = None,
                   skip_bad: bool = False, preprocess: str | None = None, cache_key: str | None = None,
                   layout: str = "auto") -> CalibData:
    """Wrap a path, arrays, an iterable (a list, a function returning an iterator, a torch DataLoader or Dataset:
    items are dicts, arrays/tensors or tuples matched by position), a data reader or a Ray object reference into a
    CalibData."""
    opts = DataOptions(batch_size, max_samples, skip_bad, preprocess, check_layout(layout))
    if type(data).__name__ == "ObjectRef":  # data a Ray driver put in the object store
        from ..executor import resolve

        data = resolve(data)
    if isinstance(data, CalibData):
        return data
    if isinstance(data, DataSource):
        return CalibData(data, opts)
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if not p.exists():
            raise CalibrationError(f"calibration data '{p}' not found", code="QC401",
                                   hint="--calib-data takes an .npz file, a folder of .npz/.npy files or of images")
        if p.is_dir():
            if any(f.suffix.lower() in IMAGE_EXT for f in p.iterdir()) and \
                    not any(f.suffix.lower() in (".npz", ".npy") for f in p.iterdir()):
                return CalibData(ImageFolderSource(p, preprocess), opts)
            return CalibData(FolderSource(p, layout), opts)
        if p.stat().st_size == 0:
            raise CalibrationError(f"calibration data '{p}' is empty", code="QC401")
        if p.suffix.lower() == ".npy":
            return CalibData(NpyFileSource(p), opts)
        return CalibData(NpzSource(p), opts)
    if isinstance(data, dict):
        return CalibData(ArraySource(data), opts)
    return CalibData(IterableSource(data, cache_key), opts)
