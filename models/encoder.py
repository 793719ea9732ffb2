"""A BERT-class sentence encoder trained on synthetic topics: the stand-in for the transformers int8 tools lose on.

The structure of a BERT / sentence-transformers export: token and position embeddings with LayerNorm, six
post-LayerNorm layers (``LN(x + attention(x))``, ``LN(h + FFN(h))``, erf GELU), four heads, an additive
attention mask built in the graph the way Hugging Face builds it (``(1 - mask) * finfo(float32).min``), and
mean pooling over the valid tokens (``sentence_embedding``) beside ``last_hidden_state``.

Real BERT checkpoints carry a few hidden dimensions whose LayerNorm outputs are one to two orders of magnitude
above the rest (the outliers SmoothQuant and LLM.int8() were made for); a small model trained for minutes does
not grow them, so this one starts with them: two dimensions of every LayerNorm scale start at 20 (trained from
there).  The task: classify 8 synthetic topics (each a peaked distribution over a 120-token vocabulary) from
sentences of 6-32 tokens, padded to 32.  :func:`cosine_against` is the metric of the issue: the mean cosine of
sentence embeddings to the FP32 model's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .zoo import cache_dir, standin

VOCAB = 120
SEQ = 32
HIDDEN = 128
HEADS = 4
LAYERS = 6
FFN = 512
TOPICS = 8
OUTLIER_DIMS = (17, 93)
VERSION = "1"


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids [n, SEQ] int64, attention_mask [n, SEQ] int64, topic [n])."""
    topic_rng = np.random.default_rng(4242)  # the topics are fixed; the sentences depend on ``seed``
    topics = topic_rng.dirichlet(np.full(VOCAB - 2, 0.08), TOPICS)
    background = topic_rng.dirichlet(np.full(VOCAB - 2, 1.0))
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, SEQ), np.int64)
    mask = np.zeros((n, SEQ), np.int64)
    label = rng.integers(0, TOPICS, n)
    for i in range(n):
        length = int(rng.integers(6, SEQ + 1))
        mix = 0.6 * topics[label[i]] + 0.4 * background
        ids[i, 0] = 1  # [CLS]
        ids[i, 1:length] = 2 + rng.choice(VOCAB - 2, length - 1, p=mix)
        mask[i, :length] = 1
    return ids, mask, label


def build_model():
    import torch
    import torch.nn as nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
            self.o = nn.Linear(HIDDEN, HIDDEN)
            self.ln1 = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.fc1, self.fc2 = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)
            self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.act = nn.GELU()

        def forward(self, x, ext):
            b, t, _ = x.shape
            d = HIDDEN // HEADS

            def heads(y):
                return y.view(b, t, HEADS, d).transpose(1, 2)

            q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
            s = torch.matmul(q, k.transpose(-1, -2)) / float(np.sqrt(d)) + ext
            a = torch.matmul(s.softmax(-1), v).transpose(1, 2).reshape(b, t, HIDDEN)
            h = self.ln1(x + self.o(a))
            return self.ln2(h + self.fc2(self.act(self.fc1(h))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(VOCAB, HIDDEN)
            self.pos = nn.Embedding(SEQ, HIDDEN)
            self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
            self.head = nn.Linear(HIDDEN, TOPICS)  # training only
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    with torch.no_grad():
                        m.weight[list(OUTLIER_DIMS)] = 20.0

        def forward(self, input_ids, attention_mask):
            t = input_ids.shape[1]
            pos = torch.arange(t, device=input_ids.device)[None]
            x = self.ln(self.word(input_ids) + self.pos(pos))
            m = attention_mask.to(torch.float32)
            ext = (1.0 - m[:, None, None, :]) * torch.finfo(torch.float32).min
            for layer in self.layers:
                x = layer(x, ext)
            pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
            return x, pooled

    return Encoder()


def train(model, *, n_train: int = 6000, epochs: int = 8, batch: int = 64, lr: float = 1e-3, seed: int = 0):
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        ids, mask, label = map(torch.from_numpy, dataset(n_train, seed=200 + seed))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
        steps = epochs * ((n_train + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n_train, generator=gen)
            for i in range(0, n_train, batch):
                idx = perm[i:i + batch]
                _, pooled = model(ids[idx], mask[idx])
                loss = F.cross_entropy(model.head(pooled), label[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return model


def cosine_against(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over sentences of the cosine between sentence embeddings [n, H]."""
    a = ref.astype(np.float64)
    b = got.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def _cache() -> Path:
    return cache_dir()


def onnx_path(seed: int = 0) -> Path:
    import torch

    path, model = standin(f"encoder-v{VERSION}", seed, build_model, train)
    if model is None:
        return path
    ids, mask, _ = dataset(2, seed=1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    dyn = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
           "last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), tmp, dynamo=False,
                          do_constant_folding=False, opset_version=17, input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "sentence_embedding"], dynamic_axes=dyn)
    os.replace(tmp, path)
    return path


def data_npz(n: int, *, split: str = "calib") -> Path:
    path = _cache() / f"encoder-{split}-{n}.npz"
    if not path.exists():
        ids, mask, _ = dataset(n, seed={"calib": 7, "eval": 8}[split])
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        with open(tmp, "wb") as f:
            np.savez(f, input_ids=ids, attention_mask=mask)
        os.replace(tmp, path)
    return path
