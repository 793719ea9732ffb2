"""Shape inference on graphs, and fixing symbolic input dims (``--input-shape name:1x3x224x224``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..diagnostics import QCompilerError, UsageError
from .io import export_model
from .graph import iter_graphs
from .verify import strip_weights


def _dims(vi: onnx.ValueInfoProto):
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tt.elem_type, dims


def _proto_graphs(g: onnx.GraphProto):
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    yield from _proto_graphs(sg)


def infer_shapes(graph: gs.Graph, *, strict: bool = False) -> int:
    """Run onnx shape inference (with data propagation) and record dtypes/shapes on the graph's tensors.

    Weights are stripped before inference so it also works for models over 2 GB.  Returns the number
    of tensors whose shape became known.  With ``strict``, an inference error is raised as QC208.
    """
    model = strip_weights(export_model(graph))
    # drop stale value_info so inference starts from the graph as it is now
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=strict, data_prop=True)
    except Exception as exc:
        if strict:
            raise QCompilerError(f"shape inference failed: {str(exc).strip().splitlines()[0]}", code="QC208",
                                 hint="fix symbolic dims with --input-shape NAME:DIMS") from None
        return 0
    info: dict[str, tuple] = {}
    for gp in _proto_graphs(inferred.graph):  # If/Loop/Scan bodies carry their own value_info
        for vi in list(gp.value_info) + list(gp.output):
            if vi.type.HasField("tensor_type"):
                info.setdefault(vi.name, _dims(vi))
    changed = 0
    tensors: dict[str, gs.Tensor] = {}
    for g in iter_graphs(graph):
        for name, t in g.tensors().items():
            tensors.setdefault(name, t)
    for name, (elem, dims) in info.items():
        t = tensors.get(name)
        if t is None or isinstance(t, gs.Constant):
            continue
        if elem and t.dtype is None:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if dims is not None and (t.shape is None or _less_known(t.shape, dims)):
            t.shape = dims
            changed += 1
    return changed


def _np_dtype(dtype) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dtype))) if isinstance(dtype, (int, np.integer)) \
            else np.dtype(dtype)
    except (TypeError, ValueError, KeyError):
        return None


def _conflict(declared, inferred) -> bool:
    """The declaration contradicts inference: another rank, or another value of a static dim."""
    if len(declared) != len(inferred):
        return True
    return any(isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)) and a >= 0 and b >= 0 and a != b
               for a, b in zip(declared, inferred))


def reconcile_shapes(graph: gs.Graph) -> list[str]:
    """Declared shapes and element types are hints, not truth: exporters and converters write wrong or empty output
    and value_info shapes (a rank-3 output declared ``shape {}``) and wrong types (an fp16 converter's output
    declared float16 behind its Cast to float).  Shapes and types are inferred from the inputs alone (declarations
    of outputs and intermediate tensors ignored); where an inference contradicts a declaration, the inferred shape
    or type replaces it, missing ones are filled in, and when any declaration was wrong, those inference cannot
    check are dropped.
    Returns one line per corrected declaration (graph inputs are never changed here: see
    :func:`reconcile_inputs`).  When inference fails, declarations stay as they are."""
    base = strip_weights(export_model(graph))
    model = onnx.ModelProto()
    model.CopyFrom(base)
    del model.graph.value_info[:]
    for o in model.graph.output:
        o.type.tensor_type.ClearField("shape")
        o.type.tensor_type.elem_type = 0  # inferred, not declared
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return []
    info = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            info[vi.name] = _dims(vi)
    inputs = {id(t) for t in graph.inputs}
    changes = []
    unconfirmed = []
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant) or id(t) in inputs:
            continue
        elem, dims = info.get(name, (0, None))
        if elem:
            want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
            have = _np_dtype(t.dtype)
            if have is None:
                t.dtype = want
            elif have != want:
                changes.append(f"'{name}' was declared {have.name}, inference gives {want.name}")
                t.dtype = want
        if dims is None:
            if t.shape is not None:
                unconfirmed.append(t)
            continue
        if t.shape is None:
            t.shape = dims
        elif _conflict(list(t.shape), dims):
            changes.append(f"'{name}' was declared {_fmt(t.shape)}, inference gives {_fmt(dims)}")
            t.shape = dims
    outs = {id(t) for t in graph.outputs}
    lost = [t for t in unconfirmed if id(t) in outs and (changes or not t.shape)] + \
        [t for t in graph.outputs if t.shape is None and not isinstance(t, gs.Constant)]
    if lost:  # outputs ONNX inference cannot reach (a data-dependent Reshape): onnxruntime's own inference
        del base.graph.value_info[:]  # declarations may lie; element types stay (onnxruntime refuses an untyped output)
        ort_shapes = _ort_output_shapes(base)
        seen: set[int] = set()
        for t in lost:
            if id(t) in seen:
                continue
            seen.add(id(t))
            got = ort_shapes.get(t.name)
            if got == [] and (t.shape is None or len(t.shape)):
                # onnxruntime writes [] for "unknown" as for a scalar: one run on zeros decides; a declaration that
                # cannot be checked even so stays
                got = _run_output_rank(graph, t.name)
                if got is None and t.shape is not None:
                    unconfirmed = [u for u in unconfirmed if u is not t]
            if got is None:
                continue
            if t.shape is not None and len(t.shape) == len(got):  # onnxruntime confirms it: the declaration stays
                unconfirmed = [u for u in unconfirmed if u is not t]
                continue
            changes.append(f"'{t.name}' was declared {_fmt(t.shape) if t.shape is not None else 'without a shape'}, "
                           f"onnxruntime infers {_fmt(got)}")
            t.shape = got
            unconfirmed = [u for u in unconfirmed if u is not t]
    if changes and unconfirmed:
        # a file whose checkable declarations lie loses the ones inference cannot check (onnxruntime infers them
        # itself; a wrong one stops it from loading the model); a file whose declarations hold keeps them all
        for t in unconfirmed:
            t.shape = None
        changes.append(f"{len(unconfirmed)} more declaration(s) of this file that inference cannot check were "
                       "dropped")
    if not _declarations_hold(graph):
        # inference filled in shapes that contradict each other (a model whose dims cannot all hold: it would not
        # run, and its declarations would make the written file fail ONNX's own check): keep the interface only
        dropped = 0
        for g in iter_graphs(graph):
            io = {id(t) for t in g.inputs} | {id(t) for t in g.outputs}
            for t in g.tensors().values():
                if isinstance(t, gs.Variable) and id(t) not in io and t.shape is not None:
                    t.shape = None
                    dropped += 1
        changes.append(f"inferred shapes contradict each other; {dropped} intermediate declaration(s) dropped "
                       "(does the model run?)")
    return changes


def _declarations_hold(graph: gs.Graph) -> bool:
    """Strict ONNX inference accepts the graph with its declarations as they are (False: they conflict)."""
    model = strip_weights(export_model(graph), keep_below=1 << 16)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001 - onnx raises InferenceError, ValidationError or RuntimeError
        try:  # is it the declarations, or the graph itself (type_problems reports that)?
            del model.graph.value_info[:]
            onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=True, data_prop=True)
        except Exception:  # noqa: BLE001
            return True
        return False
    return True


def _run_output_rank(graph: gs.Graph, name: str) -> list | None:
    """The rank of output ``name`` in one onnxruntime run of the graph on zeros (symbolic input dims as 1), as
    symbolic dims; None when the model does not run on zeros.  Only for outputs neither ONNX nor onnxruntime
    inference can give a rank (a Loop whose carried state is declared without a shape)."""
    import onnxruntime as ort

    feeds = {}
    for t in graph.inputs:
        if t.shape is None or t.dtype is None:
            return None
        try:
            feeds[t.name] = np.zeros([d if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in t.shape],
                                     dtype=np.dtype(t.dtype))
        except TypeError:
            return None
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        model = export_model(graph)
        del model.graph.value_info[:]
        for o in model.graph.output:
            o.type.tensor_type.ClearField("shape")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = sess.run([name], feeds)[0]
    except Exception:  # noqa: BLE001 - whatever stops the run, the declaration stays unknown
        return None
    return [f"{name}_dim{i}" for i in range(np.ndim(out))]


def _ort_output_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """The output shapes onnxruntime infers for ``model`` (weights stripped: nothing is run), declarations of
    the outputs removed; {} when it cannot load the model."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:
        return {}
    out = {}
    for k, o in enumerate(sess.get_outputs()):
        if o.shape is not None:
            out[o.name] = [d if isinstance(d, int) else (d or f"{o.name}_dim{i}") for i, d in enumerate(o.shape)]
    return out


def reconcile_inputs(graph: gs.Graph, ranks: dict[str, int]) -> list[str]:
    """Graph inputs declared without a shape, or ``shape {}`` (rank 0) while the data has rank ``ranks[name]``
    > 0, get that rank with symbolic dims (the data decides; a rank-0 declaration of an image is a lie that no
    consumer could run).  Returns one line per corrected input."""
    out = []
    for t in graph.inputs:
        r = ranks.get(t.name)
        if r is None or r == 0 or (t.shape is not None and len(t.shape) == r):
            continue
        if t.shape is not None and len(t.shape) > 0:
            continue  # another rank, declared explicitly: the data is checked against it and refused if it differs
        before = "without a shape" if t.shape is None else "shape {}"
        t.shape = [f"{t.name}_dim{i}" for i in range(r)]
        out.append(f"input '{t.name}' was declared {before}; the data has rank {r}: now {_fmt(t.shape)}")
    return out


def _less_known(old, new) -> bool:
    if len(old) != len(new):
        return True
    known_old = sum(isinstance(d, (int, np.integer)) and d >= 0 for d in old)
    known_new = sum(isinstance(d, (int, np.integer)) and d >= 0 for d in new)
    return bool(known_new > known_old)


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse ``name:1x3x224x224`` strings (several may be given)."""
    out: dict[str, list[int]] = {}
    for spec in specs or []:
        if ":" not in spec:
            raise UsageError(f"--input-shape '{spec}' must look like NAME:1x3x224x224", code="QC209")
        name, dims = spec.rsplit(":", 1)
        try:
            shape = [int(d) for d in dims.lower().replace(",", "x").split("x") if d]
        except ValueError:
            raise UsageError(f"--input-shape '{spec}': dims must be integers separated by 'x'", code="QC209") from None
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape '{spec}': dims must be positive integers", code="QC209")
        out[name] = shape
    return out


def fix_input_shapes(graph: gs.Graph, shapes: dict[str, list[int]]) -> None:
    """Replace input dims by concrete values; each given dim must agree with a static dim in the model."""
    by_name = {t.name: t for t in graph.inputs}
    for name, shape in shapes.items():
        t = by_name.get(name)
        if t is None:
            raise UsageError(f"--input-shape names '{name}', which is not a model input "
                             f"(inputs: {', '.join(by_name) or 'none'})", code="QC209")
        if t.shape is not None:
            if len(t.shape) != len(shape):
                raise UsageError(f"--input-shape {name}: rank {len(shape)} given, the model input has rank "
                                 f"{len(t.shape)} ({_fmt(t.shape)})", code="QC209")
            for i, (old, new) in enumerate(zip(t.shape, shape)):
                if isinstance(old, (int, np.integer)) and old > 0 and old != new:
                    raise UsageError(f"--input-shape {name}: dim {i} is fixed to {old} in the model, {new} given",
                                     code="QC209")
        t.shape = list(shape)


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) if d is not None else "?" for d in shape) + "]"
