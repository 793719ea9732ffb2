"""The model zoo: named builders, ONNX export that keeps BatchNormalization, and a weight cache.

Digits-trained models (``trained=True``) are trained once, deterministically, and cached outside
the repository (``$QCOMPILER_CACHE`` or ``~/.cache/qcompiler/zoo``); ONNX files are cached there too.

    from qcompiler.zoo import zoo
    path = zoo.onnx_path("resnet")            # trained on digits, exported with BN kept, cached
    path = zoo.onnx_path("resnet50")          # architecture with random weights (seeded)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ZOO_VERSION = "3"  # trained models (bump to retrain)
ARCH_VERSION = "2"  # random-weight architectures (bump when builders or BN randomization change)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], Any]
    input_shape: tuple[int, ...]  # without the batch dim
    trained: bool  # trained on digits (1x16x16 input, 10 classes)
    description: str
    train_kwargs: dict = field(default_factory=dict)
    opset: int = 17


def _entries() -> dict[str, ZooEntry]:
    from . import archs as A

    small = (1, 16, 16)
    big = (3, 224, 224)
    e = [
        ZooEntry("resnet", lambda: A.ResNet(A.BasicBlock, [1, 1, 1], [16, 32, 64], in_ch=1, num_classes=10,
                                            stem="small"),
                 small, True, "ResNet with basic blocks (residual Add, downsample 1x1 shortcuts), digits-trained"),
        ZooEntry("resnet-bottleneck", lambda: A.ResNet(A.Bottleneck, [1, 1], [16, 24], in_ch=1, num_classes=10,
                                                       stem="small"),
                 small, True, "ResNet with bottleneck blocks (1x1-3x3-1x1), digits-trained"),
        ZooEntry("mobilenetv2", lambda: A.MobileNetV2(A.MobileNetV2.SMALL, in_ch=1, num_classes=10, stem_stride=1,
                                                      stem_ch=16, last_ch=128),
                 small, True, "MobileNetV2 (depthwise, ReLU6, inverted residuals), digits-trained",
                 {"epochs": 25}),
        ZooEntry("conv1x1", lambda: A.ConvConv1x1(in_ch=1), small, True,
                 "plain conv3x3 -> conv1x1 stack (merge-conv1x1 target), digits-trained"),
        ZooEntry("transformer", lambda: A.TinyViT(in_ch=1, image=16, patch=4, dim=64, depth=2, heads=4, mlp=128),
                 small, True, "ViT-style encoder (MatMul/Gemm, LayerNormalization, Softmax, GELU), digits-trained",
                 {"epochs": 30, "lr": 2e-3}),
        ZooEntry("resnet18", lambda: A.ResNet(A.BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512]), big, False,
                 "ResNet-18 architecture (random weights)"),
        ZooEntry("resnet50", lambda: A.ResNet(A.Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512]), big, False,
                 "ResNet-50 architecture (random weights)"),
        ZooEntry("mobilenetv2-full", lambda: A.MobileNetV2(), big, False,
                 "MobileNetV2 1.0 architecture (random weights)"),
        ZooEntry("efficientnet-b0", lambda: A.EfficientNetB0(), big, False,
                 "EfficientNet-B0-like (SiLU, squeeze-excite, depthwise 5x5; random weights)"),
        ZooEntry("text-cls", lambda: A.TextDirectionClassifier(), (3, 48, 192), False,
                 "text direction classifier, PaddleOCR-style MobileNetV3-small x0.35 on 3x48x192 (random weights)"),
        ZooEntry("decoder", lambda: A.Decoder(), (64, 16, 16), False,
                 "ConvTranspose decoder with BN (incl. a grouped deconv; random weights)"),
    ]
    return {x.name: x for x in e}


ENTRIES: dict[str, ZooEntry] = {}


def entries() -> dict[str, ZooEntry]:
    if not ENTRIES:
        ENTRIES.update(_entries())
    return ENTRIES


def names(trained: bool | None = None) -> list[str]:
    return [n for n, e in entries().items() if trained is None or e.trained == trained]


def get(name: str) -> ZooEntry:
    all_ = entries()
    if name not in all_:
        import difflib

        close = difflib.get_close_matches(name, list(all_), n=1)
        from qcompiler.diagnostics import UsageError

        raise UsageError(f"unknown zoo model '{name}'", hint=(f"did you mean '{close[0]}'? " if close else "")
                         + "zoo models: " + ", ".join(all_))
    return all_[name]


def cache_dir() -> Path:
    d = Path(os.environ.get("QCOMPILER_CACHE", Path.home() / ".cache" / "qcompiler")) / "zoo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(entry: ZooEntry, **extra: Any) -> str:
    blob = json.dumps({"v": ZOO_VERSION if entry.trained else ARCH_VERSION, "name": entry.name,
                       "shape": entry.input_shape, "trained": entry.trained,
                       "train": entry.train_kwargs, "opset": entry.opset, **extra}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _atomic_replace(tmp: str, final: Path) -> None:
    os.replace(tmp, final)


def cached_training(model, wpath: Path, train: Callable[[Any], None]):
    """``model`` with the weights cached at ``wpath``, or trained by ``train(model)`` and cached (atomically);
    in eval mode."""
    import torch

    if wpath.exists():
        model.load_state_dict(torch.load(wpath, map_location="cpu", weights_only=True))
    else:
        train(model)
        fd, tmp = tempfile.mkstemp(dir=wpath.parent, suffix=".pt.tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        _atomic_replace(tmp, wpath)
    model.eval()
    return model


def standin(stem: str, seed: int, build_model: Callable[[], Any], train: Callable[..., None]):
    """A stand-in model's cached ONNX path and, when that file is not there yet, its trained torch module (the
    weights cached too) for the caller to export; ``(path, None)`` when the file exists."""
    import torch

    path = cache_dir() / f"{stem}-s{seed}.onnx"
    if path.exists():
        return path, None
    torch.manual_seed(seed)
    return path, cached_training(build_model(), cache_dir() / f"{stem}-s{seed}.pt", lambda m: train(m, seed=seed))


def build(name: str, *, seed: int = 0):
    """The torch module (trained and cached if the entry is digits-trained)."""
    import torch

    entry = get(name)
    torch.manual_seed(seed)
    model = entry.build()
    model.eval()
    if not entry.trained:
        _randomize_bn(model, seed)
        return model
    from . import digits

    return cached_training(model, cache_dir() / f"{name}-{_key(entry, seed=seed)}.pt",
                           lambda m: digits.train(m, seed=seed, **entry.train_kwargs))


def _randomize_bn(model, seed: int) -> None:
    """Give BatchNorm layers statistics like those of pretrained networks: per-channel scales spread
    over two orders of magnitude (log-uniform gamma and variance), so folding makes per-channel weight
    ranges as unequal as in a real MobileNetV2 (the case CLE exists for)."""
    import torch

    g = torch.Generator().manual_seed(seed + 17)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.exp(torch.empty(n).uniform_(-3.0, 1.0, generator=g)))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.exp(torch.empty(n).uniform_(-3.0, 1.0, generator=g)))


def export(model, path: str | os.PathLike, input_shape: tuple[int, ...], *, opset: int = 17, batch: int = 1,
           dynamic_batch: bool = True, input_name: str = "input", output_name: str = "logits") -> Path:
    """Export with the TorchScript exporter, keeping BatchNormalization nodes (no constant folding)."""
    import torch

    path = Path(path)
    dummy = torch.zeros((batch,) + tuple(input_shape))
    dyn = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), tmp, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, opset_version=opset, input_names=[input_name],
                          output_names=[output_name], dynamic_axes=dyn)
    os.replace(tmp, path)
    return path


def onnx_path(name: str, *, seed: int = 0, opset: int | None = None, dynamic_batch: bool = True) -> Path:
    """Path of the cached ONNX export of a zoo model (built, trained and exported on first use)."""
    entry = get(name)
    op = opset or entry.opset
    path = cache_dir() / f"{name}-{_key(entry, seed=seed, opset=op, dyn=dynamic_batch)}.onnx"
    if not path.exists():
        model = build(name, seed=seed)
        export(model, path, entry.input_shape, opset=op, dynamic_batch=dynamic_batch)
    return path


def calibration_npz(name: str, n: int = 128, *, seed: int = 0, path: str | os.PathLike | None = None) -> Path:
    """Calibration data for a zoo model: digits training images, or seeded random data for the others."""
    import numpy as np

    entry = get(name)
    out = Path(path) if path is not None else cache_dir() / f"calib-{name}-{n}-{seed}.npz"
    if out.exists() and path is None:
        return out
    if entry.trained:
        from . import digits

        x = digits.calibration_samples(n)
    else:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n,) + entry.input_shape).astype(np.float32)
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as f:
        np.savez(f, input=x)
    os.replace(tmp, out)
    return out
