"""Calibration statistics: the container passes read, and its cache file (JSON or NPZ).

The cache is keyed by a hash of (the graph as it is when calibrated, the data, the observer
configuration of every tensor).  A matching cache skips the run; a stale one is ignored with a
QC404 remark (and overwritten when the run finishes).  Ranges are recomputed from the cached state,
so changing only the range method (e.g. percentile -> entropy of a ``histogram`` observer) reuses it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_write
from ..pm.state import State
from .observers import TensorStats, compute_range

CACHE_VERSION = 1


@dataclass
class CalibrationStats(State):
    """Activation statistics of the graph as it is now, collected by calibrate (one observer state per tensor)."""

    fact = "calibrated"
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    key: str = ""
    samples: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    #: (feeds, model outputs) of the first calibration batches, when calibrate kept them: the FP32 reference the
    #: output guard compares with, from the calibration run itself.  In memory only (never cached or saved)
    outputs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=list, repr=False)

    def range(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        st = self.tensors[name]
        if st.range is None:
            st.range = compute_range(st)
        return st.range

    def finalize(self) -> None:
        for st in self.tensors.values():
            st.range = None if st.non_finite is not None or st.min is None else compute_range(st)

    def non_finite(self) -> dict[str, int]:
        """Tensors that took NaN or +-inf (an additive attention mask): tensor -> first sample it happened on."""
        return {n: st.non_finite for n, st in self.tensors.items() if st.non_finite is not None}

    def unseen(self) -> list[str]:
        """Tensors the calibration data never computed (inside an If branch no sample took)."""
        return sorted(n for n, st in self.tensors.items() if st.non_finite is None and st.min is None)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def to_dict(self) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "key": self.key, "samples": self.samples, "meta": self.meta,
                "tensors": [st.to_dict() for st in self.tensors.values()]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "CalibrationStats":
        if d.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {d.get('version')} != {CACHE_VERSION}")
        tensors = {t["name"]: TensorStats.from_dict(t) for t in d["tensors"]}
        return CalibrationStats(tensors, d.get("key", ""), int(d.get("samples", 0)), d.get("meta", {}))

    # -- reproducers (pm.state) ----------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        """As a State: ``stats.json`` under ``directory``.  (``save_cache`` writes the cache file.)"""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.save_cache(d / "stats.json")
        return {"file": "stats.json"}

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "CalibrationStats":
        cs = cls.load_cache(Path(directory) / meta["file"])
        cs.finalize()
        return cs

    # -- cache files -------------------------------------------------------------------------
    def save_cache(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        text = json.dumps(self.to_dict(), sort_keys=True)
        if p.suffix.lower() == ".npz":
            buf = io.BytesIO()
            np.savez_compressed(buf, stats=np.frombuffer(text.encode(), dtype=np.uint8))
            payload = buf.getvalue()
        else:
            payload = (text + "\n").encode()
        atomic_write(p, payload)
        return p

    @staticmethod
    def load_cache(path: str | os.PathLike) -> "CalibrationStats":
        p = Path(path)
        if p.suffix.lower() == ".npz":
            with np.load(p) as z:
                text = z["stats"].tobytes().decode()
        else:
            text = p.read_text()
        return CalibrationStats.from_dict(json.loads(text))


def cache_key(graph_fingerprint: str, data_fingerprint: str, configs: dict[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "graph": graph_fingerprint, "data": data_fingerprint,
                       "observers": configs}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()
