"""scikit-learn's bundled digits as a tiny image-classification task.

1797 8x8 grey images, upsampled (bilinear) to 16x16 and standardised; a fixed stratified split:
70 % train (calibration data comes from here), 30 % test (accuracy is measured here).  Everything
is deterministic: the split, the upsampling and, with :func:`train`, the weights.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

IMAGE = 16
MEAN = 0.3053
STD = 0.3189


@functools.lru_cache(maxsize=1)
def load() -> dict[str, np.ndarray]:
    """{'x_train','y_train','x_test','y_test'}; x is float32 [N,1,16,16], y int64 [N]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    x = _upsample(x, IMAGE)
    x = (x - MEAN) / STD
    rng = np.random.default_rng(1234)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(0.7 * len(idx)))
        train_idx.extend(idx[:k])
        test_idx.extend(idx[k:])
    train_idx = np.sort(np.array(train_idx))
    test_idx = np.sort(np.array(test_idx))
    return {"x_train": x[train_idx].astype(np.float32), "y_train": y[train_idx],
            "x_test": x[test_idx].astype(np.float32), "y_test": y[test_idx]}


def _upsample(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (half-pixel centres) upsampling of [N,C,h,w] to [N,C,size,size] in numpy."""
    n, c, h, w = x.shape

    def weights(src: int, dst: int):
        pos = (np.arange(dst) + 0.5) * src / dst - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        frac = (pos - lo).astype(np.float32)
        m = np.zeros((dst, src), np.float32)
        m[np.arange(dst), lo] += 1 - frac
        m[np.arange(dst), hi] += frac
        return m

    wy, wx = weights(h, size), weights(w, size)
    return np.einsum("yh,nchw,xw->ncyx", wy, x, wx).astype(np.float32)


def calibration_samples(n: int = 256, offset: int = 0) -> np.ndarray:
    """The first ``n`` training images (calibration never sees the test split)."""
    data = load()
    x = data["x_train"]
    if n > len(x):
        reps = int(np.ceil(n / len(x)))
        x = np.concatenate([x] * reps)
    return x[offset:offset + n]


def write_calibration_npz(path: str, n: int = 256, input_name: str = "input", with_labels: bool = False) -> str:
    data = load()
    arrays = {input_name: calibration_samples(n)}
    if with_labels:
        arrays["__labels__"] = data["y_train"][:n]
    np.savez(path, **arrays)
    return path


def evaluate(model: Any, *, split: str = "test", opt_level: str = "basic", batch: int = 256) -> float:
    """Top-1 accuracy (percent) of an ONNX model (path, ModelProto bytes or gs.Graph) through onnxruntime."""
    from qcompiler.ir import load_model
    from qcompiler.ir.runtime import Session

    graph = load_model(model) if isinstance(model, str) else model
    sess = Session(graph, opt_level=opt_level)
    data = load()
    x, y = data[f"x_{split}"], data[f"y_{split}"]
    name = sess.input_names[0]
    shape = sess.sess.get_inputs()[0].shape
    fixed = isinstance(shape[0], int) and shape[0] > 0
    step = shape[0] if fixed else batch
    correct = 0
    for i in range(0, len(x), step):
        xb = x[i:i + step]
        if fixed and len(xb) < step:
            pad = np.zeros((step - len(xb),) + xb.shape[1:], xb.dtype)
            out = sess.run({name: np.concatenate([xb, pad])})[0][:len(xb)]
        else:
            out = sess.run({name: xb})[0]
        correct += int((out.argmax(axis=1) == y[i:i + step]).sum())
    sess.close()
    return 100.0 * correct / len(x)


def train(model, *, epochs: int = 20, lr: float = 3e-3, batch: int = 64, seed: int = 0, weight_decay: float = 1e-4,
          augment: bool = True):
    """Deterministic training on the train split (single thread, fixed seed, deterministic kernels)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    was_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        data = load()
        x = torch.from_numpy(data["x_train"])
        y = torch.from_numpy(data["y_train"])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps = epochs * ((len(x) + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                idx = perm[i:i + batch]
                xb, yb = x[idx], y[idx]
                if augment:
                    shift = torch.randint(-1, 2, (2,), generator=gen)
                    xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(threads)
    return model
