"""The same model written the ways exporters write it (for tests and fuzzing).

    from qcompiler.zoo import forms
    m2 = forms.rewrite(model, "constant-nodes")    # every initializer becomes a Constant node

Forms of constants: ``initializers`` (as is), ``constant-nodes`` (tf2onnx, Paddle), ``identity`` (each
initializer read through an Identity, as torch writes de-duplicated weights), ``identity-constant`` (a
Constant node behind an Identity), ``inputs`` (initializers also listed as graph inputs, old exporters).
Other forms: ``opset-11`` / ``opset-13`` / ``opset-17`` / ``opset-21`` (onnx's version converter),
``symbolic-batch`` (axis 0 of inputs and outputs named ``batch``).
"""

from __future__ import annotations

import onnx
from onnx import helper

CONSTANT_FORMS = ("initializers", "constant-nodes", "identity", "identity-constant", "inputs")
OTHER_FORMS = ("opset-11", "opset-13", "opset-17", "opset-21", "symbolic-batch")
#: declared shapes that lie (exporters write these): outputs ``shape {}``, another rank, wrong dims, no shape;
#: every value_info ``shape {}`` or one rank too many; the first input ``shape {}`` or without a shape
SHAPE_FORMS = ("outputs-rank0", "outputs-wrong-rank", "outputs-wrong-dims", "outputs-no-shape", "value-info-rank0",
               "value-info-wrong-rank", "input-rank0", "input-no-shape")


class FormUnavailable(ValueError):
    """The model cannot be written in that form (onnx's version converter lacks an adapter)."""


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def _drop_initializer_inputs(g: onnx.GraphProto) -> None:
    """Initializers also listed as graph inputs (IR < 4 exporters) stop being inputs once they become nodes."""
    inits = {t.name for t in g.initializer}
    keep = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(keep)


def _constant_nodes(m: onnx.ModelProto, behind_identity: bool) -> onnx.ModelProto:
    g = m.graph
    _drop_initializer_inputs(g)
    nodes = []
    for t in g.initializer:
        name = t.name
        value = onnx.TensorProto()
        value.CopyFrom(t)
        const_out = name + "__const" if behind_identity else name
        value.name = const_out + "_value"
        nodes.append(helper.make_node("Constant", [], [const_out], name=name + "__constant", value=value))
        if behind_identity:
            nodes.append(helper.make_node("Identity", [const_out], [name], name=name + "__identity"))
    del g.initializer[:]
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return m


def _identity(m: onnx.ModelProto) -> onnx.ModelProto:
    g = m.graph
    _drop_initializer_inputs(g)
    nodes = []
    for t in g.initializer:
        name = t.name
        t.name = name + "__init"
        nodes.append(helper.make_node("Identity", [t.name], [name], name=name + "__identity"))
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return m


def _inputs(m: onnx.ModelProto) -> onnx.ModelProto:
    g = m.graph
    have = {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer
                   if t.name not in have)
    return m


def _symbolic_batch(m: onnx.ModelProto) -> onnx.ModelProto:
    inits = {t.name for t in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in inits or not vi.type.tensor_type.HasField("shape") or not vi.type.tensor_type.shape.dim:
            continue
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = "batch"
    return m


def _shape_lies(m: onnx.ModelProto, form: str) -> onnx.ModelProto:
    what, lie = form.split("-", 1)
    if what == "value":
        m = onnx.shape_inference.infer_shapes(m)
        vis = [vi for vi in m.graph.value_info if vi.type.HasField("tensor_type")]
        lie = lie.replace("info-", "")
    elif what == "outputs":
        vis = list(m.graph.output)
    else:
        inits = {t.name for t in m.graph.initializer}
        vis = [vi for vi in m.graph.input if vi.name not in inits][:1]
    for vi in vis:
        tt = vi.type.tensor_type
        if lie == "rank0":
            tt.shape.Clear()
            tt.shape.SetInParent()
        elif lie == "no-shape":
            tt.ClearField("shape")
        elif lie == "wrong-rank":
            tt.shape.dim.add().dim_value = 3
        elif lie == "wrong-dims":
            for d in tt.shape.dim:
                d.Clear()
                d.dim_value = 7
    return m


def rewrite(model: onnx.ModelProto, form: str) -> onnx.ModelProto:
    """A copy of ``model`` in ``form`` (CONSTANT_FORMS, OTHER_FORMS or SHAPE_FORMS)."""
    m = _copy(model)
    if form == "initializers":
        return m
    if form in SHAPE_FORMS:
        return _shape_lies(m, form)
    if form == "constant-nodes":
        return _constant_nodes(m, behind_identity=False)
    if form == "identity-constant":
        return _constant_nodes(m, behind_identity=True)
    if form == "identity":
        return _identity(m)
    if form == "inputs":
        return _inputs(m)
    if form == "symbolic-batch":
        return _symbolic_batch(m)
    if form.startswith("opset-"):
        from onnx import version_converter

        target = int(form.split("-")[1])
        current = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
        if current == target:
            return m
        try:
            out = version_converter.convert_version(m, target)
        except RuntimeError as exc:  # onnx has no adapter for some op between the two opsets
            raise FormUnavailable(f"opset {current} -> {target}: {str(exc).splitlines()[-1][:200]}") from exc
        out.ir_version = min(out.ir_version, 10)
        try:  # the converter can write invalid models (an attribute the target opset lacks)
            onnx.checker.check_model(out)
        except onnx.checker.ValidationError as exc:
            raise FormUnavailable(f"opset {current} -> {target}: the converter's output is invalid: "
                                  f"{str(exc).splitlines()[0][:200]}") from exc
        return out
    raise ValueError(f"unknown form '{form}' (forms: {', '.join(CONSTANT_FORMS + OTHER_FORMS + SHAPE_FORMS)})")
