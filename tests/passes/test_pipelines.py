"""The named pipelines (passes/_pipelines.py): what each option adds, and that every module of passes/ has a test
module here (one per pass)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler.pm import PassManager, expand, parse_pipeline, print_pipeline

PASSES_DIR = Path(__file__).resolve().parents[2] / "passes"


def _expand(text: str) -> str:
    return print_pipeline(expand(parse_pipeline(text)))


def test_trt_int8_defaults():
    assert _expand("trt-int8") == ("cleanup,to-fp32,fold-constants,fold-bn,merge-conv1x1,cleanup,"
                                   "smooth-quant{max-samples=16 layers=all min-ratio=8.0 quiet=true},"
                                   "calibrate{target=tensorrt precision=int8 histograms=true keep-outputs=4},"
                                   "insert-qdq{target=tensorrt precision=int8},guard,float-type,cleanup")
    assert _expand("trt-int8{smooth=off guard=off float=fp32}") == (
        "cleanup,to-fp32,fold-constants,fold-bn,merge-conv1x1,cleanup,calibrate{target=tensorrt precision=int8},"
        "insert-qdq{target=tensorrt precision=int8},float-type{type=fp32},cleanup")


@pytest.mark.parametrize("opts, contains, absent", [
    ("cle=true fold-residual=true", ["fold-residual,cle,cleanup,smooth-quant"], []),
    ("smooth=on guard=off", [",smooth-quant,calibrate"], ["guard", "histograms"]),
    ("merge=false", [], ["merge-conv1x1"]),
    ("calib=entropy weights=qdq", ["precision=int8 method=entropy ", "weights=qdq}"], []),
    ("bias-correct=true finetune=adaround target-sqnr=40", ["insert-qdq{target=tensorrt precision=int8},guard,"
                                                            "bias-correct,adaround,mixed-precision{target-sqnr=40.0},"
                                                            "float-type,cleanup"], []),
    ("float=bf16 keep-io=false", ["cleanup,to-fp32,", ",float-type{type=bf16 keep-io=false},cleanup"], []),
    ("guard-sqnr=25 guard-budget=0.05", ["guard{sqnr=25.0 budget=0.05}"], []),
])
def test_options_add_and_remove_passes(opts, contains, absent):
    text = _expand(f"trt-int8{{{opts}}}")
    assert all(c in text for c in contains) and not any(a in text for a in absent)
    PassManager(text).check_facts(set())  # facts in order whatever the options


@pytest.mark.parametrize("name, target, precision", [("trt-fp8", "tensorrt", "fp8"),
                                                     ("ort-int8", "onnxruntime", "int8")])
def test_targets_and_precisions(name, target, precision):
    assert f"insert-qdq{{target={target} precision={precision}}}" in _expand(name)


def test_every_pass_module_has_a_test_module():
    modules = {p.stem.lstrip("_") for p in PASSES_DIR.glob("*.py") if p.stem != "__init__"}
    tests = {p.stem[len("test_"):] for p in Path(__file__).parent.glob("test_*.py")}
    assert modules <= tests, f"passes without a test module: {sorted(modules - tests)}"
