"""Documents drawn with PIL for the development set: pages (for the layout and text detectors), text lines (for
the recogniser) and tables (for the table-structure model).

Everything is drawn from a seed with DejaVu fonts (matplotlib ships them, so every machine draws the same
glyphs) and real text (``text.py``); pictures are photos from scikit-image and scikit-learn.  Calibration and
evaluation use disjoint seeds, disjoint text and disjoint photos.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from . import text

_FONTS = {
    "sans": "DejaVuSans.ttf", "sans-bold": "DejaVuSans-Bold.ttf", "sans-italic": "DejaVuSans-Oblique.ttf",
    "serif": "DejaVuSerif.ttf", "serif-bold": "DejaVuSerif-Bold.ttf", "serif-italic": "DejaVuSerif-Italic.ttf",
    "mono": "DejaVuSansMono.ttf", "mono-bold": "DejaVuSansMono-Bold.ttf",
}


def font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@functools.lru_cache(maxsize=256)
def font(kind: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(font_dir(), _FONTS[kind]), size)


# photos: (module, name); split by index so calibration and evaluation never share one
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "china", "hubble_deep_field", "retina",
           "ihc", "camera", "moon", "coins", "cell", "page", "logo", "horse", "flower",
           "motorcycle_right", "color", "clock_motion", "microaneurysms", "brick", "grass", "gravel")


@functools.lru_cache(maxsize=None)
def photo_names() -> tuple[str, ...]:
    """The photos that load on this machine (scikit-image's bundled ones and scikit-learn's two)."""
    out = []
    for n in _PHOTOS:
        try:
            load_photo(n)
            out.append(n)
        except Exception:
            pass
    return tuple(out)


@functools.lru_cache(maxsize=64)
def load_photo(name: str) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        from PIL import Image

        import skimage.data as skd

        files = {"motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png",
                 "hubble_deep_field": "hubble_deep_field.jpg", "retina": "retina.jpg", "rocket": "rocket.jpg",
                 "clock_motion": "clock_motion.png"}
        fn = files.get(name, f"{name}.png")
        path = os.path.join(os.path.dirname(skd.__file__), fn)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        img = np.asarray(Image.open(path))
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-9))).astype(np.uint8)
    return img


def photos(split: str) -> tuple[str, ...]:
    names = photo_names()
    return names[0::2] if split == "calib" else names[1::2]


# ------------------------------------------------------------------------------------------------
# pages
# ------------------------------------------------------------------------------------------------

#: DocLayNet's classes, in the YOLO model's order
LAYOUT_CLASSES = ("Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header", "Picture",
                  "Section-header", "Table", "Text", "Title")


@dataclass
class Page:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    boxes: list[tuple[str, tuple[int, int, int, int]]]  # (class, (x0, y0, x1, y1)) in page pixels


def _wrap(draw, words: list[str], fnt, width: int) -> list[str]:
    lines, cur = [], ""
    for w in words:
        t = (cur + " " + w).strip()
        if draw.textlength(t, font=fnt) <= width or not cur:
            cur = t
        else:
            lines.append(cur)
            cur = w
    if cur:
        lines.append(cur)
    return lines


def _sentences(rng: np.random.Generator, split: str, n: int) -> str:
    s = text.sentences(split)
    i = int(rng.integers(0, len(s)))
    return " ".join(s[(i + k) % len(s)] for k in range(n))


_FORMULAS = ("f(x) = \u2211 a\u1d62 x\u2071 + b", "E = m c\u00b2", "\u222b\u2080\u00b9 g(t) dt = 1 - e\u207b\u00b9",
             "y = \u03c3(W x + b)", "p(y | x) = exp(s\u1d67) / \u2211 exp(s\u2096)", "\u2202L/\u2202w = 2 (w - w*)",
             "\u2016x - y\u2016\u00b2 \u2264 \u03b5", "A = \u03c0 r\u00b2", "n! \u2248 \u221a(2\u03c0n) (n/e)\u207f",
             "\u03bb\u2081 \u2265 \u03bb\u2082 \u2265 \u2026 \u2265 \u03bb\u2099",
             "x = (-b \u00b1 \u221a(b\u00b2 - 4ac)) / 2a")


def render_page(seed: int, split: str, size: tuple[int, int] = (827, 1169), scale: int = 2) -> Page:
    """An A4-proportioned page (``size`` = width, height in pixels) with a page header, a title, section
    headers, paragraphs, lists, a table, a picture with its caption, a formula, footnotes and a page footer, in
    one or two columns; drawn at ``scale`` times the size and reduced (antialiased, like a PDF rasteriser)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, 0 if split == "calib" else 1, 11])
    W, H = size[0] * scale, size[1] * scale
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    serif = rng.random() < 0.5
    body_kind = "serif" if serif else "sans"
    body = int(rng.integers(11, 15)) * scale
    lead = int(body * rng.uniform(1.25, 1.45))
    mx = int(W * rng.uniform(0.08, 0.12))
    top = int(H * 0.05)
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []

    def add(cls, x0, y0, x1, y1):
        boxes.append((cls, (x0 // scale, y0 // scale, x1 // scale, y1 // scale)))

    # page header
    f = font("sans-italic" if rng.random() < 0.5 else "sans", int(body * 0.8))
    t = " ".join(text.words(split)[int(rng.integers(0, 2000)):][:int(rng.integers(3, 7))]).title()
    d.text((mx, top), t, font=f, fill=(90, 90, 90))
    add("Page-header", mx, top, mx + int(d.textlength(t, font=f)), top + int(body * 0.8))
    y = top + 3 * body
    # title
    if rng.random() < 0.7:
        f = font("sans-bold" if rng.random() < 0.6 else "serif-bold", int(body * rng.uniform(1.7, 2.3)))
        words = _sentences(rng, split, 1).split()[: int(rng.integers(3, 9))]
        for line in _wrap(d, words, f, W - 2 * mx):
            w = int(d.textlength(line, font=f))
            x0 = (W - w) // 2
            d.text((x0, y), line, font=f, fill=(0, 0, 0))
            add("Title", x0, y, x0 + w, y + f.size)
            y += int(f.size * 1.3)
        y += body * 2
    cols = 2 if rng.random() < 0.4 else 1
    gap = int(W * 0.04)
    colw = (W - 2 * mx - (cols - 1) * gap) // cols
    bottom = H - int(H * 0.12)
    footnote_y = bottom
    has_foot = rng.random() < 0.5
    if has_foot:
        footnote_y = bottom - 3 * body
    y0_cols = y
    kinds = ["text", "text", "text", "section", "list", "table", "picture", "formula"]
    for c in range(cols):
        x = mx + c * (colw + gap)
        y = y0_cols
        first = True
        while y < footnote_y - 4 * lead:
            k = "section" if first and rng.random() < 0.6 else kinds[int(rng.integers(0, len(kinds)))]
            first = False
            room = footnote_y - y
            if k == "section":
                f = font(body_kind + "-bold", int(body * 1.25))
                num = f"{int(rng.integers(1, 9))}.{int(rng.integers(1, 6))} " if rng.random() < 0.5 else ""
                line = _wrap(d, (num + " ".join(_sentences(rng, split, 1).split()[:5])).split(), f, colw)[0]
                d.text((x, y), line, font=f, fill=(0, 0, 0))
                add("Section-header", x, y, x + int(d.textlength(line, font=f)), y + f.size)
                y += int(f.size * 2.0)
            elif k == "text":
                f = font(body_kind, body)
                lines = _wrap(d, _sentences(rng, split, int(rng.integers(2, 6))).split(), f, colw)
                lines = lines[: max(1, min(len(lines), (room - lead) // lead))]
                for line in lines:
                    d.text((x, y), line, font=f, fill=(0, 0, 0))
                    y += lead
                add("Text", x, y - lead * len(lines), x + colw, y - lead + body)
                y += lead
            elif k == "list":
                f = font(body_kind, body)
                for _ in range(int(rng.integers(2, 5))):
                    lines = _wrap(d, _sentences(rng, split, 1).split(), f, colw - 2 * body)
                    lines = lines[:3]
                    if y + lead * len(lines) > footnote_y - 2 * lead:
                        break
                    d.text((x + body // 2, y), "\u2022", font=f, fill=(0, 0, 0))
                    for j, line in enumerate(lines):
                        d.text((x + 2 * body, y + j * lead), line, font=f, fill=(0, 0, 0))
                    wmax = max(int(d.textlength(ln, font=f)) for ln in lines)
                    add("List-item", x + body // 2, y, x + 2 * body + wmax, y + lead * (len(lines) - 1) + body)
                    y += lead * len(lines) + lead // 2
                y += lead // 2
            elif k == "table":
                rows, ncol = int(rng.integers(3, 7)), int(rng.integers(2, 5))
                rh = int(body * 1.8)
                if rows * rh + 3 * lead > room:
                    continue
                f = font(body_kind, int(body * 0.9))
                fb = font(body_kind + "-bold", int(body * 0.9))
                cw = colw // ncol
                grid = rng.random() < 0.6
                for r in range(rows):
                    for cc in range(ncol):
                        if r == 0:
                            s, ff = text.words(split)[int(rng.integers(0, 3000))][:10].title(), fb
                        elif cc == 0:
                            s, ff = text.words(split)[int(rng.integers(0, 3000))][:10], f
                        else:
                            s, ff = f"{rng.uniform(0, 1000):.{int(rng.integers(0, 3))}f}", f
                        d.text((x + cc * cw + body // 3, y + r * rh + (rh - ff.size) // 2), s, font=ff,
                               fill=(0, 0, 0))
                    if grid or r in (0, 1):
                        d.line([(x, y + r * rh), (x + ncol * cw, y + r * rh)], fill=(0, 0, 0), width=scale)
                d.line([(x, y + rows * rh), (x + ncol * cw, y + rows * rh)], fill=(0, 0, 0), width=scale)
                if grid:
                    for cc in range(ncol + 1):
                        d.line([(x + cc * cw, y), (x + cc * cw, y + rows * rh)], fill=(0, 0, 0), width=scale)
                add("Table", x, y, x + ncol * cw, y + rows * rh)
                y += rows * rh + lead // 2
                y = _caption(d, rng, split, body_kind, body, x, y, colw, add, "Table") + lead
            elif k == "picture":
                names = photos(split)
                ph = load_photo(names[int(rng.integers(0, len(names)))])
                pw = int(colw * rng.uniform(0.5, 0.95))
                phh = int(pw * ph.shape[0] / ph.shape[1])
                if phh + 4 * lead > room:
                    continue
                x0 = x + (colw - pw) // 2
                img.paste(Image.fromarray(ph).resize((pw, phh), Image.BILINEAR), (x0, y))
                add("Picture", x0, y, x0 + pw, y + phh)
                y += phh + lead // 2
                y = _caption(d, rng, split, body_kind, body, x, y, colw, add, "Figure") + lead
            elif k == "formula":
                f = font("serif-italic", int(body * 1.15))
                s = _FORMULAS[int(rng.integers(0, len(_FORMULAS)))]
                w = int(d.textlength(s, font=f))
                x0 = x + (colw - w) // 2
                d.text((x0, y), s, font=f, fill=(0, 0, 0))
                add("Formula", x0, y, x0 + w, y + int(f.size * 1.2))
                y += int(f.size * 2.2)
    if has_foot:
        f = font(body_kind, int(body * 0.75))
        d.line([(mx, footnote_y - body // 2), (mx + W // 4, footnote_y - body // 2)], fill=(0, 0, 0), width=scale)
        lines = _wrap(d, (f"{int(rng.integers(1, 9))} " + _sentences(rng, split, 1)).split(), f, W - 2 * mx)[:2]
        for j, line in enumerate(lines):
            d.text((mx, footnote_y + j * int(f.size * 1.3)), line, font=f, fill=(0, 0, 0))
        add("Footnote", mx, footnote_y, W - mx, footnote_y + int(f.size * 1.3) * len(lines))
    f = font("sans", int(body * 0.8))
    t = str(int(rng.integers(1, 300)))
    w = int(d.textlength(t, font=f))
    fy = H - int(H * 0.06)
    d.text(((W - w) // 2, fy), t, font=f, fill=(60, 60, 60))
    add("Page-footer", (W - w) // 2, fy, (W + w) // 2, fy + f.size)
    small = img.resize(size, Image.LANCZOS)
    return Page(np.asarray(small), boxes)


def _caption(d, rng, split, body_kind, body, x, y, colw, add, word) -> int:
    f = font(body_kind + "-italic" if body_kind == "serif" else "sans-italic", int(body * 0.9))
    s = f"{word} {int(rng.integers(1, 12))}: " + _sentences(rng, split, 1)
    lines = _wrap(d, s.split(), f, colw)[:2]
    for j, line in enumerate(lines):
        d.text((x, y + j * int(f.size * 1.3)), line, font=f, fill=(0, 0, 0))
    wmax = max(int(d.textlength(ln, font=f)) for ln in lines)
    add("Caption", x, y, x + wmax, y + int(f.size * 1.3) * len(lines))
    return y + int(f.size * 1.3) * len(lines)


# ------------------------------------------------------------------------------------------------
# text lines
# ------------------------------------------------------------------------------------------------


def render_line(seed: int, split: str) -> tuple[np.ndarray, str]:
    """A printed text line (1-6 words of real text, a DejaVu face, dark ink on a light background, a little
    blur and noise): RGB uint8 with its string."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([seed, 0 if split == "calib" else 1, 22])
    s = text.sentences(split)[int(rng.integers(0, len(text.sentences(split))))].split()
    n = int(rng.integers(1, 6))
    i = int(rng.integers(0, max(1, len(s) - n + 1)))
    string = ""
    for w in s[i:i + n]:  # whole words, at most 28 characters
        if string and len(string) + 1 + len(w) > 28:
            break
        string = (string + " " + w).strip()
    string = string[:28]
    kind = list(_FONTS)[int(rng.integers(0, len(_FONTS)))]
    size = int(rng.integers(24, 44))
    f = font(kind, size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    w = int(probe.textlength(string, font=f))
    pad = int(size * rng.uniform(0.15, 0.5))
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    img = Image.new("RGB", (w + 2 * pad, int(size * 1.35) + 2 * pad // 2), bg)
    ImageDraw.Draw(img).text((pad, pad // 2), string, font=f, fill=ink)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    a = np.asarray(img).astype(np.float32) + rng.normal(0, rng.uniform(0, 6), (img.height, img.width, 1))
    return np.clip(a, 0, 255).astype(np.uint8), string


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------


def render_table(seed: int, split: str) -> tuple[np.ndarray, int, int]:
    """A table image: ``rows x cols`` cells (2-8 by 2-6) with real words and numbers, a bold header, full grid
    lines or only horizontal rules; RGB uint8, with its row and column count."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, 0 if split == "calib" else 1, 33])
    rows, cols = int(rng.integers(2, 9)), int(rng.integers(2, 7))
    kind = ("sans", "serif")[int(rng.integers(0, 2))]
    size = int(rng.integers(14, 22))
    f, fb = font(kind, size), font(kind + "-bold", size)
    ws = text.words(split)
    cells = []
    for r in range(rows):
        row = []
        for c in range(cols):
            if r == 0:
                row.append((ws[int(rng.integers(0, len(ws)))][:12].title(), fb))
            elif c == 0 or rng.random() < 0.3:
                row.append((" ".join(ws[int(rng.integers(0, len(ws)))][:10] for _ in range(int(rng.integers(1, 3)))),
                            f))
            else:
                row.append((f"{rng.uniform(0, 10 ** int(rng.integers(1, 5))):.{int(rng.integers(0, 3))}f}", f))
        cells.append(row)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    padx, pady = int(size * 0.6), int(size * 0.45)
    colw = [max(int(probe.textlength(cells[r][c][0], font=cells[r][c][1])) for r in range(rows)) + 2 * padx
            for c in range(cols)]
    rh = size + 2 * pady
    m = int(rng.integers(8, 30))
    W, H = sum(colw) + 2 * m, rows * rh + 2 * m
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    grid = rng.random() < 0.7
    lw = int(rng.integers(1, 3))
    xs = np.cumsum([m] + colw)
    for r in range(rows + 1):
        if grid or r in (0, 1, rows):
            d.line([(m, m + r * rh), (W - m, m + r * rh)], fill=(0, 0, 0), width=lw)
    if grid:
        for x in xs:
            d.line([(int(x), m), (int(x), H - m)], fill=(0, 0, 0), width=lw)
    for r in range(rows):
        for c in range(cols):
            s, ff = cells[r][c]
            d.text((int(xs[c]) + padx, m + r * rh + pady), s, font=ff, fill=(0, 0, 0))
    return np.asarray(img), rows, cols
