"""qcompiler under make (docs/build-systems.md): a second make after no change runs nothing, touching the
calibration data runs the rule once (the output keeps its bytes; its time stamp moves past the touched file),
new data rebuilds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from .builders import G

MAKEFILE = """\
QC := {python} -m qcompiler
out.onnx: model.onnx calib.npz
\t@echo RULE
\t$(QC) compile model.onnx --pipeline trt-int8 --calib-data calib.npz -o out.onnx --depfile out.d -q
-include out.d
"""


def _make(folder) -> str:
    r = subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _later(path, seconds: float) -> None:
    """Set ``path``'s mtime ``seconds`` after now (a touch that make cannot miss on coarse clocks)."""
    t = os.stat(path).st_mtime + seconds
    os.utime(path, (t, t))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_runs_a_compile_only_when_something_changed(tmp_path):
    b = G(17)
    b.output(b.conv(b.relu(b.conv(b.input("x", ["N", 3, 8, 8]), 3, 16)), 16, 32))
    onnx.save(b.model(), tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    (tmp_path / "Makefile").write_text(MAKEFILE.format(python=sys.executable))
    out = tmp_path / "out.onnx"

    assert "RULE" in _make(tmp_path)
    first = out.read_bytes()
    assert "model.onnx" in (tmp_path / "out.d").read_text()
    assert "RULE" not in _make(tmp_path)  # nothing changed: nothing runs

    _later(tmp_path / "calib.npz", 5)  # touched, same content: the rule runs once, the output is the same file
    assert "RULE" in _make(tmp_path)
    assert out.read_bytes() == first
    assert os.stat(out).st_mtime >= os.stat(tmp_path / "calib.npz").st_mtime
    assert "RULE" not in _make(tmp_path)

    np.savez(tmp_path / "calib.npz", x=3 * rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    _later(tmp_path / "calib.npz", 10)
    assert "RULE" in _make(tmp_path)
    assert out.read_bytes() != first  # other data, other scales
