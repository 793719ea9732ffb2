"""The interface every model of the development set has: the shipped file, real calibration and evaluation
feeds (disjoint, cached as folders of ``.npz`` feeds), and a task metric against the FP32 model's own results."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from qcompiler.quant.numerics import db

from . import fetch

#: bump when the inputs of any model change (cached feeds are rebuilt)
DATA_VERSION = "1"


@dataclass(frozen=True)
class Goal:
    """``metric >= value`` (or ``<=`` when not ``higher``), the issue's goal for the default pipeline."""

    value: float
    higher: bool = True
    relative_to_fp32: bool = False  # the goal is on metric - FP32's own score on ground truth (e.g. within 1 pt)

    def met(self, metric: float) -> bool:
        return metric >= self.value if self.higher else metric <= self.value

    def __str__(self) -> str:
        return (">= " if self.higher else "<= ") + f"{self.value:g}"


class RealModel:
    """One shipped model.  Subclasses set the class attributes and implement :meth:`feeds`, :meth:`summarize`
    and :meth:`compare`."""

    name: str = ""
    kind: str = ""
    description: str = ""
    wheel: str = ""
    member: str = ""
    metric: str = ""
    goal: Goal = Goal(0.0)
    calib_count: int = 32  # feeds
    eval_count: int = 64
    batch_fixed: bool = False  # the model's batch dimension is fixed at 1

    # -- the model -------------------------------------------------------------------------------

    def onnx_path(self) -> Path:
        return fetch.file_path(self.wheel, self.member)

    # -- data ------------------------------------------------------------------------------------

    def feeds(self, split: str, n: int) -> Iterator[dict[str, np.ndarray]]:
        """``n`` feeds of real inputs (``split`` is ``calib`` or ``eval``; the two never share a source)."""
        raise NotImplementedError

    def data_dir(self, split: str, n: int | None = None) -> Path:
        """The feeds as a folder of ``.npz`` files (one feed each, named by input), built once and cached."""
        n = n if n is not None else (self.calib_count if split == "calib" else self.eval_count)
        out = fetch.cache_root() / "data" / f"{self.name}-{split}-{n}-v{DATA_VERSION}"
        if out.is_dir() and (out / "DONE").exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            for i, feed in enumerate(self.feeds(split, n)):
                np.savez(tmp / f"feed_{i:04d}.npz", **feed)
            (tmp / "DONE").write_text("")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    def calib_data(self, n: int | None = None) -> Path:
        return self.data_dir("calib", n)

    def eval_feeds(self) -> Iterator[dict[str, np.ndarray]]:
        d = self.data_dir("eval")
        for f in sorted(d.glob("feed_*.npz")):
            with np.load(f) as z:
                yield {k: z[k] for k in z.files}

    # -- metric ----------------------------------------------------------------------------------

    def summarize(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Any:
        """What the metric needs from one feed's outputs (detections, strings, masks), kept small."""
        raise NotImplementedError

    def compare(self, ref: list[Any], got: list[Any]) -> dict[str, Any]:
        """``{"metric": ..., **extras}`` of the quantized model's summaries against FP32's."""
        raise NotImplementedError

    def evaluate(self, ref_path: str | os.PathLike, q_path: str | os.PathLike) -> dict[str, Any]:
        """Both models over the evaluation feeds: the task metric and each output's SQNR against FP32."""
        ref_s, q_s = session(ref_path), session(q_path)
        names = [o.name for o in ref_s.get_outputs()]
        sig: dict[str, float] = {n: 0.0 for n in names}
        err: dict[str, float] = {n: 0.0 for n in names}
        refs, gots = [], []
        for feed in self.eval_feeds():
            a = _float32(dict(zip(names, ref_s.run(names, _typed(ref_s, feed)))))
            b = _float32(dict(zip(names, q_s.run(names, _typed(q_s, feed)))))
            for n in names:
                if np.issubdtype(a[n].dtype, np.floating):
                    x, y = a[n].astype(np.float64), b[n].astype(np.float64)
                    sig[n] += float((x ** 2).sum())
                    err[n] += float(((x - y) ** 2).sum())
            refs.append(self.summarize(feed, a))
            gots.append(self.summarize(feed, b))
        out = self.compare(refs, gots)
        out["sqnr_db"] = {n: db(sig[n], err[n]) for n in names if sig[n] > 0}
        return out


_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _typed(sess, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed in the float types the session's inputs declare (an fp16 model takes fp16 images)."""
    want = {i.name: _ORT_FLOAT.get(i.type) for i in sess.get_inputs()}
    return {k: v.astype(want[k]) if want.get(k) is not None and v.dtype.kind == "f" else v for k, v in feed.items()}


def _float32(outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outs.items()}


def has_bfloat16(path: str | os.PathLike) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    bf16 = onnx.TensorProto.BFLOAT16
    return any(t.data_type == bf16 for t in m.graph.initializer) or \
        any(v.type.tensor_type.elem_type == bf16 for v in list(m.graph.value_info) + list(m.graph.input)
            + list(m.graph.output))


def has_float8(path: str | os.PathLike) -> bool:
    """The model holds float8 tensors (fp8 Q/DQ)."""
    import onnx

    fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
           onnx.TensorProto.FLOAT8E5M2FNUZ}
    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_type in fp8 for t in m.graph.initializer) or \
        any(a.t.data_type in fp8 for n in m.graph.node if n.op_type == "Constant" for a in n.attribute)


def has_float16(path: str | os.PathLike) -> bool:
    import onnx

    f16 = onnx.TensorProto.FLOAT16
    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == f16 for t in m.graph.initializer) or \
        any(v.type.tensor_type.elem_type == f16 for v in list(m.graph.value_info) + list(m.graph.input)
            + list(m.graph.output))


def session(path: str | os.PathLike):
    """An onnxruntime CPU session as a user would open one (default optimizations), quiet.  Models with float8
    Q/DQ run at the basic level: onnxruntime 1.32's extended CPU optimizations compute U2Net's fp8 graph wrongly
    (first output 0.06 dB against FP32 where the basic level gives 26.3 dB; docs/benchmarks.md), and TensorRT,
    not onnxruntime's CPU kernels, is what an fp8 model is for.  Models with bf16 parts run through
    qcompiler.quant.floattype.emulated (onnxruntime's CPU kernels have no bf16); with the environment variable
    ``QCOMPILER_EVAL_FP16=tensorrt``, fp16 parts too (float32 compute, fp16 storage, as TensorRT runs them:
    onnxruntime's CPU fp16 convolutions accumulate less precisely, docs/benchmarks.md)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if has_float8(path):
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    fp16 = os.environ.get("QCOMPILER_EVAL_FP16", "native") == "tensorrt" and has_float16(path)
    if has_bfloat16(path) or fp16:  # onnxruntime's CPU kernels lack bf16: float32 compute with bf16 storage rounding
        from qcompiler.ir import load_model
        from qcompiler.ir.io import serialize_for_runtime
        from qcompiler.quant.floattype import emulated

        blob = serialize_for_runtime(emulated(load_model(path), ("bf16", "fp16") if fp16 else ("bf16",)))
        assert blob is not None
        return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def imagenet_chw(rgb: np.ndarray, bgr: bool = False, divisor: float = 255.0) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> float32 ``[3, H, W]`` normalised with ImageNet mean/std (channels in BGR order
    first when ``bgr``, as Paddle models expect; the statistics are applied in that order too)."""
    x = rgb[..., ::-1] if bgr else rgb
    x = x.astype(np.float32) / np.float32(divisor)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), np.float32)


def resize(rgb: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """``size`` = (width, height)."""
    from PIL import Image

    m = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[method]
    return np.asarray(Image.fromarray(rgb).resize(size, m))
