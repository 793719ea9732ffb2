"""qcompiler report and compile --report: per-layer SQNR, sensitivity, plots."""

from __future__ import annotations

import json


from qcompiler.api import compile_model

def test_report_files(zoo, tmp_path):
    from qcompiler.cli import main

    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 64))
    q = tmp_path / "q.onnx"
    compile_model(str(src), str(q), "trt-int8", calib_data=calib)
    assert main(["report", str(src), str(q), "--calib-data", calib, "-o", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["output_sqnr_db"] > 25 and len(rep["layers"]) >= 8
    assert all("sensitivity_sqnr_db" in r for r in rep["layers"])
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64" in html and "Layers (worst first)" in html
    assert (tmp_path / "rep" / "layers.png").stat().st_size > 1000
    assert "recipe" in rep

def test_compile_report_flag(zoo, tmp_path, capsys):
    from qcompiler.cli import main

    src, calib = zoo.onnx_path("resnet"), str(zoo.calibration_npz("resnet", 32))
    assert main(["compile", str(src), "-o", str(tmp_path / "q.onnx"), "--pipeline", "trt-int8", "--calib-data", calib,
                 "--report", "-q"]) == 0
    out = capsys.readouterr().out
    assert "SQNR" in out and "dB" in out


def test_the_guard_decisions_are_visible(tmp_path, capsys):
    """compile prints a guard line (details with -v); the recipe written beside the model records them;
    `qcompiler report` lists them."""
    from qcompiler.cli import main

    from .passes.test_guard import _tailed

    src, calib, _ = _tailed(tmp_path)
    q = tmp_path / "q.onnx"
    assert main(["compile", str(src), "-o", str(q), "--pipeline", "trt-int8{calib=entropy smooth=off}",
                 "--calib-data", str(calib), "-v"]) == 0
    err = capsys.readouterr().err
    assert "guard: worst output part" in err and "remark: QC604: [guard]" in err and "range" in err
    recipe = json.loads((tmp_path / "q.onnx.recipe.json").read_text())
    assert recipe["guard"]["decisions"]
    assert main(["report", str(src), str(q), "--calib-data", str(calib), "-o", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "The accuracy guard" in md and recipe["guard"]["decisions"][0]["tensors"][0] in md
