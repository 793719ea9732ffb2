"""Registries are instances; built-ins and plugins come through the entry-point group; failures are reported."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import qcompiler.pm.registry as registry_module
from qcompiler.diagnostics import QCompilerError, UnknownPassError
from qcompiler.pm import NamedPipeline, Pass, PassResult, Registry, default_registry, parse_pipeline
from qcompiler.pm.registry import BUILTIN_ENTRY_POINT, ENTRY_POINT_GROUP


class _Mine(Pass):
    """test: a third-party pass"""
    name = "t-mine"

    def call(self, graph, ctx):
        return PassResult(False)


def test_a_registry_of_its_own_does_not_touch_the_default():
    reg = Registry(default_registry())
    reg.register_pass(_Mine)
    assert "t-mine" in reg.passes() and "cleanup" in reg.passes()
    assert "t-mine" not in default_registry().passes()
    assert str(parse_pipeline("cleanup,t-mine", reg)) == "cleanup,t-mine"
    with pytest.raises(UnknownPassError, match="unknown pass or pipeline 't-mine'"):
        parse_pipeline("t-mine")


def test_an_empty_registry_knows_nothing_and_suggests_from_what_it_has():
    reg = Registry()
    assert reg.passes() == {} and reg.pipelines() == {}
    reg.register_pass(_Mine)
    with pytest.raises(UnknownPassError) as exc:
        reg.lookup("t-min")
    assert "did you mean 't-mine'?" in exc.value.diagnostic.hint


def test_registration_checks():
    reg = Registry()
    reg.register_pass(_Mine)
    reg.register_pass(_Mine)  # the same class again is harmless

    class Other(_Mine):
        """another pass under the same name"""

    with pytest.raises(ValueError, match="registered twice"):
        reg.register_pass(Other)

    class Bad(Pass):
        name = "Not_Kebab"

    with pytest.raises(ValueError, match="kebab-case"):
        reg.register_pass(Bad)
    with pytest.raises(ValueError, match="already a pass"):
        reg.register_pipeline(NamedPipeline("t-mine", "clash", lambda o: "cleanup"))
    with pytest.raises(ValueError, match="already a pass"):
        reg.register_pipeline(NamedPipeline("repeat", "reserved", lambda o: "cleanup"))


def test_builtins_come_from_the_builtin_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert eps.get(BUILTIN_ENTRY_POINT) == "qcompiler.passes:register"
    reg = default_registry()
    assert {"fold-bn", "calibrate", "insert-qdq"} <= set(reg.passes())
    assert {"trt-int8", "trt-fp8", "ort-int8", "tidy", "fp32-prep"} <= set(reg.pipelines())
    assert reg.facts["quantized"]


def _fake_entry_points(*eps):
    def entry_points(group=None):
        return [ep for ep in eps if ep.group == group]
    return entry_points


def test_a_failing_plugin_is_reported_not_fatal(monkeypatch):
    eps = _fake_entry_points(
        EntryPoint("zz-broken", "qcompiler_no_such_module:register", ENTRY_POINT_GROUP),
        EntryPoint("notapass", "os:sep", ENTRY_POINT_GROUP),
        EntryPoint(BUILTIN_ENTRY_POINT, "qcompiler.passes:register", ENTRY_POINT_GROUP))
    monkeypatch.setattr("importlib.metadata.entry_points", eps)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    reg = default_registry()
    assert "fold-bn" in reg.passes()  # builtin loaded first, the rest did not stop it
    msgs = [d.message for d in reg.load_errors]
    assert len(msgs) == 2 and all(d.code == "QC110" for d in reg.load_errors)
    assert "plugin 'zz-broken' (qcompiler_no_such_module:register) failed to load: ModuleNotFoundError" in msgs[1]
    assert "plugin 'notapass'" in msgs[0]


def test_a_pass_class_as_entry_point(monkeypatch):
    eps = _fake_entry_points(EntryPoint(BUILTIN_ENTRY_POINT, "qcompiler.passes:register", ENTRY_POINT_GROUP),
                             EntryPoint("mine", f"{__name__}:_Mine", ENTRY_POINT_GROUP))
    monkeypatch.setattr("importlib.metadata.entry_points", eps)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    assert "t-mine" in default_registry().passes() and not default_registry().load_errors


def test_without_the_builtin_entry_point_the_error_says_to_reinstall(monkeypatch):
    monkeypatch.setattr("importlib.metadata.entry_points", _fake_entry_points())
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    with pytest.raises(QCompilerError, match="built-in passes are not registered") as exc:
        default_registry()
    assert "reinstall" in exc.value.diagnostic.hint
    assert registry_module._DEFAULT is None and not registry_module._LOADING


def test_a_plugin_that_asks_for_the_default_registry_while_loading(monkeypatch):
    eps = _fake_entry_points(EntryPoint(BUILTIN_ENTRY_POINT, "qcompiler.passes:register", ENTRY_POINT_GROUP),
                             EntryPoint("greedy", f"{__name__}:_greedy", ENTRY_POINT_GROUP))
    monkeypatch.setattr("importlib.metadata.entry_points", eps)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    reg = default_registry()
    assert any("asked for the default registry while it was being loaded" in d.message for d in reg.load_errors)


def _greedy(registry):
    default_registry()


def test_cli_prints_plugin_failures(monkeypatch, capsys):
    from qcompiler.cli import main

    eps = _fake_entry_points(EntryPoint(BUILTIN_ENTRY_POINT, "qcompiler.passes:register", ENTRY_POINT_GROUP),
                             EntryPoint("zz-broken", "qcompiler_no_such_module:register", ENTRY_POINT_GROUP))
    monkeypatch.setattr("importlib.metadata.entry_points", eps)
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    assert main(["passes"]) == 0
    err = capsys.readouterr().err
    assert "QC110" in err and "zz-broken" in err
