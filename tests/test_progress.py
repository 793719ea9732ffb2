"""Long steps say what they are doing: a bar on a terminal, plain lines in a log (CI, build systems)."""

from __future__ import annotations

import io

from qcompiler import progress as progress_mod
from qcompiler.progress import Progress, mode_for


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_mode_follows_the_terminal_and_the_option():
    assert mode_for(None, io.StringIO()) == "lines"
    assert mode_for(None, _Tty()) == "bar"
    assert mode_for(True, io.StringIO()) == "bar" and mode_for(False, _Tty()) == "off"


def test_lines_at_start_every_interval_and_at_the_end(monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 45.0, 62.0, 70.0])  # start, four updates, close
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    with Progress("calibrate", total=100, unit="samples", mode="lines", stream=out) as p:
        for _ in range(4):
            p.update(25, note="ok")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[calibrate] started: 100 samples"
    assert lines[1].startswith("[calibrate] 50/100 samples (50%), 31.0 s, about 31.0 s left; ok")
    assert lines[2].startswith("[calibrate] 100/100 samples (100%), 62.0 s")
    assert lines[-1].startswith("[calibrate] done: 100 samples in 70.0 s")
    assert len(lines) == 4


def test_off_prints_nothing():
    out = io.StringIO()
    with Progress("x", total=3, mode="off", stream=out) as p:
        p.update(3)
    assert out.getvalue() == ""


def test_compile_in_a_log_reports_calibration_and_bias_correction(zoo, tmp_path, capsys, monkeypatch):
    """stderr is not a terminal under pytest: the CLI prints start and end lines of each long step."""
    from qcompiler.cli import main

    monkeypatch.setattr(progress_mod, "LINE_INTERVAL", 0.0)
    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 32))
    assert main(["compile", str(src), "-o", str(tmp_path / "q.onnx"), "--pipeline", "trt-int8{bias-correct=true}",
                 "--calib-data", calib]) == 0
    err = capsys.readouterr().err
    assert "[calibrate] started: 32 samples" in err and "[calibrate] done: 32 samples" in err
    assert "[bias-correct] started:" in err and "[bias-correct] done:" in err
    assert main(["compile", str(src), "-o", str(tmp_path / "q2.onnx"), "--pipeline", "trt-int8", "--calib-data",
                 calib, "--progress", "off"]) == 0
    assert "[calibrate]" not in capsys.readouterr().err
    assert main(["compile", str(src), "-o", str(tmp_path / "q3.onnx"), "--pipeline", "trt-int8", "--calib-data",
                 calib, "-q"]) == 0
    assert capsys.readouterr().err == ""  # -q: errors only
