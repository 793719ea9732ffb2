""".npy arrays in a file or an .npz member, read by rows without loading the rest.

* A ``.npy`` file, or an ``.npz`` member stored without compression (``numpy.savez``), is read at the
  rows' file offset: reading rows costs only those rows.  (Not memory-mapped: the pages of a mapping that
  calibration walks through stay in the process's resident set until it is unmapped, so peak RSS would grow
  with the file: +63 % at 256 vs 32 samples of a 224x224 model, docs/benchmarks.md.)
* A compressed member (``numpy.savez_compressed``) is decompressed as a stream, rows in order.
* A Fortran-ordered or 0-d array cannot be read by rows and is loaded whole (numpy writes C order by
  default, so this is rare; the array is one feed's worth at most in practice).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from ..diagnostics import CalibrationError


def _read_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class NpyArray:
    """One array: its shape and dtype from the header, its rows on demand."""

    def __init__(self, path: Path, member: str | None, label: str):
        self.path, self.member, self.label = Path(path), member, label
        self._data_offset: int | None = None
        try:
            with self._open() as f:
                self.shape, self.fortran, self.dtype = _read_header(f)
                header_end = f.tell()
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f"{label} is not a valid .npy array ({exc})", code="QC402") from None
        self.shape = tuple(int(d) for d in self.shape)
        if self.dtype.hasobject:
            raise CalibrationError(f"{label} holds Python objects, not numbers", code="QC402")
        if not self.fortran and self.shape:
            if member is None:
                self._data_offset = header_end
            else:
                self._data_offset = self._stored_member_offset(header_end)

    def _open(self) -> Any:
        if self.member is None:
            return open(self.path, "rb")
        z = zipfile.ZipFile(self.path)
        try:
            return _ZipMember(z, z.open(self.member))
        except Exception:
            z.close()
            raise

    def _stored_member_offset(self, header_end: int) -> int | None:
        """File offset of the array data when the member is stored uncompressed (memory-mappable), else None."""
        with zipfile.ZipFile(self.path) as z:
            info = z.getinfo(self.member)  # type: ignore[arg-type]
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                return None
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    return None
                name_len, extra_len = struct.unpack("<HH", local[26:30])
            return info.header_offset + 30 + name_len + extra_len + header_end

    @property
    def rows_total(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def seekable(self) -> bool:
        """The data sits uncompressed at a known file offset (rows can be read anywhere)."""
        return self._data_offset is not None

    def _row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def _read_rows(self, f: BinaryIO, start: int, k: int) -> np.ndarray:
        assert self._data_offset is not None
        out = np.empty((k,) + self.shape[1:], dtype=self.dtype)
        f.seek(self._data_offset + start * self._row_bytes())
        if f.readinto(out.data.cast("B")) != out.nbytes:  # type: ignore[attr-defined]
            raise CalibrationError(f"{self.label} is truncated", code="QC402")
        return out

    def read_all(self) -> np.ndarray:
        if self.seekable:
            with open(self.path, "rb") as f:
                return self._read_rows(f, 0, self.shape[0])
        with self._open() as f:
            return np.lib.format.read_array(f)

    def iter_rows(self, step: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of ``step`` rows (the last may be shorter), in order."""
        step = max(1, int(step))
        if not self.shape or self.fortran:
            yield self.read_all()
            return
        n = self.shape[0]
        if self.seekable:
            with open(self.path, "rb") as f:
                for start in range(0, n, step):
                    yield self._read_rows(f, start, min(step, n - start))
            return
        row_bytes = self._row_bytes()
        with self._open() as f:
            _read_header(f)
            left = n
            while left > 0:
                k = min(step, left)
                buf = f.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise CalibrationError(f"{self.label} is truncated", code="QC402")
                yield np.frombuffer(buf, dtype=self.dtype).reshape((k,) + self.shape[1:])
                left -= k


class _ZipMember:
    """A readable zip member that closes its archive with it."""

    def __init__(self, z: zipfile.ZipFile, f: Any):
        self._zip, self._f = z, f

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def readinto(self, b: Any) -> int:
        return self._f.readinto(b)

    def seek(self, *args: Any) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        self._zip.close()

    def __enter__(self) -> "_ZipMember":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def npz_members(path: Path) -> dict[str, NpyArray]:
    """The arrays of an .npz file by name (headers only)."""
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise CalibrationError(f"cannot read calibration data '{path}': {exc}", code="QC401",
                               hint="save it with numpy.savez(path, input_name=array)") from None
    if not members:
        raise CalibrationError(f"'{path}' holds no arrays", code="QC401")
    return {m[:-4]: NpyArray(path, m, f"'{path}:{m[:-4]}'") for m in members}
