"""The executor (qcompiler/executor.py): work split into tasks gives exactly what one process gives.

Most checks use :class:`Shuffled`, an in-process executor that claims several workers and runs the tasks in
reverse order, so the sharding and merging logic is tested without Ray.  The Ray checks start one local runtime
with 2 CPUs for the module (about 3 s) and are skipped when Ray is not installed (CI installs the extra)."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys

import numpy as np
import pytest

from qcompiler.api import compile_model
from qcompiler.calib import CollectOptions, ObserverConfig
from qcompiler.calib.collect import collect, collect_sharded, merge_stats, shard_plan
from qcompiler.calib.data import as_data_source
from qcompiler.diagnostics import DiagnosticEngine, QCompilerError, UsageError
from qcompiler.executor import Executor, make_executor, shard_ranges
from qcompiler.ir import load_model


class Shuffled(Executor):
    """In this process, ``workers`` claimed, tasks run last first (results returned in order)."""

    name = "shuffled"

    def __init__(self, workers: int):
        super().__init__()
        self.workers = workers
        self.calls = 0

    def map(self, fn, items, *, what="task", progress="off", labels=None):
        self.calls += len(items)
        out = [fn(item) for item in reversed(list(items))]
        return out[::-1]


def _stats_bytes(stats) -> dict[str, bytes]:
    """Everything an observer keeps, and the range (so the scale) it chooses, as bytes."""
    from qcompiler.calib.observers import compute_range

    out = {}
    for name, st in sorted(stats.items()):
        lo, hi = compute_range(st)
        parts = [np.asarray(x, np.float64).tobytes() for x in (st.min, st.max, lo, hi)]
        parts.append(np.asarray([st.count, st.hist_exp]).tobytes())
        if st.hist is not None:
            parts.append(np.asarray(st.hist).tobytes())
        out[name] = b"".join(parts)
    return out


def test_shard_ranges_cover_everything_once():
    for n in (0, 1, 7, 64, 65):
        for k in (1, 2, 3, 16):
            r = shard_ranges(n, k)
            assert [i for a, b in r for i in range(a, b)] == list(range(n))
            assert len(r) == (max(1, min(k, n)) if n else 1)


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_sharded_statistics_equal_one_process_in_any_order(zoo, workers):
    """min/max, per-channel and histogram statistics over shards, merged forwards or backwards, are the bytes one
    process computes (65 samples: shards of unequal size, a last partial batch)."""
    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 65)
    graph = load_model(src)
    data = as_data_source(str(calib))
    convs = [n for n in graph.nodes if n.op == "Conv"]
    requests = {convs[0].inputs[0].name: ObserverConfig("entropy"),
                convs[1].inputs[0].name: ObserverConfig("percentile"),
                convs[2].outputs[0].name: ObserverConfig("min_max", axis=1),
                convs[3].outputs[0].name: ObserverConfig("mse")}
    opts = CollectOptions(batch_size=8)
    one = collect(graph, requests, data, options=opts)
    ex = Shuffled(workers)
    many = collect_sharded(graph, requests, data, ex, options=opts)
    assert ex.calls == workers
    assert _stats_bytes(many) == _stats_bytes(one)
    assert many[convs[0].inputs[0].name].extra["samples"] == 65
    ranges, _ = shard_plan(data, graph, workers, 8)
    parts = [collect(graph, requests, data.shard(a, b), options=opts) for a, b in ranges]
    assert _stats_bytes(merge_stats(*reversed(parts))) == _stats_bytes(one)


def test_a_shard_reads_only_its_samples(zoo):
    data = as_data_source(str(zoo.calibration_npz("resnet", 65)))
    graph = load_model(zoo.onnx_path("resnet"))
    whole = np.concatenate([b.feeds["input"] for b in data.batches(graph, batch_size=8)])
    part = data.shard(13, 40)
    got = list(part.batches(graph, batch_size=8))
    assert part.samples(graph) == 27 and got[0].first == 13
    assert np.array_equal(np.concatenate([b.feeds["input"] for b in got]), whole[13:40])


@pytest.mark.parametrize("pipeline", ["trt-int8", "fold-bn,calibrate{method=entropy},insert-qdq,bias-correct"])
def test_compiled_bytes_equal_one_process(zoo, tmp_path, pipeline):
    src, calib = zoo.onnx_path("mobilenetv2"), zoo.calibration_npz("mobilenetv2", 48)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    compile_model(src, a, pipeline, calib_data=str(calib))
    ex = Shuffled(3)
    compile_model(src, b, pipeline, calib_data=str(calib), executor=ex)
    assert ex.calls > 0
    assert a.read_bytes() == b.read_bytes()


def test_sensitivity_and_gptq_equal_one_process(zoo, tmp_path):
    from qcompiler.quant.sensitivity import layer_sensitivity

    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 32)
    q = tmp_path / "q.onnx"
    compile_model(src, q, "trt-int8{guard=off}", calib_data=str(calib))
    ref, qdq = load_model(src), load_model(q)
    from qcompiler.bridge.finetune import reference_graph

    ref = reference_graph(ref, qdq, DiagnosticEngine())
    data = as_data_source(str(calib))
    local = layer_sensitivity(qdq, ref, data)
    ex = Shuffled(2)
    assert layer_sensitivity(qdq, ref, data, executor=ex) == local and ex.calls >= 2
    for pipeline in ("trt-int8{guard=off},gptq{bits=4}", "trt-int8{guard=off},gptq{bits=4 inputs=fp32}"):
        a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
        compile_model(src, a, pipeline, calib_data=str(calib))
        ex = Shuffled(3)
        compile_model(src, b, pipeline, calib_data=str(calib), executor=ex)
        assert ex.calls >= 3  # calibration shards and three groups of layers (Hessians and solves)
        assert a.read_bytes() == b.read_bytes()


def test_blocked_gptq_on_matmuls_equals_one_process(zoo, tmp_path):
    src, calib = zoo.onnx_path("transformer"), zoo.calibration_npz("transformer", 32)
    pipeline = "trt-int4-weights{method=gptq block-size=32}"
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    compile_model(src, a, pipeline, calib_data=str(calib))
    ex = Shuffled(2)
    compile_model(src, b, pipeline, calib_data=str(calib), executor=ex)
    assert ex.calls >= 2 and a.read_bytes() == b.read_bytes()


def test_data_that_cannot_be_split_runs_in_this_process_and_says_so(zoo, tmp_path):
    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 16)
    x = np.load(calib)["input"]
    batches = [{"input": x[i:i + 4]} for i in range(0, 16, 4)]
    diags = DiagnosticEngine()
    ex = Shuffled(2)
    compile_model(src, tmp_path / "q.onnx", "fold-bn,calibrate,insert-qdq", calib_data=batches, executor=ex,
                  diagnostics=diags)
    assert ex.calls == 0
    assert any(d.code == "QC404" and "runs in this process" in d.message for d in diags)


def test_without_ray_the_flag_says_how_to_install_it(monkeypatch):
    real = builtins.__import__

    def no_ray(name, *args, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UsageError) as e:
        make_executor("ray")
    assert e.value.code == "QC130" and "pip install 'qcompiler[ray]'" in str(e.value)
    with pytest.raises(UsageError):
        make_executor("dask")


def _compile_cli(model, out, executor: str, hide_ray: bool = False) -> subprocess.CompletedProcess:
    """``qcompiler compile MODEL -o OUT --pipeline fold-bn --executor EXECUTOR`` in a fresh interpreter (with
    ``hide_ray``: one where ``import ray`` fails, as without the extra)."""
    code = ("import sys; " + ("sys.modules['ray'] = None; " if hide_ray else "")
            + "from qcompiler.cli import main; "
            + f"sys.exit(main(['compile', {str(model)!r}, '-o', {str(out)!r}, '--pipeline', 'fold-bn', "
            + f"'--executor', {executor!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_cli_without_ray_exits_with_the_install_hint(tiny_model_path, tmp_path):
    out = tmp_path / "q.onnx"
    r = _compile_cli(tiny_model_path, out, "ray", hide_ray=True)
    assert r.returncode != 0 and "QC130" in r.stderr and "qcompiler[ray]" in r.stderr and not out.exists()


def test_cli_refuses_an_unknown_executor(tiny_model_path, tmp_path):
    out = tmp_path / "q.onnx"
    r = _compile_cli(tiny_model_path, out, "spark")
    assert r.returncode != 0 and "unknown executor 'spark'" in r.stderr and not out.exists()


# ------------------------------------------------------------------------------------------------
# on a local Ray runtime (2 CPUs)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_ex():
    pytest.importorskip("ray")
    from qcompiler.executor import RayExecutor

    ex = RayExecutor(num_cpus=2, object_store_mib=256)
    yield ex
    ex.close()


def test_ray_gives_the_same_bytes_scales_and_ranking(ray_ex, zoo, tmp_path):
    from qcompiler.quant.sensitivity import layer_sensitivity

    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 40)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    compile_model(src, a, "trt-int8", calib_data=str(calib))
    before = sum(ray_ex.timing.tasks.values())
    compile_model(src, b, "trt-int8", calib_data=str(calib), executor=ray_ex)
    assert sum(ray_ex.timing.tasks.values()) - before >= 2  # calibration shards ran as tasks
    assert a.read_bytes() == b.read_bytes()
    assert len({w.split(":")[-1] for w in ray_ex.timing.seconds}) >= 1
    ref, qdq = load_model(src), load_model(a)
    from qcompiler.bridge.finetune import reference_graph

    ref = reference_graph(ref, qdq, DiagnosticEngine())
    data = as_data_source(str(calib))
    local = layer_sensitivity(qdq, ref, data)
    remote = layer_sensitivity(qdq, ref, data, executor=ray_ex)
    assert remote == local
    assert sorted(remote, key=remote.get) == sorted(local, key=local.get)
    c, d = tmp_path / "c.onnx", tmp_path / "d.onnx"  # GPTQ: Hessians and solves in two worker processes
    compile_model(src, c, "trt-int8{guard=off},gptq{bits=4}", calib_data=str(calib))
    compile_model(src, d, "trt-int8{guard=off},gptq{bits=4}", calib_data=str(calib), executor=ray_ex)
    assert c.read_bytes() == d.read_bytes()


class _Dying:
    """A task wrapper whose worker process dies (``os._exit``) on the first ``times`` calls, counted across
    processes by marker files."""

    def __init__(self, fn, folder, times):
        self.fn, self.folder, self.times = fn, str(folder), times

    def __call__(self, item):
        k = len(os.listdir(self.folder))
        if k < self.times:
            open(os.path.join(self.folder, f"death-{k}"), "w").close()
            os._exit(1)
        return self.fn(item)


def test_a_worker_killed_mid_run_is_retried(ray_ex, zoo, tmp_path, monkeypatch):
    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 32)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    compile_model(src, a, "fold-bn,calibrate,insert-qdq", calib_data=str(calib))
    marks = tmp_path / "marks"
    marks.mkdir()
    real_map = type(ray_ex).map
    monkeypatch.setattr(type(ray_ex), "map", lambda self, fn, items, **kw: real_map(self, _Dying(fn, marks, 1),
                                                                                   items, **kw))
    compile_model(src, b, "fold-bn,calibrate,insert-qdq", calib_data=str(calib), executor=ray_ex)
    assert len(os.listdir(marks)) == 1  # one worker died, its task ran again
    assert a.read_bytes() == b.read_bytes()


def test_a_task_that_keeps_dying_names_its_shard_and_writes_nothing(ray_ex, zoo, tmp_path, monkeypatch):
    src, calib = zoo.onnx_path("resnet"), zoo.calibration_npz("resnet", 32)
    marks = tmp_path / "marks"
    marks.mkdir()
    real_map = type(ray_ex).map
    monkeypatch.setattr(type(ray_ex), "map", lambda self, fn, items, **kw: real_map(self, _Dying(fn, marks, 99),
                                                                                   items, **kw))
    out = tmp_path / "q.onnx"
    with pytest.raises(QCompilerError) as e:
        compile_model(src, out, "fold-bn,calibrate,insert-qdq", calib_data=str(calib), executor=ray_ex)
    assert e.value.code == "QC132" and "calibration shard" in str(e.value) and "samples" in str(e.value)
    assert not out.exists()


def test_an_error_in_a_task_is_the_error_one_process_gives(ray_ex, zoo, tmp_path):
    """Bad data in the second shard: the same error (code, sample index) as without Ray, nothing written."""
    x = np.load(zoo.calibration_npz("resnet", 32))["input"].copy()
    x[27, 0, 3, 3] = np.nan
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=x)
    src = zoo.onnx_path("resnet")
    errors = []
    for ex in (None, ray_ex):
        out = tmp_path / "q.onnx"
        with pytest.raises(QCompilerError) as e:
            compile_model(src, out, "fold-bn,calibrate,insert-qdq", calib_data=str(bad), executor=ex)
        assert not out.exists()
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "27" in errors[0]
