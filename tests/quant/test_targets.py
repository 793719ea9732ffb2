"""Targets are data: discovery, aliases, the small-layer rule (P9) as numbers, and a third target added as one file."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import qcompiler.quant.targets as targets_pkg
from qcompiler.api import compile_graph
from qcompiler.calib.data import as_data_source
from qcompiler.diagnostics import RecipeError
from qcompiler.ir import load_model
from qcompiler.ir.layers import LayerGeometry, LayerKind
from qcompiler.quant.recipe import default_recipe, from_data
from qcompiler.quant.session import default_observer
from qcompiler.quant.state import QuantizationRecord
from qcompiler.quant.targets import SmallLayerRules, all_targets, get_target


def test_discovery_and_aliases():
    names = set(all_targets())
    assert {"tensorrt", "onnxruntime"} <= names
    assert get_target("trt").name == "tensorrt" and get_target("ORT").name == "onnxruntime"
    with pytest.raises(RecipeError, match="unknown target 'dla'") as exc:
        get_target("dla")
    assert "tensorrt" in exc.value.diagnostic.hint


def test_defaults_come_from_the_target():
    r = default_recipe("onnxruntime", "int8")
    assert (r.global_rule.activation.dtype, r.global_rule.activation.qscheme) == ("u8", "per_tensor_affine")
    assert default_observer(default_recipe("tensorrt", "int8")) == "percentile"
    assert default_observer(default_recipe("tensorrt", "fp8")) == "min_max"
    with pytest.raises(RecipeError, match="has no int4 quantization"):
        default_recipe("tensorrt", "int4")
    with pytest.raises(RecipeError, match="precision must be one of int8, fp8"):
        from_data({"target": "trt", "precision": "int16"})


@pytest.mark.parametrize("kind, shape, group, first, fp8, floated", [
    (LayerKind.GEMM, (8, 32), 1, False, False, True),          # K = 8 < 16
    (LayerKind.MATMUL, (32, 32), 1, False, False, False),
    (LayerKind.MATMUL, (4, 32, 32), 1, False, False, False),   # batched weights: no rule
    (LayerKind.CONV, (16, 3, 3, 3), 1, True, False, False),     # first layer, Cout multiple of 8, square
    (LayerKind.CONV, (16, 3, 3, 3), 1, False, False, False),    # max(Cin, Cout) >= 16
    (LayerKind.CONV, (12, 3, 3, 3), 1, True, False, True),      # neither multiple of 8
    (LayerKind.CONV, (8, 4, 3, 1), 1, True, False, True),       # not square
    (LayerKind.CONV, (8, 1, 3, 3), 8, False, False, False),     # depthwise 8, kernel >= 3
    (LayerKind.CONV, (8, 1, 1, 1), 8, False, False, True),      # depthwise 1x1
    (LayerKind.CONV, (32, 32, 7, 7), 1, False, True, True),     # fp8: kernel area 49 > 32
    (LayerKind.CONV, (16, 32, 3, 3), 1, False, True, True),     # fp8: 16 channels
    (LayerKind.CONV, (32, 1, 3, 3), 32, False, True, True),     # fp8 depthwise
    (LayerKind.CONV_TRANSPOSE, (32, 8, 4, 4), 4, False, False, False),  # Cout = 32
])
def test_small_layer_rules_are_numbers(kind, shape, group, first, fp8, floated):
    geo = LayerGeometry(kind, shape, group)
    why = get_target("tensorrt").small_layer_reason(geo, first=first, fp8=fp8)
    assert (why is not None) == floated, why
    assert get_target("onnxruntime").small_layer_reason(geo, first=first, fp8=fp8) is None  # no such rule
    # the numbers decide: a target with a lower bar keeps the 8-wide GEMM
    assert SmallLayerRules(min_gemm_dim=8).reason(LayerGeometry(LayerKind.GEMM, (8, 32)), first=False,
                                                  fp8=False) is None


NPU = textwrap.dedent('''
    from qcompiler.quant.targets import DefaultQuant, Target

    TARGET = Target(
        name="test-npu",
        description="a made-up NPU: quantizes weighted layers only, per-tensor weights",
        aliases=("npu",),
        placement=("weighted",),
        defaults={"int8": DefaultQuant(("s8", "per_tensor_symmetric"), ("s8", "per_tensor_symmetric"), "min_max")},
    )
''')


@pytest.fixture
def npu_target(tmp_path, monkeypatch):
    """A third target written as one new module on the targets package's path (no other edit)."""
    (tmp_path / "test_npu.py").write_text(NPU)
    monkeypatch.setattr(targets_pkg, "__path__", list(targets_pkg.__path__) + [str(tmp_path)])
    monkeypatch.setattr(targets_pkg, "_TARGETS", {})
    yield get_target("npu")
    targets_pkg._TARGETS.clear()


def test_a_third_target_is_one_new_file(npu_target, zoo_model, zoo):
    assert npu_target.name == "test-npu"
    g = load_model(zoo_model("resnet"))
    calib = as_data_source(str(zoo.calibration_npz("resnet", 16)))
    res = compile_graph(g, "fold-bn,calibrate,insert-qdq", config={"target": "npu"}, calib_data=calib)
    plan = res.context.state.require(QuantizationRecord).plan
    assert plan.target is npu_target
    assert {a.rule for a in plan.acts} == {"P1"}  # no residual (P4) or pooling (P5) step on this target
    assert not plan.groups and not plan.float_nodes  # no concat groups, no small-layer rule
    weights = [w for w in plan.weights]
    assert weights and all(w.axis is None for w in weights)  # its default: per-tensor weights
    dqs = [n for n in g.nodes if n.op == "DequantizeLinear"]
    assert all(np.asarray(n.inputs[1].values).ndim == 0 for n in dqs)
    tensorrt_plan = compile_graph(load_model(zoo_model("resnet")), "fold-bn,calibrate,insert-qdq", calib_data=calib)
    assert "P4" in {a.rule for a in tensorrt_plan.context.state.require(QuantizationRecord).plan.acts}


def test_unknown_placement_step_is_an_error(tmp_path, monkeypatch, zoo_model, zoo):
    (tmp_path / "bad_target.py").write_text(NPU.replace('"test-npu"', '"bad"').replace('("npu",)', "()")
                                            .replace('("weighted",)', '("weighted", "teleport")'))
    monkeypatch.setattr(targets_pkg, "__path__", list(targets_pkg.__path__) + [str(tmp_path)])
    monkeypatch.setattr(targets_pkg, "_TARGETS", {})
    g = load_model(zoo_model("resnet"))
    with pytest.raises(RecipeError, match="unknown placement step 'teleport'"):
        compile_graph(g, "fold-bn,calibrate,insert-qdq", config={"target": "bad"},
                      calib_data=as_data_source(str(zoo.calibration_npz("resnet", 16))))
    targets_pkg._TARGETS.clear()


class _EntryPoint:
    def __init__(self, name: str, value: str, obj):
        self.name, self.value, self._obj = name, value, obj

    def load(self):
        return self._obj


def _with_plugins(monkeypatch, *eps):
    import importlib.metadata

    real = importlib.metadata.entry_points

    def fake(**kw):
        return list(eps) if kw.get("group") == "qcompiler.targets" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.setattr(targets_pkg, "_TARGETS", {})


def test_a_target_from_a_plugin_package(tmp_path, monkeypatch, zoo_model, zoo):
    """A package registers a Target in the qcompiler.targets entry-point group (a value or a function returning
    one); recipes and pass options name it like a built-in, and its rules place the Q/DQ."""
    ns: dict = {}
    exec(NPU.replace('"test-npu"', '"plugin-npu"').replace('("npu",)', '("pnpu",)'), ns)
    _with_plugins(monkeypatch, _EntryPoint("plugin-npu", "my_npu:make_target", lambda: ns["TARGET"]))
    t = get_target("pnpu")
    assert t.name == "plugin-npu" and t.to_dict()["placement"] == ["weighted"]
    g = load_model(zoo_model("resnet"))
    res = compile_graph(g, "fold-bn,calibrate,insert-qdq", config={"target": "plugin-npu"},
                        calib_data=as_data_source(str(zoo.calibration_npz("resnet", 16))))
    plan = res.context.state.require(QuantizationRecord).plan
    assert plan.target is t and {a.rule for a in plan.acts} == {"P1"}
    targets_pkg._TARGETS.clear()


def test_a_broken_target_plugin_is_an_error_naming_it(monkeypatch):
    _with_plugins(monkeypatch, _EntryPoint("odd", "odd_pkg:THING", object()))
    with pytest.raises(RecipeError, match="target plugin 'odd' .* is a object, not a Target"):
        get_target("tensorrt")
    ns: dict = {}
    exec(NPU.replace('"test-npu"', '"tensorrt"'), ns)
    _with_plugins(monkeypatch, _EntryPoint("dup", "dup_pkg:TARGET", ns["TARGET"]))
    with pytest.raises(RecipeError, match="target plugin 'tensorrt' has the name of a target qcompiler already has"):
        get_target("tensorrt")
    targets_pkg._TARGETS.clear()
