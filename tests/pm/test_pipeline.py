"""Pipeline text: parse/print round trip, canonical form, caret errors, JSON/YAML equivalence."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.diagnostics import PipelineSyntaxError, UnknownPassError, UsageError
from qcompiler.pm import (PipelineSpec, RepeatSpec, default_registry, expand, from_data, load_pipeline,
                          parse_pipeline, print_pipeline, to_data, to_json, to_yaml)
from qcompiler.pm.options import option_specs


def test_canonical_print_is_stable():
    text = "cleanup,repeat{max-steps=2}(fold-constants,cleanup)"
    spec = parse_pipeline(text)
    assert print_pipeline(spec) == text
    assert print_pipeline(parse_pipeline(print_pipeline(spec))) == text


def test_whitespace_and_default_options_are_normalised():
    spec = parse_pipeline("  cleanup{ dedupe=true  remove-identity=false } ,  fold-constants ")
    # dedupe=true is the default: dropped; options printed in declaration order
    assert print_pipeline(spec) == "cleanup{remove-identity=false},fold-constants"


def test_option_values_are_typed():
    spec = parse_pipeline("cleanup{dedupe-min-bytes=0x10},fold-constants{size-limit=100}")
    assert spec.elements[0].option_map() == {"dedupe-min-bytes": 16}
    assert spec.elements[1].option_map() == {"size-limit": 100}


def test_snake_case_option_names_accepted():
    assert parse_pipeline("cleanup{dedupe_min_bytes=1}") == parse_pipeline("cleanup{dedupe-min-bytes=1}")


def test_repeat_default_steps_printed():
    assert print_pipeline(parse_pipeline("repeat(cleanup)")) == "repeat{max-steps=10}(cleanup)"


@pytest.mark.parametrize("text,column,fragment", [
    ("cleanup,fold-constant", 9, "did you mean 'fold-constants'"),
    ("cleanup,", 9, "expected a pass name"),
    ("cleanup{dedupe=maybe}", 16, "expected true or false"),
    ("cleanup{dedup=true}", 9, "did you mean 'dedupe'"),
    ("cleanup{dedupe=true", 20, "unterminated option list"),
    ("repeat{max-steps=2}(cleanup", 28, "expected ')'"),
    ("cleanup(fold-constants)", 8, "only 'repeat' takes"),
    ("cleanup{dedupe=true,remove-identity=false}", 20, "separated by spaces"),
    ("repeat{max-steps=0}(cleanup)", 18, "max-steps must be >= 1"),
])
def test_errors_point_at_the_column(text, column, fragment):
    with pytest.raises(UsageError) as info:
        parse_pipeline(text)
    msg = str(info.value)
    assert fragment in msg
    lines = msg.splitlines()
    caret_line = next(line for line in lines if line.strip().startswith("^"))
    text_line = lines[lines.index(caret_line) - 1]
    assert text_line.strip() == text.strip()
    assert caret_line.index("^") - 2 == column - 1  # two spaces of indent
    assert info.value.exit_code == 2


def test_unknown_pass_error_type_and_hint():
    with pytest.raises(UnknownPassError) as info:
        parse_pipeline("clenup")
    assert info.value.diagnostic.hint.startswith("did you mean 'cleanup'")


def test_empty_pipeline_is_an_error():
    with pytest.raises(PipelineSyntaxError):
        parse_pipeline("   ")


def test_json_yaml_and_text_are_equivalent(tmp_path):
    text = "cleanup{remove-identity=false},repeat{max-steps=3}(fold-constants{fold-shapes=false},cleanup)"
    spec = parse_pipeline(text)
    assert from_data(json.loads(to_json(spec))) == spec
    assert from_data(yaml.safe_load(to_yaml(spec))) == spec
    (tmp_path / "p.json").write_text(to_json(spec))
    (tmp_path / "p.yaml").write_text(to_yaml(spec))
    assert load_pipeline(str(tmp_path / "p.json")) == spec
    assert load_pipeline(str(tmp_path / "p.yaml")) == spec
    # strings inside the list form are parsed as text
    assert from_data({"pipeline": ["cleanup{remove-identity=false}",
                                   {"repeat": {"max-steps": 3},
                                    "pipeline": ["fold-constants{fold-shapes=false}", "cleanup"]}]}) == spec


@pytest.mark.parametrize("data,fragment", [
    ({"pipline": []}, "top-level 'pipeline'"),
    ({"pipeline": [{"pass": "cleanup", "opts": {}}]}, "unknown key"),
    ({"pipeline": [{"pass": "cleanup", "options": {"dedupe": "perhaps"}}]}, "expected true or false"),
    ({"pipeline": [{"repeat": {"max-steps": -1}, "pipeline": ["cleanup"]}]}, "positive integer"),
    ({"pipeline": [42]}, "expected a pass name"),
])
def test_bad_pipeline_files(data, fragment):
    with pytest.raises(UsageError) as info:
        from_data(data)
    assert fragment in str(info.value)


def test_named_pipeline_expands():
    spec = parse_pipeline("tidy")
    expanded = expand(spec)
    assert print_pipeline(expanded) == "cleanup,repeat{max-steps=4}(fold-constants,cleanup)"


# --------------------------------------------------------------------------------------------
# property: parse(print(spec)) == spec for generated specs over the registered passes
# --------------------------------------------------------------------------------------------


def _value_strategy(spec):
    import typing

    tp = spec.base_type
    if spec.choices:
        return st.sampled_from(spec.choices)
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = int(spec.min) if spec.min is not None else -1000
        hi = int(spec.max) if spec.max is not None else 10**6
        return st.integers(lo, hi)
    if tp is float:
        lo = spec.min if spec.min is not None else -1e6
        hi = spec.max if spec.max is not None else 1e6
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if tp is str:
        return st.text(alphabet=st.characters(codec="ascii", exclude_characters="\x00"), max_size=8)
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if inner is str:
            return st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), max_size=3).map(tuple)
        if inner is int:
            return st.lists(st.integers(0, 100), max_size=3).map(tuple)
        return st.lists(st.floats(0, 100, allow_nan=False), max_size=3).map(tuple)
    return st.nothing()


@st.composite
def pass_specs(draw):
    passes = default_registry().passes()
    name = draw(st.sampled_from(sorted(passes)))
    cls = passes[name]
    values = {}
    for spec in option_specs(cls.Options):
        if draw(st.booleans()):
            values[spec.name] = draw(_value_strategy(spec))
    from qcompiler.pm.pipeline import make_pass_spec

    return make_pass_spec(name, values)


elements = st.recursive(pass_specs(), lambda children: st.builds(
    RepeatSpec, st.lists(children, min_size=1, max_size=3).map(tuple), st.integers(1, 5)), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(elements, min_size=1, max_size=5))
def test_parse_print_round_trip(items):
    spec = PipelineSpec(tuple(items))
    text = print_pipeline(spec)
    again = parse_pipeline(text)
    assert again == spec, text
    assert print_pipeline(again) == text
    assert from_data(to_data(spec)) == spec
