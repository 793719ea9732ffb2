"""Calibration data: files, folders, images, Python iterables and onnxruntime data readers.

Every source yields *chunks* (dicts of arrays whose axis 0 counts samples); :func:`iter_batches`
checks them against the model and re-slices them into the batches the model accepts (a fixed
batch dim B gives exactly B samples per run; a symbolic one gives ``batch_size``).  Nothing keeps
more than one chunk plus one batch in memory: ``.npz`` members are streamed row by row.

Accepted forms (``--calib-data PATH`` or the Python API):

* ``calib.npz``: one array per model input, keyed by input name, samples on axis 0;
* a folder of ``.npz`` (keyed by input name) or ``.npy`` (single-input models) files, one sample or
  one batch each, read in sorted file-name order;
* a folder of images (``.png``/``.jpg``/``.jpeg``/``.bmp``) with a preprocessing spec, e.g.
  ``resize=256 crop=224 mean=0.485,0.456,0.406 std=0.229,0.224,0.225 layout=NCHW color=RGB``
  (needs Pillow);
* any iterable of feed dicts, or an object with ``get_next()`` (onnxruntime's
  ``CalibrationDataReader``).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import CalibrationError, DiagnosticEngine

LABEL_KEYS = ("__labels__", "labels", "__label__")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, strings (symbolic) or None


def model_inputs(graph: gs.Graph) -> list[InputSpec]:
    out = []
    for t in graph.inputs:
        dt = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
        out.append(InputSpec(t.name, dt, tuple(t.shape) if t.shape is not None else None))
    return out


def static_dim(d) -> bool:
    """A fixed (known, positive) dimension, not a symbolic or unknown one."""
    return isinstance(d, (int, np.integer)) and d > 0


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class _NpyStream:
    """Sequential row reader of one .npy member of an .npz (or a .npy file)."""

    def __init__(self, opener: Callable[[], Any], label: str):
        self.label = label
        self._opener = opener
        f = opener()
        try:
            shape, fortran, dtype = _read_header(f)
        except Exception as exc:
            raise CalibrationError(f"{label} is not a valid .npy array ({exc})", code="QC402") from None
        finally:
            f.close()
        if dtype.hasobject:
            raise CalibrationError(f"{label} holds Python objects, not numbers", code="QC402")
        self.shape, self.fortran, self.dtype = tuple(shape), fortran, dtype

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        if self.fortran or len(self.shape) == 0:
            f = self._opener()
            try:
                arr = np.lib.format.read_array(f)
            finally:
                f.close()
            yield arr
            return
        f = self._opener()
        try:
            _read_header(f)
            row_items = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
            row_bytes = row_items * self.dtype.itemsize
            left = self.shape[0]
            while left > 0:
                n = min(rows, left)
                buf = f.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise CalibrationError(f"{self.label} is truncated", code="QC402")
                yield np.frombuffer(buf, dtype=self.dtype).reshape((n,) + self.shape[1:])
                left -= n
        finally:
            f.close()


class DataSource:
    """Base class.  Subclasses implement ``chunks()``; ``fingerprint()`` enables caching."""

    description = "calibration data"
    default_batch: int | None = 8

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        return None

    def location(self) -> str | None:
        """The file or folder the data is read from (None for in-memory data)."""
        path = getattr(self, "path", None)
        return str(path) if path is not None else None

    def keys(self) -> list[str] | None:
        return None

    def check_signature(self, graph: gs.Graph) -> None:
        """Cheap check of names (and whatever is known without reading data) before heavy work."""
        keys = self.keys()
        if keys is None:
            return
        _check_names(model_inputs(graph), keys, self.description)


def _check_names(specs: list[InputSpec], keys: list[str], where: str) -> None:
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


class _ZipMember:
    """A readable member of a zip file that closes the archive with it."""

    def __init__(self, path: Path, member: str):
        self._zip = zipfile.ZipFile(path)
        self._f = self._zip.open(member)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def seek(self, *args):
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        self._zip.close()


class NpzSource(DataSource):
    def __init__(self, path: str | os.PathLike, chunk_rows: int = 64):
        self.path = Path(path)
        self.description = f"'{self.path}'"
        self.chunk_rows = chunk_rows
        try:
            with zipfile.ZipFile(self.path) as z:
                members = [m for m in z.namelist() if m.endswith(".npy")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise CalibrationError(f"cannot read calibration data '{self.path}': {exc}", code="QC401",
                                   hint="save it with numpy.savez(path, input_name=array)") from None
        if not members:
            raise CalibrationError(f"'{self.path}' holds no arrays", code="QC401")
        self.streams = {m[:-4]: _NpyStream(lambda m=m: _ZipMember(self.path, m), f"'{self.path}:{m[:-4]}'")
                        for m in members}

    def keys(self) -> list[str]:
        return list(self.streams)

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        keys = [k for k in self.streams if k not in LABEL_KEYS]
        lens = {k: (self.streams[k].shape[0] if self.streams[k].shape else 1) for k in keys}
        if len(set(lens.values())) > 1:
            raise CalibrationError(f"the arrays in {self.description} have different sample counts {lens}",
                                   code="QC402", hint="every input needs the same number of samples on axis 0")
        iters = {k: self.streams[k].chunks(self.chunk_rows) for k in keys}
        while True:
            chunk = {}
            for k, it in iters.items():
                try:
                    chunk[k] = next(it)
                except StopIteration:
                    return
            yield chunk

    def labels(self) -> np.ndarray | None:
        for k in LABEL_KEYS:
            if k in self.streams:
                return np.concatenate(list(self.streams[k].chunks(1 << 20)))
        return None

    def fingerprint(self) -> str:
        return _file_hash(self.path)


def _file_hash(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FolderSource(DataSource):
    def __init__(self, path: str | os.PathLike, input_names: list[str] | None = None):
        self.path = Path(path)
        self.description = f"folder '{self.path}'"
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in (".npz", ".npy"))
        if not self.files:
            raise CalibrationError(f"folder '{self.path}' holds no .npz or .npy files", code="QC401",
                                   hint="put one sample (or batch) per file, or use an .npz file")

    def keys(self) -> list[str] | None:
        f = self.files[0]
        if f.suffix.lower() == ".npz":
            with np.load(f) as z:
                return list(z.files)
        return None

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        for f in self.files:
            if f.suffix.lower() == ".npz":
                with np.load(f) as z:
                    yield {k: z[k] for k in z.files if k not in LABEL_KEYS} | {"__file__": str(f)}
            else:
                yield {"__npy__": np.load(f), "__file__": str(f)}

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for f in self.files:
            h.update(f.name.encode())
            h.update(_file_hash(f).encode())
        return h.hexdigest()


def parse_preprocess(spec: str | dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {"resize": None, "crop": None, "mean": None, "std": None, "layout": "NCHW",
                           "color": "RGB", "scale": 255.0, "dtype": "float32"}
    if spec is None:
        return out
    items = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in spec.split())
    for key, value in items:
        key = key.strip().lower().replace("-", "_")
        if key not in out:
            raise CalibrationError(f"unknown preprocessing key '{key}'", code="QC402",
                                   hint="keys: resize, crop, mean, std, layout (NCHW|NHWC), color (RGB|BGR|L), "
                                        "scale, dtype")
        if key in ("mean", "std"):
            value = [float(v) for v in str(value).split(",")] if isinstance(value, str) else list(value)
        elif key in ("resize", "crop"):
            value = [int(v) for v in str(value).replace("x", ",").split(",")]
        elif key == "scale":
            value = float(value)
        out[key] = value
    if out["layout"] not in ("NCHW", "NHWC"):
        raise CalibrationError(f"layout must be NCHW or NHWC, not '{out['layout']}'", code="QC402")
    return out


class ImageFolderSource(DataSource):
    def __init__(self, path: str | os.PathLike, preprocess: str | dict | None = None):
        self.path = Path(path)
        self.description = f"image folder '{self.path}'"
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXT)
        if not self.files:
            raise CalibrationError(f"folder '{self.path}' holds no images", code="QC401")
        self.pp = parse_preprocess(preprocess)
        self.input_name: str | None = None

    def bind(self, graph: gs.Graph) -> None:
        specs = model_inputs(graph)
        if len(specs) != 1:
            raise CalibrationError("image folders can only feed single-input models", code="QC402",
                                   hint="write an .npz keyed by input name instead")
        self.input_name = specs[0].name

    def check_signature(self, graph: gs.Graph) -> None:
        self.bind(graph)

    def _load(self, f: Path) -> np.ndarray:
        try:
            from PIL import Image
        except ImportError:
            raise CalibrationError("reading images needs Pillow", code="QC401",
                                   hint="pip install pillow, or convert the images to an .npz") from None
        pp = self.pp
        img = Image.open(f)
        img = img.convert("L" if pp["color"] == "L" else "RGB")
        if pp["resize"]:
            r = pp["resize"]
            if len(r) == 1:  # shorter side
                w, h = img.size
                s = r[0] / min(w, h)
                img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            else:
                img = img.resize((r[1], r[0]), Image.BILINEAR)
        if pp["crop"]:
            c = pp["crop"]
            ch, cw = (c[0], c[0]) if len(c) == 1 else (c[0], c[1])
            w, h = img.size
            left, top = (w - cw) // 2, (h - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        a = np.asarray(img, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, :, None]
        if pp["color"] == "BGR":
            a = a[:, :, ::-1]
        a = a / pp["scale"]
        if pp["mean"] is not None:
            a = a - np.asarray(pp["mean"], np.float32)
        if pp["std"] is not None:
            a = a / np.asarray(pp["std"], np.float32)
        if pp["layout"] == "NCHW":
            a = a.transpose(2, 0, 1)
        return np.ascontiguousarray(a[None].astype(pp["dtype"]))

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        for f in self.files:
            yield {self.input_name or "__image__": self._load(f), "__file__": str(f)}

    def fingerprint(self) -> str:
        h = hashlib.sha1(repr(sorted(self.pp.items())).encode())
        for f in self.files:
            h.update(f.name.encode())
            h.update(_file_hash(f).encode())
        return h.hexdigest()


class IterableSource(DataSource):
    """Feed dicts from a re-iterable (list, generator function) or an ORT CalibrationDataReader."""

    default_batch = None

    def __init__(self, data: Any, cache_key: str | None = None):
        self.data = data
        self.cache_key = cache_key
        self.description = "the calibration data"
        self._used = False

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
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
                yield dict(item)
            return
        if callable(d):
            yield from (dict(x) for x in d())
            return
        if iter(d) is d:  # a one-shot iterator/generator
            if self._used:
                raise CalibrationError("the calibration iterator was already consumed", code="QC401",
                                       hint="pass a list, or a function returning a fresh iterator")
            self._used = True
        for x in d:
            yield dict(x)

    def fingerprint(self) -> str | None:
        return self.cache_key


class ArraySource(DataSource):
    """In-memory arrays keyed by input name (samples on axis 0)."""

    def __init__(self, arrays: dict[str, np.ndarray], chunk_rows: int = 64):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.chunk_rows = chunk_rows
        self.description = "the calibration arrays"

    def keys(self) -> list[str] | None:
        return None if "__npy__" in self.arrays else list(self.arrays)

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        keys = [k for k in self.arrays if k not in LABEL_KEYS]
        n = min(len(self.arrays[k]) for k in keys) if keys else 0
        for i in range(0, n, self.chunk_rows):
            yield {k: self.arrays[k][i:i + self.chunk_rows] for k in keys}

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

    def check_signature(self, graph: gs.Graph) -> None:
        self.specs = model_inputs(graph)
        for s in self.specs:
            if s.shape is None or any(not static_dim(d) for d in s.shape[1:]):
                raise CalibrationError(f"cannot make random data for input '{s.name}' with unknown dims "
                                       f"{list(s.shape) if s.shape else '?'}", code="QC402",
                                       hint="fix them with --input-shape NAME:DIMS")

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        for i in range(self.samples):
            yield {s.name: (rng.standard_normal((1,) + tuple(int(d) for d in s.shape[1:]))
                            .astype(s.dtype) if np.issubdtype(s.dtype, np.floating)
                            else rng.integers(0, 4, (1,) + tuple(int(d) for d in s.shape[1:])).astype(s.dtype))
                   for s in self.specs}

    def fingerprint(self) -> str:
        return f"random:{self.samples}:{self.seed}:" + ",".join(f"{s.name}{s.shape}" for s in self.specs)


@dataclass
class DataOptions:
    batch_size: int | None = None
    max_samples: int | None = None
    skip_bad: bool = False
    preprocess: str | None = None


class CalibData:
    """A data source plus how to batch it (what ``ctx.calib_data`` holds)."""

    def __init__(self, source: DataSource, options: DataOptions | None = None):
        self.source = source
        self.options = options or DataOptions()

    # passthroughs
    def fingerprint(self) -> str | None:
        fp = self.source.fingerprint()
        if fp is None:
            return None
        o = self.options
        return hashlib.sha1(f"{fp}|{o.max_samples}|{o.skip_bad}".encode()).hexdigest()

    def check_signature(self, graph: gs.Graph) -> None:
        self.source.check_signature(graph)

    def location(self) -> str | None:
        return self.source.location()

    def labels(self) -> np.ndarray | None:
        fn = getattr(self.source, "labels", None)
        lab = fn() if fn else None
        if lab is not None and self.options.max_samples:
            lab = lab[: self.options.max_samples]
        return lab

    def batches(self, graph: gs.Graph, diagnostics: DiagnosticEngine | None = None,
                batch_size: int | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        return iter_batches(self, graph, diagnostics, batch_size)


def as_data_source(data: Any, *, batch_size: int | None = None, max_samples: int | None = None,
                   skip_bad: bool = False, preprocess: str | None = None, cache_key: str | None = None) -> CalibData:
    """Wrap a path, arrays, iterable or data reader into a CalibData."""
    opts = DataOptions(batch_size, max_samples, skip_bad, preprocess)
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
            return CalibData(FolderSource(p), opts)
        if p.suffix.lower() == ".npy":
            return CalibData(ArraySource({"__npy__": np.load(p, mmap_mode="r")}), opts)
        if p.stat().st_size == 0:
            raise CalibrationError(f"calibration data '{p}' is empty", code="QC401")
        return CalibData(NpzSource(p), opts)
    if isinstance(data, dict):
        return CalibData(ArraySource(data), opts)
    return CalibData(IterableSource(data, cache_key), opts)


# --------------------------------------------------------------------------------------------
# checking and batching
# --------------------------------------------------------------------------------------------


def _fmt_shape(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


class _Checker:
    def __init__(self, specs: list[InputSpec], where: str):
        self.specs = {s.name: s for s in specs}
        self.where = where
        self.has_batch_axis: dict[str, bool] = {}

    def normalise(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map keys, check rank/dims/dtype, add a batch axis where the data has none."""
        origin = chunk.pop("__file__", None)
        where = f"'{origin}'" if origin else self.where
        if "__npy__" in chunk or "__image__" in chunk:
            if len(self.specs) != 1:
                raise CalibrationError(f"{where}: a bare array can only feed a single-input model "
                                       f"(inputs: {list(self.specs)})", code="QC402",
                                       hint="use .npz files keyed by input name")
            arr = chunk.pop("__npy__", None)
            if arr is None:
                arr = chunk.pop("__image__")
            chunk = {next(iter(self.specs)): arr}
        for k in LABEL_KEYS:
            chunk.pop(k, None)
        _check_names(list(self.specs.values()), list(chunk), where)
        out = {}
        n = None
        for name, arr in chunk.items():
            spec = self.specs[name]
            arr = np.asarray(arr)
            if spec.shape is not None:
                r = len(spec.shape)
                if arr.ndim == r:
                    body = arr.shape[1:] if r else ()
                    mshape = spec.shape[1:] if r else ()
                elif arr.ndim == r - 1 and r > 0 and all(
                        not static_dim(dm) or dm == dd for dm, dd in zip(spec.shape[1:], arr.shape)):
                    arr = arr[None]  # a single sample without its batch axis
                    body, mshape = arr.shape[1:], spec.shape[1:]
                else:
                    raise CalibrationError(
                        f"{where}: input '{name}' has rank {arr.ndim} (shape {list(arr.shape)}); the model "
                        f"expects rank {r} {_fmt_shape(spec.shape)}", code="QC402",
                        hint="samples go on axis 0; a single sample may omit the batch axis")
                for i, (dm, dd) in enumerate(zip(mshape, body)):
                    if static_dim(dm) and dm != dd:
                        raise CalibrationError(
                            f"{where}: input '{name}' has dim {i + 1} = {dd}; the model fixes it to {dm} "
                            f"(data {list(arr.shape)} vs model {_fmt_shape(spec.shape)})", code="QC402",
                            hint="resize the data, or pick the matching model")
            if arr.dtype != spec.dtype:
                if arr.dtype == np.float64 and spec.dtype == np.float32:
                    arr = arr.astype(np.float32)
                elif arr.dtype.kind == spec.dtype.kind == "i" and np.can_cast(arr.dtype, spec.dtype):
                    arr = arr.astype(spec.dtype)
                else:
                    raise CalibrationError(f"{where}: input '{name}' is {arr.dtype}; the model expects "
                                           f"{spec.dtype}", code="QC402",
                                           hint=f"convert the data with .astype(numpy.{spec.dtype})")
            if n is None:
                n = arr.shape[0] if arr.ndim else 1
            elif arr.ndim and arr.shape[0] != n:
                raise CalibrationError(f"{where}: inputs have different sample counts", code="QC402")
            out[name] = arr
        return out


def iter_batches(data: CalibData, graph: gs.Graph, diagnostics: DiagnosticEngine | None = None,
                 batch_size: int | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Checked, finite batches of the size the model accepts: (index of the first sample, feeds)."""
    specs = model_inputs(graph)
    if isinstance(data.source, ImageFolderSource) and data.source.input_name is None:
        data.source.bind(graph)
    if isinstance(data.source, RandomSource) and not data.source.specs:
        data.source.check_signature(graph)
    checker = _Checker(specs, data.source.description)
    fixed = None
    for s in specs:
        if s.shape and static_dim(s.shape[0]):
            fixed = int(s.shape[0]) if fixed is None else fixed
    want = fixed or batch_size or data.options.batch_size or data.source.default_batch
    limit = data.options.max_samples
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

    for raw in data.source.chunks():
        ch = checker.normalise(dict(raw))
        n = next(iter(ch.values())).shape[0] if ch else 0
        first = sample
        sample += n
        # NaN / Inf: name the input and the sample
        for name, arr in ch.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(axis=1))
                if not data.options.skip_bad:
                    raise CalibrationError(f"{data.source.description}: input '{name}' has NaN or Inf in sample "
                                           f"{first + int(bad[0])}" + (f" (and {len(bad) - 1} more samples)"
                                                                       if len(bad) > 1 else ""), code="QC403",
                                           hint="clean the data, or pass --skip-bad-samples to drop such samples")
                keep = np.ones(n, bool)
                keep[bad] = False
                skipped += int((~keep).sum())
                if diagnostics is not None:
                    diagnostics.warning("QC403", f"skipped {int((~keep).sum())} sample(s) with NaN/Inf in input "
                                                 f"'{name}' (first: sample {first + int(bad[0])})")
                ch = {k: v[keep] for k, v in ch.items()}
                n = int(keep.sum())
        if limit is not None:
            room = limit - emitted - pending_n
            if room <= 0:
                break
            if n > room:
                ch = {k: v[:room] for k, v in ch.items()}
                n = room
        if n == 0:
            continue
        if want is None:  # iterables: pass batches through as given
            yield emitted, ch
            emitted += n
            continue
        pending.append(ch)
        pending_n += n
        while pending_n >= want:
            batch = take(want)
            yield emitted, batch
            emitted += want
    if want is not None and pending_n:
        if fixed is not None:
            if diagnostics is not None:
                diagnostics.remark("QC401", f"dropped the last {pending_n} sample(s): the model's batch dim is fixed "
                                            f"to {fixed}")
        else:
            k = pending_n
            yield emitted, take(k)
            emitted += k
    if emitted == 0:
        raise CalibrationError(f"{data.source.description} holds no usable samples" +
                               (f" ({skipped} skipped for NaN/Inf)" if skipped else ""), code="QC401",
                               hint="give at least one sample per model input")
