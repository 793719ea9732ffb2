"""Differentiable fake quantization with ONNX QuantizeLinear/DequantizeLinear semantics.

    q = clamp(round_half_even(x / s) + z, qmin, qmax);    y = (q - z) * s

* round: straight-through estimator (the gradient of round is taken as 1);
* LSQ (Esser et al. 2020): the step size ``s`` is a parameter; its gradient flows through the formula
  above (``round(x/s) - x/s`` inside the range, ``qmin - z`` / ``qmax - z`` outside), scaled by
  ``g = 1 / sqrt(numel(x) * qmax)`` as the paper prescribes;
* LSQ+ (Bhalgat et al. 2020): a learnable offset ``beta`` for affine grids,
  ``y = clamp(round((x - beta)/s), qmin, qmax) * s + beta``, written back as the zero point
  ``z = round(-beta / s)``;
* AdaRound (Nagel et al. 2020): weights ``s * clamp(floor(W/s) + h(V), qmin, qmax)`` with the rectified
  sigmoid ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, zeta = 1.1, gamma = -0.1.

Forward values are exactly ONNX's (torch.round rounds half to even, division in float32), so a module
whose parameters were not trained reproduces onnxruntime's results.
"""

from __future__ import annotations

import math

import torch

ZETA, GAMMA = 1.1, -0.1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    return (x - x * g).detach() + x * g


def _shape_for(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return scale.reshape(shape)


class FakeQuant(torch.nn.Module):
    """One Q->DQ pair (activation) or DQ of a stored weight (``weight`` mode, see WeightFakeQuant)."""

    zero_point: torch.Tensor  # a buffer

    def __init__(self, name: str, scale, zero_point, qmin: int, qmax: int, axis: int | None = None,
                 fp8: bool = False):
        super().__init__()
        self.name = name
        self.qmin, self.qmax, self.axis, self.fp8 = qmin, qmax, axis, fp8
        self.log_scale = None
        self.scale = torch.nn.Parameter(torch.as_tensor(scale, dtype=torch.float32).clone(), requires_grad=False)
        z = torch.as_tensor(zero_point, dtype=torch.float32).clone()
        self.offset = torch.nn.Parameter(-z * self.scale.detach(), requires_grad=False)  # LSQ+ beta = -z*s
        self.register_buffer("zero_point", z)
        self.learn_offset = False
        self.enabled = True

    def extra_repr(self) -> str:
        return f"{self.name}, grid=[{self.qmin}, {self.qmax}], axis={self.axis}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        s: torch.Tensor = self.scale
        if self.scale.requires_grad:
            s = grad_scale(s, 1.0 / math.sqrt(max(x.numel(), 1) * max(self.qmax, 1)))
        s = _shape_for(s, x, self.axis)
        if self.fp8:
            return fp8_fake_quant(x, s)
        if self.learn_offset:
            beta = _shape_for(self.offset, x, self.axis)
            q = torch.clamp(round_ste((x - beta) / s), self.qmin, self.qmax)  # beta = -z*s: same grid
            return q * s + beta
        z = _shape_for(self.zero_point, x, self.axis)
        q = torch.clamp(round_ste(x / s) + z, self.qmin, self.qmax)
        return (q - z) * s

    def export_zero_point(self) -> torch.Tensor:
        if self.learn_offset:
            return torch.round(-self.offset.detach() / self.scale.detach())
        return self.zero_point


def fp8_fake_quant(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    y = torch.clamp(x / s, -448.0, 448.0)
    if hasattr(torch, "float8_e4m3fn"):
        r = y.to(torch.float8_e4m3fn).to(torch.float32)
    else:  # pragma: no cover - old torch
        r = y
    return (y + (r - y).detach()) * s


class WeightFakeQuant(torch.nn.Module):
    """A quantized weight: float master weight W (a parameter), its scale, and the rounding rule.

    ``mode``: ``nearest`` (round half to even, STE), or ``adaround`` (learned up/down rounding)."""

    zero_point: torch.Tensor  # a buffer

    def __init__(self, name: str, weight, scale, zero_point, qmin: int, qmax: int, axis: int | None,
                 block_size: int | None = None, fp8: bool = False):
        super().__init__()
        self.name = name
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone(), requires_grad=False)
        self.scale = torch.nn.Parameter(torch.as_tensor(scale, dtype=torch.float32).clone(), requires_grad=False)
        self.register_buffer("zero_point", torch.as_tensor(zero_point, dtype=torch.float32).clone())
        self.qmin, self.qmax, self.axis, self.block_size, self.fp8 = qmin, qmax, axis, block_size, fp8
        self.mode = "nearest"
        self.alpha: torch.nn.Parameter | None = None  # AdaRound's V

    def _expand(self, t: torch.Tensor) -> torch.Tensor:
        W = self.weight
        if self.block_size:
            ax = self.axis or 0
            t = torch.repeat_interleave(t, self.block_size, dim=ax)
            return t.narrow(ax, 0, W.shape[ax])
        return _shape_for(t, W, self.axis)

    def init_adaround(self) -> None:
        s = self._expand(self.scale.detach())
        w = self.weight.detach() / s
        rest = w - torch.floor(w)
        rest = torch.clamp(rest, 0.01, 0.99)
        v = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)  # h(V) == rest at the start
        self.alpha = torch.nn.Parameter(v)
        self.mode = "adaround"

    def h(self) -> torch.Tensor:
        if self.alpha is None:
            raise RuntimeError("init_adaround() must run first")
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def forward(self) -> torch.Tensor:
        s: torch.Tensor = self.scale
        if self.scale.requires_grad:
            s = grad_scale(s, 1.0 / math.sqrt(max(self.weight.numel(), 1) * max(self.qmax, 1)))
        s = self._expand(s)
        z = self._expand(self.zero_point)
        if self.fp8:
            return fp8_fake_quant(self.weight, s)
        if self.mode == "adaround":
            q = torch.clamp(torch.floor(self.weight.detach() / s.detach()) + self.h() + z, self.qmin, self.qmax)
            return (q - z) * s.detach()
        q = torch.clamp(round_ste(self.weight / s) + z, self.qmin, self.qmax)
        return (q - z) * s

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        """The integers to store: nearest rounding, or AdaRound's hard decision (h(V) >= 0.5)."""
        s = self._expand(self.scale)
        z = self._expand(self.zero_point)
        if self.mode == "adaround":
            up = (self.h() >= 0.5).float()
            return torch.clamp(torch.floor(self.weight / s) + up + z, self.qmin, self.qmax)
        return torch.clamp(torch.round(self.weight / s) + z, self.qmin, self.qmax)
