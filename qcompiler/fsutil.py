"""Small file helpers shared by everything that writes or reads user-facing files.

Every output qcompiler writes (models go through :mod:`qcompiler.ir.io`, which streams
external data; everything else comes here) is written to a temporary file in the target
folder and renamed over the destination, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=".qc-", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def read_structured(path: str | os.PathLike) -> Any:
    """Parse a ``.json`` file as JSON and anything else as YAML (a superset of JSON).

    Raises ``ValueError`` with the parser's message; callers wrap it in their own
    diagnostic (recipe, pipeline) naming the file.
    """
    p = Path(path)
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(str(exc)) from None


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
