"""Recipes: precedence, EQuant-style lists, file forms, errors naming the key, target validation."""

from __future__ import annotations

import json

import pytest
import yaml

from qcompiler.diagnostics import DiagnosticEngine, RecipeError, TargetError
from qcompiler.quant.recipe import from_data, load_recipe, validate_for_target

from ..builders import G


def _graph():
    b = G()
    x = b.input("x", [1, 4, 8, 8])
    c = b.conv(x, 4, 8)
    b.output(b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [b.relu(c)])]), 8, 16))
    return b.graph()


def test_precedence_global_optype_pattern_name():
    g = _graph()
    conv = next(n for n in g.nodes if n.op == "Conv")
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    r = from_data({
        "global": {"weight": {"dtype": "s8"}, "activation": {"dtype": "s8", "observer": "min_max"}},
        "op_types": {"Conv": {"weight": {"dtype": "s4"}}},
        "patterns": {"Con*": {"activation": {"observer": "entropy"}}, "re:Gem.*": "float"},
        "nodes": {conv.name: {"weight": {"dtype": "s6"}}},
    })
    c = r.resolve(conv)
    assert c.weight.dtype == "s6"  # exact name beats op type
    assert c.activation.observer == "entropy"  # pattern beats global
    assert r.resolve(gemm).is_float


def test_equant_list_form_as_written():
    text = """
- weight: {dtype: s4, qscheme: per_channel_symmetric}
  activation: {dtype: s8, qscheme: per_tensor_symmetric, observer: percentile}
  layers: ['*']
"""
    r = load_recipe(yaml.safe_load(text))
    g = _graph()
    cfg = r.resolve(next(n for n in g.nodes if n.op == "Conv"))
    assert cfg.weight.dtype == "s4" and cfg.weight.per_channel
    assert cfg.activation.observer == "percentile"
    validate_for_target(r)


def test_files_json_and_yaml_equivalent(tmp_path):
    data = {"target": "tensorrt", "global": {"activation": {"observer": "mse"}}, "options": {"quantize_bmm": True}}
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    a, b = load_recipe(str(tmp_path / "r.json")), load_recipe(str(tmp_path / "r.yaml"))
    assert a.to_dict() == b.to_dict()
    assert a.option("quantize_bmm") is True


@pytest.mark.parametrize("data,fragment", [
    ({"globl": {}}, "did you mean 'global'"),
    ({"global": {"weigth": {}}}, "did you mean 'weight'"),
    ({"global": {"weight": {"dtype": "s17"}}}, "s17"),
    ({"options": {"quantize_bm": True}}, "did you mean 'quantize_bmm'"),
    ({"options": {"quantize_bmm": "yes"}}, "expected true or false"),
    ({"target": "coreml"}, "unknown target"),
    ({"calibration": {"methd": "entropy"}}, "did you mean 'method'"),
    ([{"layers": 3}], "list of layer name patterns"),
])
def test_errors_name_the_key(data, fragment):
    with pytest.raises(RecipeError) as info:
        from_data(data)
    assert fragment in str(info.value)


@pytest.mark.parametrize("spec,rule", [
    ({"activation": {"dtype": "u8", "qscheme": "per_tensor_affine"}}, "R2"),
    ({"activation": {"dtype": "s8", "qscheme": "per_tensor_affine"}}, "R3"),
    ({"activation": {"dtype": "s8", "qscheme": "per_channel_symmetric"}}, "R8"),
    ({"weight": {"dtype": "s8", "qscheme": "per_channel_affine"}}, "R3"),
])
def test_tensorrt_rejects_with_rule(spec, rule):
    r = from_data({"target": "tensorrt", "global": spec})
    with pytest.raises(TargetError) as info:
        validate_for_target(r)
    assert info.value.diagnostic.rule == rule


def test_onnxruntime_target_accepts_affine_u8():
    r = from_data({"target": "onnxruntime", "global": {"activation": {"dtype": "u8", "qscheme": "per_tensor_affine"}}})
    validate_for_target(r)


def test_pattern_matching_nothing_warns():
    r = from_data({"patterns": {"*/head/*": "float"}, "nodes": {"conv_1": "float"}})
    diags = DiagnosticEngine()
    unused = r.check_patterns(_graph(), diags)
    assert unused == ["*/head/*", "conv_1"]
    assert [d.code for d in diags.filter(code="QC505")] == ["QC505", "QC505"]
