"""A streaming voice-activity detector whose layers all sit inside ``If`` branches: the control-flow stand-in.

The structure of Silero-style VAD exports: the graph takes one audio chunk, the recurrent state and the sample
rate; an ``If`` on ``sr == 16000`` picks one of two branches, each a whole network (a strided conv front end
with a log-magnitude, three conv layers, time pooling, an LSTM cell written with Gemm gates, a Gemm and a
sigmoid), and returns the speech probability and the new state ``[2, 1, 64]`` (h and c: layers-first, batch on
axis 1).  The weights are ``Constant`` nodes inside the branch bodies, as TorchScript-scripted exports write
them.  Nothing of it is outside the ``If``: a tool that does not look into subgraphs quantizes nothing.

The task: synthetic audio (harmonic "voiced" segments with a syllable envelope and random formants over
coloured noise at 0-20 dB SNR), 16 kHz in 512-sample chunks or 8 kHz in 256-sample chunks; a chunk is speech
when most of it is.  Trained once in torch (deterministic) and cached; the ONNX graph is written from the
trained weights.  :func:`stream_accuracy` runs a model over held-out streams chunk by chunk, carrying the state,
and returns the frame accuracy: the task metric of the issue.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .zoo import cache_dir, standin

HID = 64
FEAT = 64
CHUNK = {16000: 512, 8000: 256}
FRONT = {16000: (64, 32), 8000: (32, 16)}  # front-end conv kernel and stride
VERSION = "1"


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def stream(rng: np.random.Generator, sr: int, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Audio [chunks * CHUNK[sr]] and per-chunk labels [chunks] (1: speech)."""
    n = chunks * CHUNK[sr]
    t = np.arange(n) / sr
    white = rng.normal(0, 1, n)
    color = rng.uniform(0.0, 0.97)
    noise = np.empty(n)
    acc = 0.0
    for i in range(n):  # first-order coloured noise
        acc = color * acc + white[i]
        noise[i] = acc
    noise /= noise.std() + 1e-9
    speech = np.zeros(n)
    active = np.zeros(n, bool)
    pos = int(rng.integers(0, CHUNK[sr] * 4))
    while pos < n:
        length = int(rng.uniform(0.25, 1.2) * sr)
        end = min(n, pos + length)
        tt = t[pos:end] - t[pos]
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * tt))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        formants = rng.uniform(300, min(3000, sr / 2 - 200), 2)
        seg = np.zeros(end - pos)
        for k in range(1, 16):
            fk = k * f0
            gain = sum(np.exp(-((fk - f) / 250.0) ** 2) for f in formants) + 0.05
            seg += gain * np.sin(k * phase) * (fk < sr / 2 - 100)
        env = np.clip(np.sin(np.pi * tt * rng.uniform(3, 6)) ** 2, 0, 1) * 0.8 + 0.2
        speech[pos:end] = seg * env / (np.std(seg) + 1e-9)
        active[pos:end] = True
        pos = end + int(rng.uniform(0.2, 1.5) * sr)
    snr_db = rng.uniform(0, 20)
    x = speech * 10 ** (snr_db / 20) + noise
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.2, 0.9)
    labels = active.reshape(chunks, CHUNK[sr]).mean(1) > 0.5
    return x.astype(np.float32), labels.astype(np.float32)


# --------------------------------------------------------------------------------------------
# model (torch, for training)
# --------------------------------------------------------------------------------------------


def build_model():
    import torch
    import torch.nn as nn

    class Branch(nn.Module):
        def __init__(self, sr: int):
            super().__init__()
            k, s = FRONT[sr]
            self.front = nn.Conv1d(1, FEAT, k, s)
            self.c1 = nn.Conv1d(FEAT, FEAT, 3, 1, 1)
            self.c2 = nn.Conv1d(FEAT, FEAT, 3, 2, 1)
            self.c3 = nn.Conv1d(FEAT, FEAT, 3, 2, 1)
            self.wx = nn.Linear(FEAT, 4 * HID)
            self.wh = nn.Linear(HID, 4 * HID, bias=False)
            self.out = nn.Linear(HID, 1)

        def forward(self, x, h, c):  # x [B, samples], h/c [B, HID]
            f = torch.log(self.front(x[:, None]).abs() + 1.0)
            f = torch.relu(self.c1(f))
            f = torch.relu(self.c2(f))
            f = torch.relu(self.c3(f)).mean(2)
            i, fg, g, o = (self.wx(f) + self.wh(h)).chunk(4, 1)
            c = torch.sigmoid(fg) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return torch.sigmoid(self.out(torch.relu(h))), h, c

    return nn.ModuleDict({"16000": Branch(16000), "8000": Branch(8000)})


def train(model, *, streams: int = 96, chunks: int = 24, steps: int = 600, batch: int = 16, seed: int = 0):
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(300 + seed)
        data = {sr: [stream(rng, sr, chunks) for _ in range(streams)] for sr in CHUNK}
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        gen = np.random.default_rng(seed)
        model.train()
        for step in range(steps):
            sr = (16000, 8000)[step % 2]
            idx = gen.choice(streams, batch, replace=False)
            x = torch.from_numpy(np.stack([data[sr][i][0] for i in idx])).view(batch, chunks, CHUNK[sr])
            y = torch.from_numpy(np.stack([data[sr][i][1] for i in idx]))
            h = torch.zeros(batch, HID)
            c = torch.zeros(batch, HID)
            loss = 0.0
            for k in range(chunks):
                p, h, c = model[str(sr)](x[:, k], h, c)
                loss = loss + F.binary_cross_entropy(p[:, 0].clamp(1e-6, 1 - 1e-6), y[:, k])
            opt.zero_grad()
            (loss / chunks).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return model


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


def _branch_graph(b: Any, sr: int, tag: str):
    from onnx import TensorProto, helper, numpy_helper

    nodes = []

    def const(name: str, arr: np.ndarray) -> str:
        out = f"{tag}_{name}"
        nodes.append(helper.make_node("Constant", [], [out], name=f"{tag}_{name}_const",
                                      value=numpy_helper.from_array(np.array(arr, order="C"), out + "_value")))
        return out

    def node(op: str, ins: list[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        outs = [f"{tag}_{name}_out{i}" if n_out > 1 else f"{tag}_{name}_out" for i in range(n_out)]
        nodes.append(helper.make_node(op, ins, outs, name=f"{tag}_{name}", **attrs))
        return outs

    def p(t) -> np.ndarray:
        return t.detach().numpy().astype(np.float32)

    k, s = FRONT[sr]
    x = node("Unsqueeze", ["input", const("axes1", np.array([1], np.int64))], "unsqueeze")[0]
    f = node("Conv", [x, const("front_w", p(b.front.weight)), const("front_b", p(b.front.bias))], "front",
             kernel_shape=[k], strides=[s])[0]
    f = node("Abs", [f], "abs")[0]
    f = node("Add", [f, const("one", np.array(1.0, np.float32))], "add1")[0]
    f = node("Log", [f], "log")[0]
    for name, conv, stride in (("conv1", b.c1, 1), ("conv2", b.c2, 2), ("conv3", b.c3, 2)):
        f = node("Conv", [f, const(name + "_w", p(conv.weight)), const(name + "_b", p(conv.bias))], name,
                 kernel_shape=[3], strides=[stride], pads=[1, 1])[0]
        f = node("Relu", [f], name + "_relu")[0]
    f = node("ReduceMean", [f], "pool", axes=[2], keepdims=0)[0]
    h = node("Gather", ["state", const("i0", np.array(0, np.int64))], "h_in", axis=0)[0]
    c = node("Gather", ["state", const("i1", np.array(1, np.int64))], "c_in", axis=0)[0]
    gx = node("Gemm", [f, const("wx", p(b.wx.weight)), const("bx", p(b.wx.bias))], "gates_x", transB=1)[0]
    gh = node("Gemm", [h, const("wh", p(b.wh.weight))], "gates_h", transB=1)[0]
    g = node("Add", [gx, gh], "gates")[0]
    gi, gf, gg, go = node("Split", [g, const("split", np.array([HID] * 4, np.int64))], "split", 4, axis=1)
    c2 = node("Add", [node("Mul", [node("Sigmoid", [gf], "sig_f")[0], c], "fc")[0],
                      node("Mul", [node("Sigmoid", [gi], "sig_i")[0], node("Tanh", [gg], "tanh_g")[0]], "ig")[0]],
              "c_new")[0]
    h2 = node("Mul", [node("Sigmoid", [go], "sig_o")[0], node("Tanh", [c2], "tanh_c")[0]], "h_new")[0]
    y = node("Gemm", [node("Relu", [h2], "relu_h")[0], const("wo", p(b.out.weight)), const("bo", p(b.out.bias))],
             "out", transB=1)[0]
    prob = node("Sigmoid", [y], "prob")[0]
    axes0 = const("axes0", np.array([0], np.int64))
    state = node("Concat", [node("Unsqueeze", [h2, axes0], "h_un")[0], node("Unsqueeze", [c2, axes0], "c_un")[0]],
                 "state_out", axis=0)[0]
    outs = [helper.make_tensor_value_info(prob, TensorProto.FLOAT, None),
            helper.make_tensor_value_info(state, TensorProto.FLOAT, None)]
    return helper.make_graph(nodes, f"branch_{sr}", [], outs)


def to_onnx(model) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    then_g = _branch_graph(model["16000"], 16000, "sr16k")
    else_g = _branch_graph(model["8000"], 8000, "sr8k")
    nodes = [
        helper.make_node("Constant", [], ["sr16000"], name="sr16000_const",
                         value=numpy_helper.from_array(np.array(16000, np.int64), "sr16000_value")),
        helper.make_node("Equal", ["sr", "sr16000"], ["is16k"], name="is16k"),
        helper.make_node("If", ["is16k"], ["output", "stateN"], name="by_sample_rate", then_branch=then_g,
                         else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "samples"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, HID]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, HID])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], producer_name="qcompiler-zoo-vad")
    m.ir_version = 8
    return m


# --------------------------------------------------------------------------------------------
# evaluation and artefacts
# --------------------------------------------------------------------------------------------


def eval_streams(n: int = 6, chunks: int = 60, seed: int = 11) -> list[tuple[int, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(sr, *stream(rng, sr, chunks)) for sr in (16000, 8000) for _ in range(n)]


def run_stream(session: Any, sr: int, audio: np.ndarray) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Probabilities per chunk and the feed of every chunk (the captured states), running ``session`` (any
    object with ``run_dict(feeds) -> {name: array}``) chunk by chunk."""
    state = np.zeros((2, 1, HID), np.float32)
    probs, feeds = [], []
    n = CHUNK[sr]
    for i in range(len(audio) // n):
        feed = {"input": audio[None, i * n:(i + 1) * n], "state": state, "sr": np.array(sr, np.int64)}
        feeds.append(feed)
        out = session.run_dict(feed)
        probs.append(float(out["output"].reshape(-1)[0]))
        state = out["stateN"]
    return np.array(probs), feeds


def stream_accuracy(model_path: str | os.PathLike, streams=None) -> float:
    """Frame accuracy (prob > 0.5 against the labels), in percent, over the evaluation streams."""
    from qcompiler.ir import load_model
    from qcompiler.ir.runtime import Session

    sess = Session(load_model(model_path))
    try:
        right = total = 0
        for sr, audio, labels in streams or eval_streams():
            probs, _ = run_stream(sess, sr, audio)
            right += int(((probs > 0.5) == (labels > 0.5)).sum())
            total += len(labels)
    finally:
        sess.close()
    return 100.0 * right / total


def _cache() -> Path:
    return cache_dir()


def onnx_path(seed: int = 0) -> Path:
    import onnx

    path, model = standin(f"vad-if-v{VERSION}", seed, build_model, train)
    if model is None:
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    onnx.save(to_onnx(model), tmp)
    os.replace(tmp, path)
    return path


def calibration_folder(n: int = 128, seed: int = 7) -> Path:
    """A folder of per-chunk ``.npz`` feeds (input, state, sr) captured by running the FP32 model over fresh
    streams at both sample rates: realistic states, one feed per file (the layout of issue #17)."""
    from qcompiler.ir import load_model
    from qcompiler.ir.runtime import Session

    folder = _cache() / f"vad-calib-{n}-{seed}"
    if folder.exists():
        return folder
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".vad-calib-"))
    sess = Session(load_model(onnx_path()))
    rng = np.random.default_rng(seed)
    feeds: list[dict[str, np.ndarray]] = []
    per = max(1, n // 8)
    while len(feeds) < n:
        for sr in (16000, 8000):
            audio, _ = stream(rng, sr, per)
            feeds += run_stream(sess, sr, audio)[1]
    sess.close()
    for i, f in enumerate(feeds[:n]):
        np.savez(tmp / f"{i:05d}.npz", **f)
    os.replace(tmp, folder)
    return folder
