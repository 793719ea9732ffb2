"""Typed pass state: the store, what the manager checks and drops, saving and loading, reproducers that replay."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from qcompiler.api import compile_model
from qcompiler.calib.stats import CalibrationStats
from qcompiler.diagnostics import FactOrderError, PassError, VerificationError
from qcompiler.ir import load_model
from qcompiler.pm import (MissingStateError, Pass, PassContext, PassManager, PassResult, Registry, State, StateStore,
                          default_registry, run_pipeline)
from qcompiler.pm.state import state_type
from qcompiler.quant.state import BatchNormStats, BNRecord, FP32Reference, QuantizationRecord

from ..builders import G


@dataclass
class _Note(State):
    """test state"""
    fact = "t-note"
    text: str


REG = Registry(default_registry())


@REG.register_pass
class _Leave(Pass):
    """test: leaves a note"""
    name = "t-leave"
    provides = frozenset({"t-note"})

    def call(self, graph, ctx):
        ctx.state.put(_Note("hello"))
        return PassResult(False)


@REG.register_pass
class _Forget(Pass):
    """test: claims to provide the note but leaves none"""
    name = "t-forget"
    provides = frozenset({"t-note"})

    def call(self, graph, ctx):
        return PassResult(False)


@REG.register_pass
class _Read(Pass):
    """test: needs the note"""
    name = "t-read"
    requires = frozenset({"t-note"})

    def call(self, graph, ctx):
        ctx.state.require(_Note, self.name)
        return PassResult(False, {"read": 1})


@REG.register_pass
class _Spoil(Pass):
    """test: invalidates the note"""
    name = "t-spoil"
    invalidates = frozenset({"t-note"})

    def call(self, graph, ctx):
        return PassResult(False)


@REG.register_pass
class _Break(Pass):
    """test: disconnects the graph output from every node (and says nothing)"""
    name = "t-break"

    def call(self, graph, ctx):
        graph.nodes.clear()
        return PassResult(True)


def _graph():
    b = G()
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.relu(b.conv(x, 3, 4)))
    return b.graph()


def test_store_put_get_require_drop():
    store = StateStore()
    assert store.get(_Note) is None
    with pytest.raises(MissingStateError, match="needs 't-note'"):
        store.require(_Note, "t-read")
    store.put(_Note("a"))
    assert store.require(_Note).text == "a" and "t-note" in store and store.facts() == {"t-note"}
    assert store.drop("t-note") and store.get(_Note) is None
    assert not store.drop("t-note")
    with pytest.raises(TypeError):
        store.put(object())  # type: ignore[arg-type]
    assert state_type("calibrated") is CalibrationStats and state_type("quantized") is None


def test_manager_checks_provided_state_and_drops_invalidated_state():
    ctx = PassContext()
    PassManager("t-leave,t-read", registry=REG).run(_graph(), ctx)
    assert ctx.state.require(_Note).text == "hello" and "t-note" in ctx.facts
    with pytest.raises(PassError, match="declares it provides 't-note' but left no _Note"):
        PassManager("t-forget", registry=REG).run(_graph(), PassContext())
    ctx = PassContext()
    PassManager("t-leave,t-spoil", registry=REG).run(_graph(), ctx)
    assert ctx.state.get(_Note) is None and "t-note" not in ctx.facts
    with pytest.raises(FactOrderError, match="'t-spoil' \\(#2\\) invalidates it"):
        PassManager("t-leave,t-spoil,t-read", registry=REG).check_facts(set())


def test_state_given_to_a_pipeline_counts_as_its_fact():
    ctx = PassContext()
    ctx.state.put(_Note("from outside"))
    res = PassManager("t-read", registry=REG).run(_graph(), ctx)
    assert res.records[0].stats == {"read": 1}


def test_rewrites_drop_calibration_statistics(zoo_model, zoo):
    g = load_model(zoo_model("resnet"))
    ctx = PassContext()
    from qcompiler.calib.data import as_data_source

    ctx.calib_data = as_data_source(str(zoo.calibration_npz("resnet", 16)))
    run_pipeline(g, "fold-bn,calibrate", ctx)
    assert ctx.state.get(CalibrationStats) is not None and ctx.state.get(BatchNormStats) is not None
    run_pipeline(g, "cle", ctx)  # changes weights: the statistics no longer describe the graph
    assert ctx.state.get(CalibrationStats) is None and "calibrated" not in ctx.facts
    assert ctx.state.get(BatchNormStats) is not None  # rescaled by cle, still true


def test_save_and_load_round_trip(tmp_path, zoo_model, zoo):
    from qcompiler.calib.data import as_data_source

    g = load_model(zoo_model("resnet"))
    ctx = PassContext(calib_data=as_data_source(str(zoo.calibration_npz("resnet", 16))))
    run_pipeline(g, "fold-bn,calibrate,insert-qdq", ctx)
    assert ctx.state.get(QuantizationRecord) is not None
    assert ctx.state.get(CalibrationStats) is None  # insert-qdq invalidates 'calibrated'
    ctx.state.put(CalibrationStats({}, "k", 3))
    manifest = ctx.state.save(tmp_path / "state", ctx.facts)
    assert set(manifest["state"]) == {"calibrated", "bn-stats", "fp32-reference"}
    assert manifest["not_saved"] == ["qdq-plan"]
    store, facts = StateStore.load(tmp_path / "state")
    assert facts == ctx.facts
    bn0, bn1 = ctx.state.require(BatchNormStats), store.require(BatchNormStats)
    assert bn0.records.keys() == bn1.records.keys()
    for k in bn0.records:
        np.testing.assert_array_equal(bn0.records[k].mean, bn1.records[k].mean)
    assert store.require(CalibrationStats).key == "k" and store.require(CalibrationStats).samples == 3
    ref = store.require(FP32Reference).graph
    assert [n.name for n in ref.nodes] == [n.name for n in ctx.state.require(FP32Reference).graph.nodes]


def test_bn_stats_are_never_changed_in_place():
    a = BatchNormStats()
    b = a.with_record("t", BNRecord("conv", np.ones(2), np.ones(2)))
    assert a.records == {} and set(b.records) == {"t"}


def test_load_rejects_a_folder_without_state(tmp_path):
    from qcompiler.diagnostics import QCompilerError

    with pytest.raises(QCompilerError, match="holds no state.json"):
        StateStore.load(tmp_path)
    (tmp_path / "state.json").write_text('{"state": {"calibrated": {"type": "os:path", "meta": {}}}}')
    with pytest.raises(QCompilerError, match="cannot read pass state"):
        StateStore.load(tmp_path)


def test_insert_qdq_reproducer_replays_with_its_statistics(tmp_path, zoo_model, zoo, monkeypatch):
    """A failure inside insert-qdq leaves a reproducer whose replay.sh runs insert-qdq with the saved statistics
    and, once the bug is gone, writes the graph the full pipeline writes."""
    from qcompiler.quant import emit

    src, calib = zoo_model("resnet"), zoo.calibration_npz("resnet", 16)
    good = tmp_path / "good.onnx"
    compile_model(src, good, "fold-bn,calibrate,insert-qdq", calib_data=str(calib))

    def boom(self):
        raise RuntimeError("emitter bug")

    monkeypatch.setattr(emit.Emitter, "run", boom)
    repro = tmp_path / "repro"
    with pytest.raises(PassError, match="emitter bug"):
        compile_model(src, tmp_path / "bad.onnx", "fold-bn,calibrate,insert-qdq", calib_data=str(calib),
                      reproducer=str(repro))
    monkeypatch.undo()
    assert (repro / "pipeline.txt").read_text().strip() == "insert-qdq"
    assert (repro / "state" / "calibrated" / "stats.json").exists()
    script = (repro / "replay.sh").read_text()
    assert "--state state" in script and f"--calib-data {calib}" in script
    # the replay: the same CLI command the script runs, writing into the folder
    cmd = script.strip().splitlines()[-1].split("&& ", 1)[1].replace("/tmp/repro-out.onnx", str(tmp_path / "r.onnx"))
    r = subprocess.run(cmd.replace("qcompiler ", f"{sys.executable} -m qcompiler.cli ", 1), shell=True, cwd=repro,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the same graph and weights; only the recorded pipeline metadata differs (insert-qdq alone)
    from qcompiler.ir.graph import get_meta, graph_fingerprint

    replayed, expected = load_model(tmp_path / "r.onnx"), load_model(good)
    assert graph_fingerprint(replayed) == graph_fingerprint(expected)
    assert get_meta(replayed).metadata_props["qcompiler.pipeline"] == "insert-qdq"


def test_without_its_state_the_reproducer_stops_on_the_missing_fact(tmp_path, zoo_model):
    with pytest.raises(FactOrderError, match="requires 'calibrated'"):
        compile_model(zoo_model("resnet"), tmp_path / "x.onnx", "insert-qdq")


def test_verification_failure_leaves_a_reproducer_of_the_whole_pipeline(tmp_path):
    from qcompiler.ir import save_model

    src = tmp_path / "m.onnx"
    save_model(_graph(), src)
    repro = tmp_path / "repro"
    with pytest.raises(VerificationError):
        compile_model(src, tmp_path / "out.onnx", "cleanup,t-break", reproducer=str(repro), registry=REG)
    assert not (tmp_path / "out.onnx").exists()
    assert (repro / "pipeline.txt").read_text().strip() == "cleanup,t-break"
    assert "failed verification" in (repro / "README.txt").read_text()
    assert [n.op for n in load_model(repro / "reproducer.onnx").nodes] == ["Conv", "Relu"]


def test_compile_with_a_state_folder_from_the_cli(tmp_path, zoo_model, zoo):
    """`qcompiler compile --state DIR` starts from saved state (here: statistics saved by a reproducer)."""
    from qcompiler.cli import main

    src, calib = zoo_model("resnet"), str(zoo.calibration_npz("resnet", 16))
    g = load_model(src)
    from qcompiler.calib.data import as_data_source

    ctx = PassContext(calib_data=as_data_source(calib))
    run_pipeline(g, "fold-bn,calibrate", ctx)
    ctx.state.save(tmp_path / "state", ctx.facts)
    from qcompiler.ir import save_model

    mid = tmp_path / "mid.onnx"
    save_model(g, mid)
    out = tmp_path / "out.onnx"
    assert main(["compile", str(mid), "-o", str(out), "--pipeline", "insert-qdq", "--state", str(tmp_path / "state"),
                 "-q"]) == 0
    assert any(n.op == "DequantizeLinear" for n in load_model(out).nodes)
    assert Path(str(out) + ".recipe.json").exists()
