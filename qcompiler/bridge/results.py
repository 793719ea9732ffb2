"""Results of fine-tuning runs (torch-free, so pass modules and the registry can import them without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..pm.state import State


@dataclass
class FinetuneResult(State):
    """What a fine-tuning run did: method, iterations, time and the loss before and after."""

    fact = "finetune-report"
    method: str
    iterations: int
    seconds: float
    seconds_per_iteration: float
    loss_before: float
    loss_after: float
    written: dict[str, int]
    layers: int = 0
