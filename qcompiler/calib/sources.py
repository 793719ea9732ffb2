"""Where calibration data comes from: files, folders, images, Python iterables, data readers, arrays.

Every source yields :class:`Chunk` objects: arrays keyed by model input name (or one unnamed array for a
single-input model: a bare ``.npy`` or an image), the file they came from, and their *layout*:

* ``batch``: samples on axis 0 of every array, which is the model's batch axis; chunks are cut and joined
  into the batches the model accepts (``calib.npz`` from ``numpy.savez``, images, in-memory arrays);
* ``stacked``: several feeds stacked on a new leading axis (each array has the model input's rank + 1);
  item ``i`` of every array is one feed;
* ``feed``: exactly what one onnxruntime run takes, never cut or joined (a file of a folder, an item of a
  Python list or of an onnxruntime ``CalibrationDataReader``; sequence-first inputs, RNN states
  ``[layers, batch, hidden]`` and scalars are fine);
* ``auto``: decided per file against the model's input ranks (qcompiler/calib/batching.py).

Files are read lazily: ``.npz`` members and ``.npy`` files are memory-mapped when stored uncompressed and
streamed row by row otherwise (qcompiler/calib/npy.py), folders one file at a time, so the memory held
is one batch (or one feed) whatever the number of samples.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError
from ..fsutil import file_digest
from .images import IMAGE_EXT, load_image, parse_preprocess
from .npy import NpyArray, npz_members

#: arrays with these names hold labels (for top-1 in reports), never model inputs
LABEL_KEYS = ("__labels__", "labels", "__label__")
LAYOUTS = ("auto", "batch", "stacked", "feed")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple | None  # ints, strings (symbolic) or None


def model_inputs(graph: gs.Graph) -> list[InputSpec]:
    out = []
    for t in graph.inputs:
        dt = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
        out.append(InputSpec(t.name, dt, tuple(t.shape) if t.shape is not None else None))
    return out


def static_dim(d: Any) -> bool:
    """A fixed (known, positive) dimension, not a symbolic or unknown one."""
    return bool(isinstance(d, (int, np.integer)) and d > 0)


@dataclass
class Chunk:
    """Arrays from a source, before they are checked against the model."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    origin: str | None = None  # the file it came from (messages name it)
    unnamed: np.ndarray | None = None  # one array without a name (bare .npy, image): single-input models only
    layout: str = "batch"


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise CalibrationError(f"unknown data layout '{layout}'", code="QC402",
                               hint="layouts: auto, batch (samples on axis 0), stacked (feeds on a new leading "
                                    "axis), feed (the file is one feed)")
    return layout


def check_lengths(lens: dict[str, int], layout: str, where: str) -> None:
    """Batch and stacked layouts need every array to have the same length on axis 0."""
    if layout in ("batch", "stacked") and len(set(lens.values())) > 1:
        what = "samples" if layout == "batch" else "stacked feeds"
        raise CalibrationError(f"the arrays in {where} have different numbers of {what} on axis 0: {lens}",
                               code="QC402", hint=f"with --layout {layout} every input has its {what} on axis 0 "
                                                  "(--layout feed takes a file as one feed)")


def _file_hash(path: Path) -> str:
    return file_digest(path, "sha1")


class DataSource:
    """Base class.  Subclasses implement ``chunks``; ``fingerprint`` enables the statistics cache."""

    description = "calibration data"
    #: batch size when neither the user nor the model says (None: feeds are taken as they come)
    default_batch: int | None = 8

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:  # pragma: no cover - abstract
        """Chunks in order; ``layout`` is the resolved layout for sources that know their shapes up front
        (see :meth:`shapes`), ``rows`` how many samples a batch-layout chunk should hold."""
        raise NotImplementedError

    def shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Array shapes known without reading the data (input arrays only), or None."""
        return None

    def fingerprint(self) -> str | None:
        return None

    def size_hint(self) -> int | None:
        """About how many samples (or feeds) there are, for progress displays (None: unknown)."""
        return None

    def exact_samples(self, layout: str) -> int | None:
        """How many samples the batches hold in ``layout`` (resolved, not auto), known without reading the data
        (None: only a read would tell).  Sharding (qcompiler/executor.py) needs it exact."""
        return None

    def location(self) -> str | None:
        """The file or folder the data is read from (None for in-memory data)."""
        return None

    def dependencies(self) -> list[Path]:
        """Every file the data is read from (a build's dependencies; [] for in-memory data)."""
        return []

    def keys(self) -> list[str] | None:
        return None

    def bind(self, graph: gs.Graph) -> None:
        """Learn what the model needs (image sources: the input name; random data: the shapes)."""

    def labels(self) -> np.ndarray | None:
        return None


class FileSource(DataSource):
    """Data read from a file or folder (``path``); its fingerprint hashes the file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def location(self) -> str | None:
        return str(self.path)

    def dependencies(self) -> list[Path]:
        listed = getattr(self, "files", None)  # a folder's files
        return list(listed) if isinstance(listed, list) else [self.path]

    def fingerprint(self) -> str | None:
        return _file_hash(self.path)


class NpzSource(FileSource):
    """One ``.npz`` file: arrays keyed by input name (plus an optional label array)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.description = f"'{self.path}'"
        self.arrays = npz_members(self.path)

    def keys(self) -> list[str]:
        return list(self.arrays)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: a.shape for k, a in self.arrays.items() if k not in LABEL_KEYS}

    def size_hint(self) -> int | None:
        rows = [a.rows_total for k, a in self.arrays.items() if k not in LABEL_KEYS]
        return min(rows) if rows else None

    def exact_samples(self, layout: str) -> int | None:
        return self.size_hint() if layout == "batch" else None

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        keys = [k for k in self.arrays if k not in LABEL_KEYS]
        origin = str(self.path)
        if layout == "feed":
            yield Chunk({k: self.arrays[k].read_all() for k in keys}, origin, layout="feed")
            return
        check_lengths({k: self.arrays[k].rows_total for k in keys}, layout, self.description)
        step = rows if layout == "batch" else 1
        iters = {k: self.arrays[k].iter_rows(step) for k in keys}
        while True:
            arrays = {}
            for k, it in iters.items():
                block = next(it, None)
                if block is None:
                    return
                arrays[k] = block if layout == "batch" else block[0]
            yield Chunk(arrays, origin, layout="batch" if layout == "batch" else "feed")

    def labels(self) -> np.ndarray | None:
        for k in LABEL_KEYS:
            if k in self.arrays:
                return self.arrays[k].read_all()
        return None



class FolderSource(FileSource):
    """A folder of ``.npz`` (keyed by input name) or ``.npy`` (single-input models) files, in name order.  Each
    file is one feed unless the layout says otherwise."""

    default_batch = None

    def __init__(self, path: str | os.PathLike, layout: str = "auto"):
        super().__init__(path)
        self.description = f"folder '{self.path}'"
        self.layout = check_layout(layout)
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in (".npz", ".npy"))
        if not self.files:
            raise CalibrationError(f"folder '{self.path}' holds no .npz or .npy files", code="QC401",
                                   hint="put one feed (or batch) per file, or use an .npz file")
        if self.layout == "batch":
            self.default_batch = 8

    def size_hint(self) -> int | None:
        return len(self.files)

    def keys(self) -> list[str] | None:
        f = self.files[0]
        if f.suffix.lower() == ".npz":
            return [k for k in npz_members(f) if k not in LABEL_KEYS] + \
                [k for k in npz_members(f) if k in LABEL_KEYS]
        return None

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        for f in self.files:
            if f.suffix.lower() == ".npz":
                members = npz_members(f)
                yield Chunk({k: a.read_all() for k, a in members.items() if k not in LABEL_KEYS}, str(f),
                            layout=self.layout)
            else:
                yield Chunk({}, str(f), unnamed=NpyArray(f, None, f"'{f}'").read_all(), layout=self.layout)

    def fingerprint(self) -> str:
        h = hashlib.sha1(self.layout.encode())
        for f in self.files:
            h.update(f.name.encode())
            h.update(_file_hash(f).encode())
        return h.hexdigest()


class NpyFileSource(FileSource):
    """One ``.npy`` file: samples on axis 0 for a single-input model (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.description = f"'{self.path}'"
        self.array = NpyArray(self.path, None, self.description)

    def size_hint(self) -> int | None:
        return self.array.rows_total

    def exact_samples(self, layout: str) -> int | None:
        return self.size_hint()  # always read as a batch

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        for block in self.array.iter_rows(rows):
            yield Chunk({}, str(self.path), unnamed=block, layout="batch")



class ImageFolderSource(FileSource):
    """A folder of images, preprocessed one at a time (single-input models)."""

    def __init__(self, path: str | os.PathLike, preprocess: str | dict | None = None):
        super().__init__(path)
        self.description = f"image folder '{self.path}'"
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXT)
        if not self.files:
            raise CalibrationError(f"folder '{self.path}' holds no images", code="QC401")
        self.pp = parse_preprocess(preprocess)

    def size_hint(self) -> int | None:
        return len(self.files)

    def bind(self, graph: gs.Graph) -> None:
        if len(graph.inputs) != 1:
            raise CalibrationError("image folders can only feed single-input models", code="QC402",
                                   hint="write an .npz keyed by input name instead")

    def exact_samples(self, layout: str) -> int | None:
        return len(self.files)  # one image, one sample

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        for f in self.files:
            yield Chunk({}, str(f), unnamed=load_image(f, self.pp), layout="batch")

    def fingerprint(self) -> str:
        h = hashlib.sha1(repr(sorted(self.pp.items())).encode())
        for f in self.files:
            h.update(f.name.encode())
            h.update(_file_hash(f).encode())
        return h.hexdigest()


def _array(v: Any) -> Any:
    """A torch tensor (on any device) as a numpy array; anything else as it is (numpy arrays, scalars)."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        return v.detach().cpu().numpy()
    return v


def is_torch_data(data: Any) -> bool:
    """A torch DataLoader, Dataset or tensor (told by their classes' modules: torch is never imported here)."""
    return any(c.__module__.startswith("torch") for c in type(data).__mro__ if c is not object)


class IterableSource(DataSource):
    """Feeds from a re-iterable (list, generator function, torch DataLoader or Dataset) or an onnxruntime
    CalibrationDataReader, one feed per item.  An item is a dict keyed by input name, or an array or tensor (a
    single-input model), or a tuple/list matched to the inputs by position: elements past the model's inputs are
    labels (one integer vector is kept for top-1 in reports).  Torch tensors become numpy arrays.  Items of a
    map-style Dataset are single samples, batched here (``per_sample``); a DataLoader's batches are taken as they
    come."""

    default_batch = None

    def __init__(self, data: Any, cache_key: str | None = None):
        self.data = data
        self.cache_key = cache_key
        self.description = "the calibration data"
        self._used = False
        self.names: list[str] = []
        self.extra_dropped = 0  # tuple elements past the model's inputs seen (labels)
        cls = type(data)
        #: a map-style torch Dataset: each item is one sample (no batch axis), so samples are joined into batches
        self.per_sample = is_torch_data(data) and not hasattr(data, "batch_size") and hasattr(cls, "__getitem__")
        if self.per_sample:
            self.default_batch = 8
            self.description = f"the {cls.__name__} dataset"
        elif is_torch_data(data):
            self.description = f"the {cls.__name__}"

    def bind(self, graph: gs.Graph) -> None:
        self.names = [t.name for t in graph.inputs]

    def _feed(self, k: int, item: Any) -> dict[str, Any]:
        """Item ``k`` as arrays keyed by input name."""
        if isinstance(item, dict):
            return {str(n): _array(v) for n, v in item.items()}
        if not isinstance(item, (tuple, list)):
            item = (item,)
        if not self.names:
            raise CalibrationError(f"item {k} of {self.description} is a {type(item).__name__}: items matched by "
                                   "position need the model's inputs", code="QC402")
        if len(item) < len(self.names):
            raise CalibrationError(f"item {k} of {self.description} holds {len(item)} value(s); the model takes "
                                   f"{len(self.names)} input(s) ({', '.join(self.names)})", code="QC402",
                                   hint="yield one value per input (in order), or a dict keyed by input name")
        feed = {n: _array(v) for n, v in zip(self.names, item)}
        rest = [_array(v) for v in item[len(self.names):]]
        if rest:
            self.extra_dropped += 1
            if len(rest) == 1 and isinstance(rest[0], np.ndarray) and rest[0].dtype.kind in "iu" and rest[0].ndim <= 1:
                feed["__labels__"] = rest[0].reshape(-1)
        return feed

    def _items(self) -> Iterator[Any]:
        d = self.data
        if hasattr(d, "get_next"):
            if self._used:
                if hasattr(d, "rewind"):
                    d.rewind()
                else:
                    raise CalibrationError("this data reader was already consumed and has no rewind()",
                                           code="QC401", hint="pass a list of feed dicts or a reader with rewind()")
            self._used = True
            while True:
                item = d.get_next()
                if item is None:
                    return
                yield item
        elif callable(d):
            yield from d()
        else:
            if iter(d) is d:  # a one-shot iterator/generator
                if self._used:
                    raise CalibrationError("the calibration iterator was already consumed", code="QC401",
                                           hint="pass a list, or a function returning a fresh iterator")
                self._used = True
            yield from d

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        for k, item in enumerate(self._items()):
            feed = self._feed(k, item)
            if self.per_sample:  # one sample: a batch axis in front, joined into batches by the caller
                feed = {n: np.asarray(v)[None] for n, v in feed.items() if n not in LABEL_KEYS}
                yield Chunk(feed, f"item {k}", layout="batch" if layout == "auto" else layout)
                continue
            yield Chunk({n: v for n, v in feed.items() if n not in LABEL_KEYS}, f"item {k}",
                        layout="feed" if layout == "auto" else layout)

    def fingerprint(self) -> str | None:
        return self.cache_key

    def size_hint(self) -> int | None:
        return len(self.data) if hasattr(self.data, "__len__") else None


class ArraySource(DataSource):
    """In-memory arrays keyed by input name (samples on axis 0, or the given layout)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.description = "the calibration arrays"

    def keys(self) -> list[str]:
        return list(self.arrays)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.arrays.items() if k not in LABEL_KEYS}

    def size_hint(self) -> int | None:
        rows = [len(v) for k, v in self.arrays.items() if k not in LABEL_KEYS and v.ndim]
        return min(rows) if rows else None

    def exact_samples(self, layout: str) -> int | None:
        return self.size_hint() if layout == "batch" else None

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        keys = [k for k in self.arrays if k not in LABEL_KEYS]
        if layout == "feed":
            yield Chunk({k: self.arrays[k] for k in keys}, layout="feed")
            return
        check_lengths({k: len(self.arrays[k]) if self.arrays[k].ndim else 1 for k in keys}, layout, self.description)
        n = min(len(self.arrays[k]) for k in keys) if keys else 0
        step = rows if layout == "batch" else 1
        for i in range(0, n, step):
            if layout == "batch":
                yield Chunk({k: self.arrays[k][i:i + step] for k in keys}, layout="batch")
            else:
                yield Chunk({k: self.arrays[k][i] for k in keys}, layout="feed")

    def labels(self) -> np.ndarray | None:
        return next((self.arrays[k] for k in LABEL_KEYS if k in self.arrays), None)

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for k in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[k])
            h.update(k.encode())
            h.update(str(a.dtype).encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()


class RandomSource(DataSource):
    """Seeded standard-normal data (only with allow_random_calibration)."""

    def __init__(self, samples: int = 32, seed: int = 0):
        self.samples, self.seed = samples, seed
        self.description = "random calibration data"
        self.specs: list[InputSpec] = []

    def bind(self, graph: gs.Graph) -> None:
        self.specs = model_inputs(graph)
        for s in self.specs:
            if s.shape is None or any(not static_dim(d) for d in s.shape[1:]):
                raise CalibrationError(f"cannot make random data for input '{s.name}' with unknown dims "
                                       f"{list(s.shape) if s.shape else '?'}", code="QC402",
                                       hint="fix them with --input-shape NAME:DIMS")

    def chunks(self, layout: str, rows: int) -> Iterator[Chunk]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.samples):
            arrays = {}
            for s in self.specs:
                shape = (1,) + tuple(int(d) for d in (s.shape or ())[1:])
                arrays[s.name] = rng.standard_normal(shape).astype(s.dtype) if np.issubdtype(s.dtype, np.floating) \
                    else rng.integers(0, 4, shape).astype(s.dtype)
            yield Chunk(arrays, layout="batch")

    def size_hint(self) -> int | None:
        return self.samples

    def fingerprint(self) -> str:
        return f"random:{self.samples}:{self.seed}:" + ",".join(f"{s.name}{s.shape}" for s in self.specs)
