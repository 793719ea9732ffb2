"""Error measures, defined once: every SQNR in qcompiler (reports, the guard's judge, mixed precision, CLE's
weight measure, GPTQ's per-layer fallback, tests, the benchmark and the development set) comes from here.

``db(signal, noise)`` is the ratio of two energies in dB (inf when the noise is zero, -inf when the signal is);
``sqnr_db(ref, got)`` is that ratio for two arrays (mean squares, float64).
"""

from __future__ import annotations

import numpy as np


def db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``: inf without noise, -inf without signal."""
    if noise <= 0:
        return float("inf")
    if signal <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def db_each(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """:func:`db` element by element (float64): inf where the noise is zero, -inf where the signal is."""
    signal = np.asarray(signal, np.float64)
    noise = np.asarray(noise, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(signal / noise)
    return np.where(noise <= 0, np.inf, np.where(signal <= 0, -np.inf, out))


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``got`` against ``ref``, in dB (inf when identical)."""
    ref = np.asarray(ref, dtype=np.float64)
    noise = ref - np.asarray(got, dtype=np.float64)
    return db(float(np.mean(ref ** 2)), float(np.mean(noise ** 2)))


def int8_per_tensor_sqnr(W: np.ndarray) -> float:
    """SQNR (dB) of symmetric per-tensor int8 quantization of ``W`` (scale = amax / 127, narrow range)."""
    W = W.astype(np.float64)
    amax = float(np.max(np.abs(W)))
    if amax == 0:
        return float("inf")
    s = amax / 127.0
    q = np.clip(np.round(W / s), -127, 127) * s
    return db(float(np.mean(W ** 2)), float(np.mean((W - q) ** 2)))
