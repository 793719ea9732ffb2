"""State the quantization passes hand each other (see :mod:`qcompiler.pm.state`).

=====================  ==================  ==========================================  ===========================
fact                   class               provided by                                 read by
=====================  ==================  ==========================================  ===========================
``calibrated``         CalibrationStats    calibrate (qcompiler/calib/stats.py)        insert-qdq
``bn-stats``           BatchNormStats      fold-bn (cle rescales it)                   absorb-bias, bias-correct
``fp32-reference``     FP32Reference       insert-qdq                                  bias-correct, adaround, lsq,
                                                                                       mixed-precision
``qdq-plan``           QuantizationRecord  insert-qdq                                  the API (recipe written
                                                                                       beside the output), demo
=====================  ==================  ==========================================  ===========================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from ..pm.state import State

if TYPE_CHECKING:  # pragma: no cover
    from .emit import EmitResult
    from .plan import Plan


@dataclass(frozen=True)
class BNRecord:
    """Statistics of one folded BatchNormalization, for the layer output it now describes."""

    layer: str  # the layer it was folded into
    mean: np.ndarray  # per-channel mean of the post-BN output (beta), float64
    std: np.ndarray  # per-channel standard deviation (|gamma|), float64


@dataclass
class BatchNormStats(State):
    """Per-channel mean and std of every folded BatchNormalization's output (data-free bias correction and
    absorb-bias), keyed by the name of the layer output tensor."""

    fact = "bn-stats"
    records: dict[str, BNRecord] = field(default_factory=dict)

    def get(self, tensor: str) -> BNRecord | None:
        return self.records.get(tensor)

    def with_record(self, tensor: str, record: BNRecord) -> "BatchNormStats":
        """A copy with one more (or a replaced) record: state objects are never changed in place."""
        return replace(self, records={**self.records, tensor: record})

    def save(self, directory: Path) -> dict[str, Any]:
        directory.mkdir(parents=True, exist_ok=True)
        data = {t: {"layer": r.layer, "mean": r.mean.tolist(), "std": r.std.tolist()} for t, r in self.records.items()}
        (directory / "bn_stats.json").write_text(json.dumps(data, sort_keys=True) + "\n")
        return {"file": "bn_stats.json"}

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "BatchNormStats":
        data = json.loads((directory / meta["file"]).read_text())
        return cls({t: BNRecord(r["layer"], np.asarray(r["mean"], np.float64), np.asarray(r["std"], np.float64))
                    for t, r in data.items()})


@dataclass
class FP32Reference(State):
    """The FP32 graph exactly as it was right before insert-qdq (layer names line up with the Q/DQ graph)."""

    fact = "fp32-reference"
    graph: gs.Graph

    def save(self, directory: Path) -> dict[str, Any]:
        from ..ir.io import save_model
        from ..ir.graph import copy_graph

        directory.mkdir(parents=True, exist_ok=True)
        g = copy_graph(self.graph)
        g.qc_meta.path = None
        save_model(g, directory / "reference.onnx", external_data="auto", source_graph=self.graph)
        return {"file": "reference.onnx"}

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "FP32Reference":
        from ..ir import load_model

        return cls(load_model(directory / meta["file"]))


@dataclass
class QuantizationRecord(State):
    """What insert-qdq did: the placement plan, the quantization parameters, and the recipe it used (written
    beside the output model)."""

    fact = "qdq-plan"
    plan: "Plan"
    emitted: "EmitResult"
    recipe_used: dict[str, Any]
    #: the calibration statistics it used (the guard computes other ranges from them)
    stats: Any = None
