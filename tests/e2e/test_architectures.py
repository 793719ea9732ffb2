"""The FP32 rewrites on full-size architectures exported with BatchNormalization kept (slow)."""

from __future__ import annotations

import pytest

from qcompiler.ir import copy_graph, load_model
from qcompiler.ir.query import op_histogram
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.testing import assert_outputs_close


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenetv2-full", "efficientnet-b0", "decoder"])
def test_fp32_prep_exact_on_architectures(zoo, name):
    g = load_model(zoo.onnx_path(name))
    ref = copy_graph(g)
    res = run_pipeline(g, "tidy,fold-bn,merge-conv1x1,fold-residual,cle,cleanup", PassContext(), verify_each=True)
    assert "BatchNormalization" not in op_histogram(g)
    assert_outputs_close(ref, g, rtol=1e-4, batch=1)
    # no pass takes a second on these graphs (timing is benchmarked in tools/bench.py; this is a sanity bound)
    assert max(r.seconds for r in res.records) < 10.0
