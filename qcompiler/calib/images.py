"""Images as calibration data: the preprocessing spec and loading one image (Pillow).

Spec (``--preprocess`` or a recipe's ``calibration.preprocess``), space-separated ``key=value``::

    resize=256 crop=224 mean=0.485,0.456,0.406 std=0.229,0.224,0.225 layout=NCHW color=RGB

``resize=S`` scales the shorter side to S (``resize=HxW`` to exactly HxW), ``crop`` takes the centre,
pixels are divided by ``scale`` (255), then ``(x - mean) / std`` per channel; ``layout`` NCHW or NHWC,
``color`` RGB, BGR or L (grey), ``dtype`` of the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import CalibrationError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def parse_preprocess(spec: str | dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {"resize": None, "crop": None, "mean": None, "std": None, "layout": "NCHW",
                           "color": "RGB", "scale": 255.0, "dtype": "float32"}
    if spec is None:
        return out
    items = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in spec.split())
    for key, value in items:
        key = key.strip().lower().replace("-", "_")
        if key not in out:
            raise CalibrationError(f"unknown preprocessing key '{key}'", code="QC402",
                                   hint="keys: resize, crop, mean, std, layout (NCHW|NHWC), color (RGB|BGR|L), "
                                        "scale, dtype")
        if key in ("mean", "std"):
            value = [float(v) for v in str(value).split(",")] if isinstance(value, str) else list(value)
        elif key in ("resize", "crop"):
            value = [int(v) for v in str(value).replace("x", ",").split(",")]
        elif key == "scale":
            value = float(value)
        out[key] = value
    if out["layout"] not in ("NCHW", "NHWC"):
        raise CalibrationError(f"layout must be NCHW or NHWC, not '{out['layout']}'", code="QC402")
    return out


def load_image(path: Path, pp: dict[str, Any]) -> np.ndarray:
    """One preprocessed image with a batch axis of 1: [1, C, H, W] (NCHW) or [1, H, W, C]."""
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationError("reading images needs Pillow", code="QC401",
                               hint="pip install pillow, or convert the images to an .npz") from None
    try:
        img: Any = Image.open(path)
        img = img.convert("L" if pp["color"] == "L" else "RGB")
    except OSError as exc:
        raise CalibrationError(f"cannot read image '{path}': {exc}", code="QC402",
                               hint="remove or replace the file") from None
    if pp["resize"]:
        r = pp["resize"]
        if len(r) == 1:  # shorter side
            w, h = img.size
            s = r[0] / min(w, h)
            img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
        else:
            img = img.resize((r[1], r[0]), Image.Resampling.BILINEAR)
    if pp["crop"]:
        c = pp["crop"]
        ch, cw = (c[0], c[0]) if len(c) == 1 else (c[0], c[1])
        w, h = img.size
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if pp["color"] == "BGR":
        a = a[:, :, ::-1]
    a = a / pp["scale"]
    if pp["mean"] is not None:
        a = a - np.asarray(pp["mean"], np.float32)
    if pp["std"] is not None:
        a = a / np.asarray(pp["std"], np.float32)
    if pp["layout"] == "NCHW":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a[None].astype(pp["dtype"]))
