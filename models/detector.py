"""A YOLOv8-style detector trained on synthetic shapes: the stand-in for the detectors int8 tools lose on.

Same structure as an ultralytics YOLOv8 export, scaled down: a CSP backbone (Conv-BN-SiLU, C2f blocks, SPPF),
a PAN neck, a decoupled head per level (a box branch with ``4 x REG_MAX`` distribution bins, a class branch),
and the export-time decoding inside the graph: DFL (softmax over the bins, then a fixed 1x1 conv with weights
0..15), distances to boxes around the anchor points, times the strides, and the class sigmoid, concatenated
into one ``[N, 4 + C, anchors]`` output: pixel coordinates (0..128) beside scores (0..1).

A COCO-trained YOLOv8 carries a few channels in its backbone and neck whose activations are one to two
orders of magnitude above the rest; a model trained for minutes on synthetic shapes does not grow them, so
this one starts with them (``OUTLIERS``: a few BatchNorm channels start with scale 20 and shift 8, and are
trained from there).  Without them int8 loses nothing here, which would prove nothing.

The task: 128x128 images of 1-4 filled rectangles, ellipses and triangles on a textured background (numpy,
seeded).  Trained once, deterministically, and cached like the digits zoo.  :func:`f1_against` scores a
model's detections against the FP32 model's own (score > 0.25, class-aware NMS at IoU 0.45, matched at IoU
0.5): what the issue measures on real detectors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .zoo import cache_dir, standin

IMAGE = 128
CLASSES = ("rectangle", "ellipse", "triangle")
REG_MAX = 16
STRIDES = (8, 16, 32)
VERSION = "2"
#: BatchNorm layers of the backbone and neck whose listed channels start with a large scale and shift (trained
#: from there): the few high-range channels a COCO-trained YOLOv8 carries in its C2f outputs, which a model
#: trained for minutes on synthetic shapes would not grow (see the module docstring)
OUTLIERS = {"b0.4.cv2.bn": (3, 11), "b1.1.cv2.bn": (5,), "n3.cv2.bn": (7, 20), "p4.cv2.bn": (2,)}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image [3, H, W] in [0, 1] (then standardised), its boxes [k, 4] (x1, y1, x2, y2) and labels [k]."""
    h = w = IMAGE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    grad = rng.uniform(-0.3, 0.3, (3, 2)).astype(np.float32)
    img = base[:, None, None] + grad[:, 0, None, None] * (xx / w - 0.5) + grad[:, 1, None, None] * (yy / h - 0.5)
    img = img + rng.normal(0, 0.06, (3, h, w)).astype(np.float32)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 5))):
        bw, bh = rng.uniform(12, 60, 2)
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        x2, y2 = x1 + bw, y1 + bh
        cls = int(rng.integers(len(CLASSES)))
        if cls == 0:
            mask = (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
        elif cls == 1:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            mask = ((xx - cx) / (bw / 2)) ** 2 + ((yy - cy) / (bh / 2)) ** 2 <= 1
        else:  # apex at the top centre, base at the bottom
            t = (yy - y1) / bh
            half = t * bw / 2
            cx = (x1 + x2) / 2
            mask = (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= half)
        color = rng.uniform(0, 1, 3).astype(np.float32)
        while np.abs(color - base).max() < 0.3:
            color = rng.uniform(0, 1, 3).astype(np.float32)
        img = np.where(mask[None], color[:, None, None] + rng.normal(0, 0.03, (3, h, w)).astype(np.float32), img)
        boxes.append([x1, y1, x2, y2])
        labels.append(cls)
    img = (np.clip(img, 0, 1) - 0.5) / 0.25
    return img.astype(np.float32), np.array(boxes, np.float32), np.array(labels, np.int64)


def dataset(n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    imgs, boxes, labels = [], [], []
    for _ in range(n):
        i, b, c = _draw(rng)
        imgs.append(i)
        boxes.append(b)
        labels.append(c)
    return np.stack(imgs), boxes, labels


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [A, 2] in pixels and their strides [A], level by level (row-major)."""
    pts, st = [], []
    for s in STRIDES:
        n = IMAGE // s
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
        pts.append(np.stack([(xs.reshape(-1) + 0.5) * s, (ys.reshape(-1) + 0.5) * s], 1))
        st.append(np.full(n * n, s, np.float32))
    return np.concatenate(pts), np.concatenate(st)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


def build_model():
    import torch
    import torch.nn as nn

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=False):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = Conv(c1, 2 * self.c, 1)
            self.cv2 = Conv((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c_ = c1 // 2
            self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(c_ * 4, c2, 1)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class DFL(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(REG_MAX, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)

        def forward(self, x):
            b, _, a = x.shape
            return self.conv(x.view(b, 4, REG_MAX, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    class Detector(nn.Module):
        def __init__(self, nc=len(CLASSES)):
            super().__init__()
            self.nc = nc
            w = (16, 32, 64, 96, 128)
            self.b0 = nn.Sequential(Conv(3, w[0], 3, 2), Conv(w[0], w[1], 3, 2), C2f(w[1], w[1], 1, True),
                                    Conv(w[1], w[2], 3, 2), C2f(w[2], w[2], 2, True))          # P3 /8
            self.b1 = nn.Sequential(Conv(w[2], w[3], 3, 2), C2f(w[3], w[3], 2, True))       # P4 /16
            self.b2 = nn.Sequential(Conv(w[3], w[4], 3, 2), C2f(w[4], w[4], 1, True), SPPF(w[4], w[4]))  # P5
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.n4 = C2f(w[4] + w[3], w[3])
            self.n3 = C2f(w[3] + w[2], w[2])
            self.d3 = Conv(w[2], w[2], 3, 2)
            self.p4 = C2f(w[2] + w[3], w[3])
            self.d4 = Conv(w[3], w[3], 3, 2)
            self.p5 = C2f(w[3] + w[4], w[4])
            chs = (w[2], w[3], w[4])
            c2, c3 = 64, 32
            self.box = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1))
                                     for c in chs)
            self.cls = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                     for c in chs)
            self.dfl = DFL()
            pts, st = anchors()
            # anchor centres in grid units of their level (ultralytics' make_anchors): boxes are decoded
            # there and scaled to pixels by the strides
            self.register_buffer("anchor_points", torch.from_numpy((pts / st[:, None]).T.copy())[None],
                                 persistent=False)  # [1, 2, A]
            self.register_buffer("strides", torch.from_numpy(st)[None, None], persistent=False)  # [1, 1, A]
            for b, s in zip(self.cls, STRIDES):  # prior for rare positives, as ultralytics initialises it
                b[-1].bias.data[:] = float(np.log(5 / nc / (IMAGE / s) ** 2))
            mods = dict(self.named_modules())
            for name, chans in OUTLIERS.items():
                with torch.no_grad():
                    mods[name].weight[list(chans)] = 20.0
                    mods[name].bias[list(chans)] = 8.0
            self.export_mode = True

        def levels(self, x):
            p3 = self.b0(x)
            p4 = self.b1(p3)
            p5 = self.b2(p4)
            n4 = self.n4(torch.cat([self.up(p5), p4], 1))
            o3 = self.n3(torch.cat([self.up(n4), p3], 1))
            o4 = self.p4(torch.cat([self.d3(o3), n4], 1))
            o5 = self.p5(torch.cat([self.d4(o4), p5], 1))
            return [torch.cat([self.box[i](f), self.cls[i](f)], 1) for i, f in enumerate((o3, o4, o5))]

        def raw(self, x):
            """[N, 4*REG_MAX + C, A]: box bins and class logits of every anchor."""
            b = x.shape[0]
            return torch.cat([f.view(b, 4 * REG_MAX + self.nc, -1) for f in self.levels(x)], 2)

        def decode(self, raw):
            box, cls = raw.split((4 * REG_MAX, self.nc), 1)
            lt, rb = self.dfl(box).chunk(2, 1)
            x1y1 = self.anchor_points - lt
            x2y2 = self.anchor_points + rb
            dbox = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * self.strides
            return torch.cat([dbox, cls.sigmoid()], 1)

        def forward(self, x):
            return self.decode(self.raw(x)) if self.export_mode else self.raw(x)

    return Detector()


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def _targets(boxes: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and anchor: the assigned box (or zeros), its label (-1: background), a positive mask.

    An anchor is positive for a box when its centre lies inside the box's central region (radius 2.5
    strides) and the box's longer side suits the level (<= 64 px at stride 8, 24-128 at 16, >= 48 at 32);
    among several boxes, the smallest wins; every box gets at least its nearest anchor on its best level."""
    pts, st = anchors()
    n, a = len(boxes), len(pts)
    tb = np.zeros((n, a, 4), np.float32)
    tl = np.full((n, a), -1, np.int64)
    for i, (bx, lb) in enumerate(zip(boxes, labels)):
        area = np.full(a, np.inf, np.float32)
        for b, c in zip(bx, lb):
            side = max(b[2] - b[0], b[3] - b[1])
            ok_level = np.where(st == 8, side <= 64, np.where(st == 16, (side >= 24) & (side <= 128), side >= 48))
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            inside = (pts[:, 0] > b[0]) & (pts[:, 0] < b[2]) & (pts[:, 1] > b[1]) & (pts[:, 1] < b[3])
            near = (np.abs(pts[:, 0] - cx) < 2.5 * st) & (np.abs(pts[:, 1] - cy) < 2.5 * st)
            cand = inside & near & ok_level
            if not cand.any():
                best = 8 if side <= 40 else 16 if side <= 80 else 32
                d = np.where(st == best, np.hypot(pts[:, 0] - cx, pts[:, 1] - cy), np.inf)
                cand = np.zeros(a, bool)
                cand[int(np.argmin(d))] = True
            ar = (b[2] - b[0]) * (b[3] - b[1])
            take = cand & (ar < area)
            area[take] = ar
            tb[i, take] = b
            tl[i, take] = c
    return tb, tl, tl >= 0


def train(model, *, n_train: int = 2000, epochs: int = 20, batch: int = 32, lr: float = 2e-3, seed: int = 0):
    """Deterministic training (one thread, fixed seeds): DFL + GIoU box losses, BCE class loss."""
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        x, boxes, labels = dataset(n_train, seed=100 + seed)
        tb, tl, pos = _targets(boxes, labels)
        x_t, tb_t, tl_t, pos_t = map(torch.from_numpy, (x, tb, tl, pos))
        pts, st = anchors()
        pts_t, st_t = torch.from_numpy(pts), torch.from_numpy(st)
        model.export_mode = False
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=5e-4)
        steps = epochs * ((len(x) + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        gen = torch.Generator().manual_seed(seed)
        bins = torch.arange(REG_MAX, dtype=torch.float32)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                idx = perm[i:i + batch]
                xb = x_t[idx]
                if torch.rand(1, generator=gen).item() < 0.5:  # horizontal flip with its boxes
                    xb = xb.flip(3)
                    flip = True
                else:
                    flip = False
                raw = model.raw(xb)                                   # [B, 64 + C, A]
                box, cls = raw.split((4 * REG_MAX, model.nc), 1)
                tbox, tlab, p = tb_t[idx], tl_t[idx], pos_t[idx]
                if flip:
                    tbox = torch.stack([IMAGE - tbox[..., 2], tbox[..., 1], IMAGE - tbox[..., 0], tbox[..., 3]], -1)
                    # anchors are symmetric in x within each level: mirror the assignment too
                    tbox, tlab, p = (_mirror(t) for t in (tbox, tlab, p))
                onehot = torch.zeros_like(cls)
                onehot.scatter_(1, tlab.clamp(min=0)[:, None], 1.0)
                onehot = onehot * p[:, None]
                npos = p.sum().clamp(min=1)
                loss_cls = F.binary_cross_entropy_with_logits(cls, onehot, reduction="sum") / npos
                pb = box.permute(0, 2, 1)[p].view(-1, 4, REG_MAX)     # [P, 4, bins]
                tgt = tbox[p]
                ap, s = pts_t.expand(p.shape[0], -1, -1)[p], st_t.expand(p.shape[0], -1)[p][:, None]
                dist = torch.cat([ap - tgt[:, :2], tgt[:, 2:] - ap], 1) / s   # l, t, r, b in strides
                dist = dist.clamp(0, REG_MAX - 1.01)
                left = dist.floor().long()
                wl = left.float() + 1 - dist
                logp = F.log_softmax(pb, -1)
                loss_dfl = -(logp.gather(-1, left[..., None])[..., 0] * wl
                             + logp.gather(-1, (left + 1)[..., None])[..., 0] * (1 - wl)).mean()
                pd = (F.softmax(pb, -1) * bins).sum(-1) * s
                pbox = torch.cat([ap - pd[:, :2], ap + pd[:, 2:]], 1)
                loss_iou = (1 - _giou(pbox, tgt)).mean()
                loss = loss_cls + 1.5 * loss_dfl + 2.5 * loss_iou
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
        model.export_mode = True
        model.eval()
    return model


_MIRROR: Any = None


def _mirror(t):
    """Reorder the anchor axis (1) of ``t`` as a horizontal flip of the image reorders the anchors."""
    global _MIRROR
    import torch

    if _MIRROR is None:
        idx, off = [], 0
        for s in STRIDES:
            n = IMAGE // s
            grid = np.arange(n * n).reshape(n, n)[:, ::-1].reshape(-1)
            idx.append(grid + off)
            off += n * n
        _MIRROR = torch.from_numpy(np.concatenate(idx))
    return t[:, _MIRROR]


def _giou(a, b):
    import torch

    ix1, iy1 = torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])
    ix2, iy2 = torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    aa = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = aa + ab - inter + 1e-7
    cx1, cy1 = torch.minimum(a[:, 0], b[:, 0]), torch.minimum(a[:, 1], b[:, 1])
    cx2, cy2 = torch.maximum(a[:, 2], b[:, 2]), torch.maximum(a[:, 3], b[:, 3])
    hull = (cx2 - cx1) * (cy2 - cy1) + 1e-7
    iou = inter / union
    return iou - (hull - union) / hull


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def detections(out: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[np.ndarray]:
    """Per image: [k, 6] rows (x1, y1, x2, y2, score, class) after class-aware NMS."""
    res = []
    for o in out:                                     # [4 + C, A]
        scores = o[4:]
        cls = scores.argmax(0)
        sc = scores.max(0)
        keep = sc > conf
        cx, cy, w, h = o[0, keep], o[1, keep], o[2, keep], o[3, keep]
        b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        s, c = sc[keep], cls[keep]
        order = np.argsort(-s, kind="stable")
        b, s, c = b[order], s[order], c[order]
        kept: list[int] = []
        for i in range(len(s)):
            if all(c[j] != c[i] or box_iou(b[i], b[j]) <= iou for j in kept):
                kept.append(i)
        res.append(np.concatenate([b[kept], s[kept, None], c[kept, None].astype(np.float32)], 1)
                   if kept else np.zeros((0, 6), np.float32))
    return res


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def f1_against(ref: list[np.ndarray], got: list[np.ndarray], iou: float = 0.5) -> float:
    """Detection F1 of ``got`` taking ``ref`` (the FP32 model's detections) as the truth."""
    tp = n_ref = n_got = 0
    for r, g in zip(ref, got):
        n_ref += len(r)
        n_got += len(g)
        used = np.zeros(len(r), bool)
        for d in g:  # highest score first (detections() sorts)
            best, bi = iou, -1
            for j, t in enumerate(r):
                if not used[j] and t[5] == d[5]:
                    v = box_iou(d, t)
                    if v >= best:
                        best, bi = v, j
            if bi >= 0:
                used[bi] = True
                tp += 1
    if n_ref == 0 and n_got == 0:
        return 1.0
    p = tp / n_got if n_got else 0.0
    r = tp / n_ref if n_ref else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def ground_truth_f1(out: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """F1 against the synthetic ground truth (is the FP32 model a working detector?)."""
    ref = [np.concatenate([b, np.ones((len(b), 1), np.float32), c[:, None].astype(np.float32)], 1)
           for b, c in zip(boxes, labels)]
    return f1_against(ref, detections(out))


# --------------------------------------------------------------------------------------------
# cached artefacts
# --------------------------------------------------------------------------------------------


def _cache() -> Path:
    return cache_dir()


def onnx_path(seed: int = 0) -> Path:
    """The trained detector exported with the TorchScript exporter (BatchNormalization kept), cached."""

    from .zoo import export

    path, model = standin(f"detector-v{VERSION}", seed, build_model, train)
    if model is None:
        return path
    return export(model, path, (3, IMAGE, IMAGE), input_name="images", output_name="output0")


def data_npz(n: int, *, split: str = "calib") -> Path:
    """Images only (``images``), from a split that training never saw: ``calib`` or ``eval``."""
    path = _cache() / f"detector-{split}-{n}.npz"
    if not path.exists():
        x, _, _ = dataset(n, seed={"calib": 7, "eval": 8}[split])
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        with open(tmp, "wb") as f:
            np.savez(f, images=x)
        os.replace(tmp, path)
    return path
