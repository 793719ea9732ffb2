"""Shared by the pass tests: the logits SQNR of a model against an FP32 file on the
digits test split."""

from __future__ import annotations

import pytest

from qcompiler.ir import load_model
from qcompiler.testing import run, sqnr_db


@pytest.fixture
def logits_sqnr(digits):
    """logits_sqnr(fp32_path, graph) -> SQNR (dB) of the graph's logits against the FP32 model's."""
    x = digits.load()["x_test"]

    def sqnr(fp32_path, q) -> float:
        return sqnr_db(run(load_model(str(fp32_path)), {"input": x})["logits"], run(q, {"input": x})["logits"])
    return sqnr
