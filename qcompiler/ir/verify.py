"""Graph verification: structural invariants that every pass must keep, plus onnx.checker."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from ..diagnostics import VerificationError
from .io import PROTO_LIMIT, export_model
from .tensordata import all_tensor_protos, model_nbytes, tensor_nbytes

#: Operator domains that onnxruntime and TensorRT know (others need a custom-op library).
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "trt", "ai.onnx.preview.training"}


@dataclass
class Problem:
    message: str
    node: str | None = None


def _check_graph(g: gs.Graph, outer: set[str], problems: list[Problem], where: str) -> None:
    available = set(outer)
    available.update(t.name for t in g.inputs)
    for t in g.tensors().values():
        if isinstance(t, gs.Constant):
            available.add(t.name)
    produced: dict[str, str] = {}
    for inp in g.inputs:
        if inp.inputs:
            problems.append(Problem(f"{where}graph input '{inp.name}' is also produced by a node",
                                    inp.inputs[0].name))
    for node in g.nodes:
        for i in node.inputs:
            if not i.name:
                continue  # optional input left out
            if isinstance(i, gs.Constant):
                continue
            if i.name not in available:
                if any(p is not None for p in i.inputs) and i.name not in produced:
                    problems.append(Problem(f"{where}node '{node.name}' ({node.op}) reads '{i.name}' before it is "
                                            "produced: the graph is not topologically sorted", node.name))
                else:
                    problems.append(Problem(f"{where}node '{node.name}' ({node.op}) reads '{i.name}', which no node "
                                            "produces and which is neither a graph input nor an initializer",
                                            node.name))
        for o in node.outputs:
            if not o.name:
                continue
            if o.name in produced:
                problems.append(Problem(f"{where}tensor '{o.name}' is produced twice (by '{produced[o.name]}' and "
                                        f"'{node.name}')", node.name))
            elif o.name in available and o.name not in outer:
                problems.append(Problem(f"{where}tensor '{o.name}' produced by '{node.name}' clashes with a graph "
                                        "input or initializer of the same name", node.name))
            produced[o.name] = node.name
            available.add(o.name)
        for value in node.attrs.values():
            subs = [value] if isinstance(value, gs.Graph) else (
                [v for v in value if isinstance(v, gs.Graph)] if isinstance(value, (list, tuple)) else [])
            for sg in subs:
                _check_graph(sg, available, problems, f"{where}subgraph '{sg.name}' of '{node.name}': ")
    for out in g.outputs:
        if out.name not in available:
            problems.append(Problem(f"{where}graph output '{out.name}' is never produced"))
    names = [n.name for n in g.nodes if n.name]
    if len(names) != len(set(names)):
        seen: set[str] = set()
        dup = names[0]
        for dup in names:
            if dup in seen:
                break
            seen.add(dup)
        problems.append(Problem(f"{where}node name '{dup}' is used more than once", dup))


def structural_problems(graph: gs.Graph) -> list[Problem]:
    problems: list[Problem] = []
    _check_graph(graph, set(), problems, "")
    for n in graph.nodes:
        if n.domain and n.domain not in KNOWN_DOMAINS and not any(f.domain == n.domain for f in graph.functions):
            problems.append(Problem(f"node '{n.name}' uses op '{n.op}' from unknown domain '{n.domain}'", n.name))
    return problems


def checker_problems(graph: gs.Graph, *, full_check: bool = False) -> list[Problem]:
    model = export_model(graph)
    if model_nbytes(model) > PROTO_LIMIT // 2 or any(
            t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        # Large models, and weights still in an external file (the checker would look for it relative to the
        # working directory): check the structure with weights stripped (the checker never needs values).
        model = strip_weights(model)
    _zero_external(model.graph)
    # a graph input or output declared without a shape runs in onnxruntime; the checker wants the field.  Declared
    # shapes are hints (qcompiler/ir/shapes.py): the checker sees an unknown-rank placeholder, not an error
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.SetInParent()
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as exc:
        text = str(exc).strip().splitlines()
        msg = text[0] if text else "onnx.checker failed"
        node = None
        for line in text:
            if "==> Context: Bad node spec for node. Name:" in line:
                node = line.split("Name:")[1].split("OpType")[0].strip()
        return [Problem(f"onnx.checker: {msg}", node)]
    except Exception as exc:  # shape inference errors from full_check
        return [Problem(f"onnx.checker: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")]
    return []


def _zero_external(graph: onnx.GraphProto) -> None:
    """External tensors left (in subgraphs, or small): zero bytes in the proto, for the checker's eyes only."""
    for t in all_tensor_protos(graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            n = tensor_nbytes(t)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = bytes(n)


def type_problems(graph: gs.Graph) -> list[Problem]:
    """What strict ONNX type and shape inference finds wrong with the graph (a Conv fed integers, a Gemm whose
    dimensions cannot match, a bad attribute), declarations of outputs and intermediate tensors ignored: those
    are hints (qcompiler.ir.shapes.reconcile_shapes corrects them).  Empty when inference succeeds."""
    model = strip_weights(export_model(graph), keep_below=1 << 16)
    _zero_external(model.graph)
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError, ValidationError or RuntimeError
        text = str(exc).strip()
        node = None
        if "node name: " in text:
            node = text.split("node name: ", 1)[1].split(")")[0].strip() or None
        return [Problem(f"ONNX type/shape inference: {' '.join(text.split())[:400]}", node)]
    return []


def strip_weights(model: onnx.ModelProto, keep_below: int = 4096) -> onnx.ModelProto:
    """A copy of ``model`` in which large initializers are declared as graph inputs without values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = []
    existing_inputs = {i.name for i in g.input}
    for t in g.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n * 4 < keep_below and t.data_location != onnx.TensorProto.EXTERNAL:
            keep.append(t)
            continue
        if t.name not in existing_inputs:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def verify_graph(graph: gs.Graph, *, check: bool = True, full_check: bool = False, types: bool = False,
                 pass_name: str | None = None, code: str = "QC203") -> None:
    """Raise VerificationError naming the first problem found (structure first, then onnx.checker, then, with
    ``types``, strict type and shape inference: :func:`type_problems`)."""
    problems = structural_problems(graph)
    if not problems and check:
        problems = checker_problems(graph, full_check=full_check)
    typing = False
    if not problems and types:
        problems = type_problems(graph)
        typing = bool(problems)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise VerificationError(first.message + more, node=first.node, pass_name=pass_name, code=code,
                                hint=("shapes known only now show an error: check that onnxruntime runs the input "
                                      "model; if it does, rerun with --reproducer DIR and report it" if typing else
                                      "a pass left the graph invalid; rerun with --reproducer DIR and report it"
                                      if pass_name else "fix or re-export the model"),
                                extra={"problems": [p.message for p in problems[:20]]})


def is_toposorted(graph: gs.Graph) -> bool:
    return not any("topologically" in p.message for p in structural_problems(graph))
