"""Placement plan: TensorRT rules P1/P4/P5/P7/P8/P9/T3 on real graphs."""

from __future__ import annotations


from qcompiler.diagnostics import DiagnosticEngine
from qcompiler.ir import load_model
from qcompiler.pm import PassContext, run_pipeline
from qcompiler.quant.plan import make_plan
from qcompiler.quant.recipe import default_recipe, from_data

from ..builders import G


def _prep(path):
    g = load_model(path)
    run_pipeline(g, "cleanup,fold-constants,fold-bn,cleanup", PassContext())
    return g


def _edges(plan):
    return {e: a for a in plan.acts for e in a.edges}


def test_resnet_placement(zoo_model):
    g = _prep(zoo_model("resnet"))
    diags = DiagnosticEngine()
    plan = make_plan(g, default_recipe(), diags)
    edges = _edges(plan)
    by = {n.name: n for n in g.nodes}
    convs = [n for n in g.nodes if n.op == "Conv"]
    # P1: every conv input 0 quantized, every conv weight per-channel axis 0
    assert all((c.name, 0) in edges for c in convs)
    assert {w.node for w in plan.weights} == {c.name for c in convs}
    assert all(w.axis == 0 for w in plan.weights)
    # P4: each residual Add has exactly one quantized input, and it is not a conv-branch output
    adds = [n for n in g.nodes if n.op == "Add"]
    assert adds
    for a in adds[:-1]:
        q = [i for i in (0, 1) if (a.name, i) in edges]
        assert len(q) == 1, a.name
        other = a.inputs[1 - q[0]]
        assert other.inputs[0].op == "Conv"  # the fused branch stays float
    # the last block feeds the float head (GAP -> Flatten -> float Gemm): nothing requantizes its output,
    # so its skip input is not quantized either (an int8 Add output would only be converted back)
    assert not any((adds[-1].name, i) in edges for i in (0, 1))
    # downsample blocks: the skip input that is quantized is the shortcut conv's output
    down = [a for a in adds[:-1] if all(i.inputs and i.inputs[0].op == "Conv" for i in a.inputs)]
    assert down
    for a in down:
        skip = next(i for i in (0, 1) if (a.name, i) in edges)
        sc = a.inputs[skip].inputs[0]
        assert sc.inputs[1].shape[2:] == (1, 1) or list(sc.inputs[1].shape[2:]) == [1, 1]
    # P8: nothing quantized where it feeds a graph output; P9: the 10-way head stays float with a reason
    head = next(n for n in g.nodes if n.op == "Gemm")
    assert head.name in plan.float_nodes and "K or N < 16" in plan.float_nodes[head.name]
    assert any(d.rule == "P9" for d in diags)
    assert all(by[c].op != "Identity" for c, _ in edges)


def test_transformer_bmm_float_by_default_quantized_by_option(zoo_model):
    g = _prep(zoo_model("transformer"))
    plan = make_plan(g, default_recipe())
    bmm = [n for n in g.nodes if n.op == "MatMul" and not n.inputs[1].__class__.__name__ == "Constant"
           and n.name in plan.float_nodes]
    assert len(bmm) == 4 and all("attention" in plan.float_nodes[n.name] for n in bmm)
    linear = [w for w in plan.weights if w.node.endswith("MatMul") or "MatMul" in w.node]
    assert linear and all(w.axis == 1 for w in linear)  # MatMul weights [K, N]: last axis
    plan2 = make_plan(g, from_data({"options": {"quantize_bmm": True}}))
    e2 = _edges(plan2)
    assert all((n.name, 0) in e2 and (n.name, 1) in e2 for n in bmm)


def test_pooling_quantized_when_a_quantized_layer_follows():
    b = G()
    x = b.input("x", [1, 32, 8, 8])
    h = b.relu(b.conv(x, 32, 32))
    p = b.node("GlobalAveragePool", [h])
    y = b.gemm(b.node("Flatten", [p]), 32, 64)
    b.output(y)
    g = b.graph()
    plan = make_plan(g, default_recipe())
    edges = _edges(plan)
    gap = next(n for n in g.nodes if n.op == "GlobalAveragePool")
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    assert (gap.name, 0) in edges and (gemm.name, 0) in edges
    assert next(w for w in plan.weights if w.node == gemm.name).axis == 0  # transB=1


def test_concat_inputs_and_output_share_one_scale():
    b = G()
    x = b.input("x", [1, 16, 8, 8])
    a1 = b.relu(b.conv(x, 16, 16))
    a2 = b.relu(b.conv(x, 16, 16, k=1))
    cat = b.node("Concat", [a1, a2], axis=1)
    y = b.conv(cat, 32, 16)
    y2 = b.conv(a1, 16, 16)  # a1 is also quantized for another consumer
    b.output(y)
    b.output(y2)
    g = b.graph()
    plan = make_plan(g, default_recipe())
    assert len(plan.groups) == 1
    group = set(plan.groups[0])
    assert {a1, a2, cat} <= group
    assert a2 in plan.stats_only  # observed for the shared scale, not quantized itself


def test_gemm_axis_follows_transb():
    for tb, axis in ((True, 0), (False, 1)):
        b = G()
        x = b.input("x", [4, 32])
        b.output(b.gemm(x, 32, 32, trans_b=tb))
        plan = make_plan(b.graph(), default_recipe())
        assert plan.weights[0].axis == axis


def test_onnxruntime_target_quantizes_outputs_and_biases(zoo_model):
    g = _prep(zoo_model("resnet"))
    plan = make_plan(g, default_recipe("onnxruntime"))
    edges = _edges(plan)
    # the Add is a quantized op there: both of its inputs are quantized
    adds = [n for n in g.nodes if n.op == "Add"]
    assert all((a.name, 0) in edges and (a.name, 1) in edges for a in adds)
    assert all(w.bias_index == 2 for w in plan.weights if g.nodes[[n.name for n in g.nodes].index(w.node)].op == "Conv")
    assert all(a.spec.dtype == "u8" for a in plan.acts)
