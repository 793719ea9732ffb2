"""Fuzzing: seeded mutations of valid zoo models through the CLI.

Every outcome must be a success with a valid model, or a clear diagnostic with exit code 1 or 2;
never an internal error (exit 3), never a "this is a bug in the pass" failure, never a hang, and
never a half-written output.  The short form runs in the default suite; ``-m slow`` runs more cases.
"""

from __future__ import annotations

import io
import os
import signal
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import onnx
import pytest

from qcompiler.cli import main

MUTATIONS = ["drop_node", "dup_node", "drop_init", "dup_init", "bad_dims", "bad_attr", "bad_dtype", "dangling",
             "swap_inputs", "opset", "drop_output", "truncate_raw", "bad_input_shape", "node_domain"]


def mutate(model: onnx.ModelProto, rng: np.random.Generator, kind: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = list(g.node)
    if kind == "drop_node" and nodes:
        del g.node[int(rng.integers(len(nodes)))]
    elif kind == "dup_node" and nodes:
        g.node.insert(int(rng.integers(len(nodes))), nodes[int(rng.integers(len(nodes)))])
    elif kind == "drop_init" and len(g.initializer):
        del g.initializer[int(rng.integers(len(g.initializer)))]
    elif kind == "dup_init" and len(g.initializer):
        g.initializer.append(g.initializer[int(rng.integers(len(g.initializer)))])
    elif kind == "bad_dims" and len(g.initializer):
        t = g.initializer[int(rng.integers(len(g.initializer)))]
        if len(t.dims):
            t.dims[int(rng.integers(len(t.dims)))] = int(rng.integers(1, 9))
    elif kind == "bad_attr":
        cands = [n for n in g.node if len(n.attribute)]
        if cands:
            n = cands[int(rng.integers(len(cands)))]
            a = n.attribute[int(rng.integers(len(n.attribute)))]
            if a.type == onnx.AttributeProto.INT:
                a.i = int(rng.integers(-2, 9))
            elif a.type == onnx.AttributeProto.INTS and len(a.ints):
                a.ints[int(rng.integers(len(a.ints)))] = int(rng.integers(-1, 6))
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = float(rng.choice([0.0, -1.0, 1e30, float("nan")]))
    elif kind == "bad_dtype":
        if len(g.initializer) and rng.random() < 0.5:
            g.initializer[int(rng.integers(len(g.initializer)))].data_type = int(rng.choice([2, 6, 7, 10, 11]))
        else:
            g.input[0].type.tensor_type.elem_type = int(rng.choice([2, 6, 7, 10, 11]))
    elif kind == "dangling" and nodes:
        n = g.node[int(rng.integers(len(nodes)))]
        if len(n.input):
            n.input[int(rng.integers(len(n.input)))] = "does_not_exist"
    elif kind == "swap_inputs":
        cands = [n for n in g.node if len(n.input) >= 2]
        if cands:
            n = cands[int(rng.integers(len(cands)))]
            n.input[0], n.input[1] = n.input[1], n.input[0]
    elif kind == "opset":
        m.opset_import[0].version = int(rng.integers(6, 23))
    elif kind == "drop_output" and len(g.output):
        g.output[0].name = "renamed_output"
    elif kind == "truncate_raw":
        cands = [t for t in g.initializer if len(t.raw_data) > 8]
        if cands:
            t = cands[int(rng.integers(len(cands)))]
            t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif kind == "bad_input_shape":
        dims = g.input[0].type.tensor_type.shape.dim
        if len(dims) > 1:
            dims[1].dim_value = int(rng.integers(1, 7))
    elif kind == "node_domain" and nodes:
        g.node[int(rng.integers(len(nodes)))].domain = "ai.unknown"
    return m


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_case(path: str, out: str, calib: str, pipeline: str = "trt-int8") -> tuple[int, str]:
    buf_o, buf_e = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        with redirect_stdout(buf_o), redirect_stderr(buf_e):
            rc = main(["compile", path, "-o", out, "--pipeline", pipeline, "--calib-data", calib, "-q"])
    except _Timeout:
        return -1, "hang (over 120 s)"
    except SystemExit as e:
        rc = int(e.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, buf_e.getvalue()


def _fuzz(zoo, tmp_path, cases: int, seed: int):
    rng = np.random.default_rng(seed)
    bases = {}
    for name in ("resnet", "mobilenetv2", "transformer"):
        bases[name] = (onnx.load(zoo.onnx_path(name)), str(zoo.calibration_npz(name, 16)))
    failures, outcomes = [], {0: 0, 1: 0, 2: 0}
    for i in range(cases):
        name = list(bases)[i % len(bases)]
        model, calib = bases[name]
        kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
        m = mutate(model, rng, kind)
        src = tmp_path / f"case{i}.onnx"
        src.write_bytes(m.SerializeToString())
        before = src.read_bytes()
        out = tmp_path / f"case{i}.out.onnx"
        rc, err = run_case(str(src), str(out), calib)
        what = f"case {i} ({name}, {kind}): rc={rc}: {err.strip()[:300]}"
        if rc not in (0, 1, 2):
            failures.append(what)
        elif rc != 0 and "this is a bug" in err:
            failures.append(what)
        elif rc != 0 and out.exists():
            failures.append(what + " [output written despite the error]")
        elif rc == 0:
            try:
                onnx.checker.check_model(onnx.load(out))
            except Exception as exc:
                failures.append(what + f" [invalid output: {exc}]")
        if src.read_bytes() != before:
            failures.append(what + " [input modified]")
        if any(p.name.startswith(".qc-") for p in tmp_path.iterdir()):
            failures.append(what + " [temporary file left]")
        outcomes[rc] = outcomes.get(rc, 0) + 1
        for p in (src, out):
            if p.exists():
                os.unlink(p)
    assert not failures, "\n".join(failures[:20])
    return outcomes


def test_fuzz_short(zoo, tmp_path):
    outcomes = _fuzz(zoo, tmp_path, cases=42, seed=1)
    assert outcomes[0] > 0 and outcomes[1] > 0  # both outcomes are exercised


@pytest.mark.slow
def test_fuzz_long(zoo, tmp_path):
    _fuzz(zoo, tmp_path, cases=400, seed=7)
