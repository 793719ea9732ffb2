"""The hard models of issue #16, behind one interface: a trained stand-in, its calibration data and its task metric.

    from qcompiler.zoo import hard
    m = hard.get("detector")
    m.onnx_path(), m.calib_data(128)          # model and calibration data (cached)
    m.evaluate(fp32_path, int8_path)          # {"metric": ..., "sqnr_db": {...}, ...}

* ``detector``: YOLOv8-style (models/detector.py); metric: detection F1 against the FP32 model's detections
  (goal >= 0.95).
* ``encoder``: BERT-class post-LN sentence encoder with a padding mask (models/encoder.py); metric: mean cosine
  of sentence embeddings to FP32 (goal >= 0.99).
* ``vad-if``: streaming VAD with every layer inside ``If`` branches and recurrent state (models/vad.py); metric:
  frame accuracy in percent (goal: within 1 point of FP32).

Every evaluation also reports each output's SQNR against FP32 on the evaluation data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


from qcompiler.quant.numerics import sqnr_db as _sqnr


def _outputs(path: str | os.PathLike, feeds: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    from qcompiler.ir import load_model
    from qcompiler.ir.runtime import Session

    sess = Session(load_model(path))
    try:
        n = len(next(iter(feeds.values())))
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, batch):
            out = sess.run_dict({k: v[i:i + batch] for k, v in feeds.items()})
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}
    finally:
        sess.close()


@dataclass(frozen=True)
class HardModel:
    name: str
    description: str
    goal: str
    onnx_path: Callable[[], Path]
    calib_data: Callable[[int], Path]
    evaluate: Callable[[str | os.PathLike, str | os.PathLike], dict[str, Any]]
    metric: str


def _detector() -> HardModel:
    from . import detector as D

    def evaluate(ref_path, q_path):
        # 400 images, about 1,200 FP32 detections: one detection moves F1 by less than 0.001 (100 images moved
        # it by 0.003, as much as the gaps between tools)
        x = np.load(D.data_npz(400, split="eval"))["images"]
        ref = _outputs(ref_path, {"images": x})["output0"]
        got = _outputs(q_path, {"images": x})["output0"]
        return {"metric": D.f1_against(D.detections(ref), D.detections(got)),
                "sqnr_db": {"output0": _sqnr(ref, got), "output0.boxes": _sqnr(ref[:, :4], got[:, :4]),
                            "output0.scores": _sqnr(ref[:, 4:], got[:, 4:])}}

    return HardModel("detector", "YOLOv8-style detector (DFL head, boxes and scores in one output)",
                     "F1 >= 0.95", D.onnx_path, lambda n: D.data_npz(n, split="calib"), evaluate, "F1 vs FP32")


def _encoder() -> HardModel:
    from . import encoder as E

    def evaluate(ref_path, q_path):
        d = np.load(E.data_npz(256, split="eval"))
        feeds = {"input_ids": d["input_ids"], "attention_mask": d["attention_mask"]}
        ref = _outputs(ref_path, feeds)
        got = _outputs(q_path, feeds)
        m = d["attention_mask"].astype(bool)
        return {"metric": E.cosine_against(ref["sentence_embedding"], got["sentence_embedding"]),
                "sqnr_db": {"sentence_embedding": _sqnr(ref["sentence_embedding"], got["sentence_embedding"]),
                            "last_hidden_state": _sqnr(ref["last_hidden_state"][m], got["last_hidden_state"][m])}}

    return HardModel("encoder", "BERT-class post-LN encoder (6 layers, additive finfo.min mask, mean pooling)",
                     "cosine >= 0.99", E.onnx_path, lambda n: E.data_npz(n, split="calib"), evaluate,
                     "embedding cosine")


def _vad() -> HardModel:
    from . import vad as V

    def evaluate(ref_path, q_path):
        streams = V.eval_streams()
        from qcompiler.ir import load_model
        from qcompiler.ir.runtime import Session

        probs = {}
        for key, path in (("ref", ref_path), ("got", q_path)):
            sess = Session(load_model(path))
            probs[key] = np.concatenate([V.run_stream(sess, sr, a)[0] for sr, a, _ in streams])
            sess.close()
        labels = np.concatenate([lab for _, _, lab in streams]) > 0.5
        acc = {k: 100.0 * float(((p > 0.5) == labels).mean()) for k, p in probs.items()}
        return {"metric": acc["got"], "fp32_metric": acc["ref"],
                "sqnr_db": {"output": _sqnr(probs["ref"], probs["got"])}}

    return HardModel("vad-if", "streaming VAD, every layer inside If branches, state in and out",
                     "accuracy within 1 point of FP32", V.onnx_path, V.calibration_folder, evaluate,
                     "frame accuracy %")


BUILDERS: dict[str, Callable[[], HardModel]] = {"detector": _detector, "encoder": _encoder, "vad-if": _vad}
NAMES = list(BUILDERS)


def get(name: str) -> HardModel:
    if name not in BUILDERS:
        raise KeyError(f"unknown hard model '{name}' (known: {', '.join(NAMES)})")
    return BUILDERS[name]()
