"""The pass manager: fact ordering, modified flags, repeat groups, verify-each, instruments."""

from __future__ import annotations

import json
from dataclasses import dataclass

import onnx_graphsurgeon as gs
import pytest

from qcompiler.diagnostics import FactOrderError, PassError, VerificationError
from qcompiler.ir import load_model
from qcompiler.pm import (DumpIR, Pass, PassContext, PassManager, PassResult, Registry, Reproducer, Timing,
                          default_registry, option)

from ..builders import parse


def _graph():
    return parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,4] y) {
            a = Relu(x)
            y = Neg(a)
        }""")


#: the test passes live in their own registry (the built-ins plus these), never in the default one
REG = Registry(default_registry())


@REG.register_pass
class _Provide(Pass):
    """test: provides t-fact"""
    name = "t-provide"
    provides = frozenset({"t-fact"})

    def call(self, graph, ctx):
        return PassResult(False)


@REG.register_pass
class _Need(Pass):
    """test: requires t-fact"""
    name = "t-need"
    requires = frozenset({"t-fact"})

    def call(self, graph, ctx):
        return PassResult(False)


@REG.register_pass
class _Kill(Pass):
    """test: invalidates t-fact"""
    name = "t-kill"
    invalidates = frozenset({"t-fact"})

    def call(self, graph, ctx):
        return PassResult(False)


@REG.register_pass
class _GrowTo(Pass):
    """test: appends Identity nodes on the output until there are `count` of them"""
    name = "t-grow"

    @dataclass(frozen=True)
    class Options:
        count: int = option(3, "how many Identity nodes to reach", min=0)

    def call(self, graph, ctx):
        have = sum(1 for n in graph.nodes if n.op == "Identity")
        if have >= self.options.count:
            return PassResult(False)
        out = graph.outputs[0]
        new = gs.Variable(f"grow_{have}", dtype=out.dtype, shape=out.shape)
        graph.nodes.append(gs.Node("Identity", f"grow_node_{have}", inputs=[out], outputs=[new]))
        graph.outputs[0] = new
        return PassResult(True, {"added": 1})


@REG.register_pass
class _Break(Pass):
    """test: leaves a dangling input"""
    name = "t-break"

    def call(self, graph, ctx):
        relu = next(n for n in graph.nodes if n.op == "Relu")
        graph.nodes.remove(relu)
        return PassResult(True)


@REG.register_pass
class _Liar(Pass):
    """test: changes the graph but says it did not"""
    name = "t-liar"

    def call(self, graph, ctx):
        graph.nodes[0].name = graph.nodes[0].name + "_renamed"
        return PassResult(False)


@REG.register_pass
class _Crash(Pass):
    """test: raises"""
    name = "t-crash"

    def call(self, graph, ctx):
        raise RuntimeError("boom")


def test_facts_in_order_pass():
    PassManager("t-provide,t-need", registry=REG).check_facts(set())


def test_missing_fact_fails_before_running():
    with pytest.raises(FactOrderError) as info:
        PassManager("t-grow,t-need", registry=REG).run(_graph())
    msg = str(info.value)
    assert "'t-need' (#2) requires 't-fact'" in msg
    assert "add 't-provide' before 't-need'" in msg
    assert info.value.exit_code == 2


def test_invalidated_fact_names_both_passes():
    g = _graph()
    with pytest.raises(FactOrderError) as info:
        PassManager("t-provide,t-kill,t-need", registry=REG).run(g)
    msg = str(info.value)
    assert "'t-kill' (#2) invalidates it after 't-provide' (#1) provided it" in msg
    assert "move 't-provide' (#1) after 't-kill' (#2)" in msg
    # nothing ran
    assert sum(1 for n in g.nodes if n.op == "Identity") == 0


def test_fact_killed_inside_repeat_is_seen_on_the_second_iteration():
    with pytest.raises(FactOrderError):
        PassManager("t-provide,repeat{max-steps=2}(t-need,t-kill)", registry=REG).check_facts(set())
    PassManager("repeat{max-steps=2}(t-provide,t-need,t-kill)", registry=REG).check_facts(set())


def test_repeat_runs_until_no_change():
    g = _graph()
    res = PassManager("repeat{max-steps=10}(t-grow{count=3})", registry=REG).run(g)
    assert sum(1 for n in g.nodes if n.op == "Identity") == 3
    assert [r.modified for r in res.records] == [True, True, True, False]
    assert [r.step for r in res.records] == [1, 2, 3, 4]


def test_repeat_stops_at_max_steps_with_remark():
    g = _graph()
    ctx = PassContext()
    PassManager("repeat{max-steps=2}(t-grow{count=5})", registry=REG).run(g, ctx)
    assert sum(1 for n in g.nodes if n.op == "Identity") == 2
    assert any("max-steps=2" in d.message for d in ctx.diagnostics)


def test_verify_each_names_the_breaking_pass():
    with pytest.raises(VerificationError) as info:
        PassManager("t-grow{count=1},t-break", verify_each=True, registry=REG).run(_graph())
    d = info.value.diagnostic
    assert d.pass_name == "t-break"
    assert d.code == "QC210"
    assert "reads 'a'" in d.message


def test_check_modified_catches_a_lying_pass():
    with pytest.raises(PassError) as info:
        PassManager("t-liar", verify_each=True, registry=REG).run(_graph())
    assert info.value.code == "QC211"
    assert "reported modified=False but the graph changed" in str(info.value)


def test_crash_is_wrapped_with_position_and_history():
    with pytest.raises(PassError) as info:
        PassManager("t-grow{count=1},t-provide,t-crash", registry=REG).run(_graph())
    msg = str(info.value)
    assert "pass 't-crash' (#3 of 3, after t-grow, t-provide) failed: RuntimeError: boom" in msg
    assert info.value.diagnostic.extra["position"] == 3


def test_instruments_dump_time_and_reproduce(tmp_path, capsys):
    g = _graph()
    timing = Timing()
    dump = DumpIR(tmp_path / "dump")
    repro = Reproducer(tmp_path / "repro")
    with pytest.raises(PassError):
        PassManager("t-grow{count=1},t-crash", instruments=[timing, dump, repro], registry=REG).run(g)
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == ["00-input.onnx", "00-input.txt", "01-t-grow.onnx", "01-t-grow.txt"]
    assert "grow_node_0" in (tmp_path / "dump" / "01-t-grow.txt").read_text()
    assert "grow_node_0" not in (tmp_path / "dump" / "00-input.txt").read_text()
    # the reproducer holds the graph as it was *before* the failing pass
    rg = load_model(tmp_path / "repro" / "reproducer.onnx")
    assert any(n.name == "grow_node_0" for n in rg.nodes)
    assert (tmp_path / "repro" / "pipeline.txt").read_text().strip() == "t-crash"
    info = json.loads((tmp_path / "repro" / "failure.json").read_text())
    assert info["failed_pass"] == "t-crash" and info["position"] == 2


def test_timing_prints_every_pass(capsys):
    import io

    buf = io.StringIO()
    PassManager("t-grow{count=2},t-provide", instruments=[Timing(buf)], registry=REG).run(_graph())
    out = buf.getvalue()
    assert "t-grow{count=2}" in out and "t-provide" in out and "total" in out


def test_records_and_counters():
    res = PassManager("t-grow{count=1},t-grow{count=1}", registry=REG).run(_graph())
    assert [(r.index, r.modified, r.stats) for r in res.records] == [(1, True, {"added": 1}), (2, False, {})]
    assert "changed" in res.summary()


def test_pass_instances_can_be_given_directly():
    g = _graph()
    res = PassManager([_GrowTo(count=2), _GrowTo(count=2)], registry=REG).run(g)
    assert [r.modified for r in res.records] == [True, True]


def test_pass_options_validated_in_python_api():
    from qcompiler.diagnostics import OptionError

    with pytest.raises(OptionError):
        _GrowTo(count=-1)
    with pytest.raises(OptionError):
        _GrowTo(cnt=1)


def test_builtin_passes_keep_no_state_and_are_idempotent():
    """cleanup twice: the second run reports no change."""
    g = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,4] y) {
            i = Identity(x)
            a = Relu(i)
            dead = Neg(a)
            y = Abs(a)
        }""")
    pm = PassManager("cleanup")
    first = pm.run(g)
    second = pm.run(g)
    assert first.records[0].modified and first.records[0].stats == {"identity_removed": 1, "nodes_removed": 1}
    assert not second.records[0].modified
    assert [n.op for n in g.nodes] == ["Relu", "Abs"]
