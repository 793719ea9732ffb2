"""Fine-tuning quantization parameters in torch: LSQ / LSQ+ (end to end) and AdaRound (layer by layer).

Both take the QDQ graph and the FP32 graph it came from, train on calibration data (no labels needed:
the FP32 model is the teacher), and write the result back into the QDQ graph, which then passes
``lint-trt`` and runs in onnxruntime like any other output of ``qcompiler compile``.

LSQ (Esser et al. 2020): step sizes of every Q/DQ are parameters, trained end to end against the
FP32 model's outputs (MSE distillation by default, or the user's loss and labels through the Python
API), with LSQ's gradient scaling.  ``train_weights=True`` also trains the float master weights (QAT).
LSQ+ (Bhalgat et al. 2020) adds learnable offsets on affine grids (TensorRT's grids are symmetric, so
there it is LSQ with its initialization from calibration, and offsets stay 0).

AdaRound (Nagel et al. 2020): for each quantized Conv/ConvTranspose/Gemm/MatMul in topological order,
learn whether each weight rounds up or down, minimising ``||layer(W_soft, x_q) - y_fp32||^2 +
lambda * sum(1 - |2h(V) - 1|^beta)`` with ``beta`` annealed from 20 to 2, where ``x_q`` is the layer's
input in the quantized model *with the layers before it already rounded* and ``y_fp32`` the FP32
model's output of the layer.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import BridgeError, DiagnosticEngine
from ..ir.query import produced_by, producer
from ..progress import Progress, mode_for
from .results import FinetuneResult
from .module import GraphModule, _torch

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _setup(seed: int):
    torch = _torch()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch


def device() -> str:
    """CUDA when torch sees a GPU, else the CPU."""
    torch = _torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


def collect_inputs(data, graph: gs.Graph, max_samples: int, diagnostics=None) -> list[dict[str, np.ndarray]]:
    """Calibration batches (bounded by max_samples) kept for training."""
    d = data.limited(max_samples, batch_size=data.options.batch_size or 32)
    return [b.feeds for b in d.batches(graph, diagnostics)]


def lsq(qdq: gs.Graph, fp32: gs.Graph, batches: list[dict[str, np.ndarray]], *, iters: int = 300, lr: float = 1e-3,
        train_weights: bool = False, plus: bool = False, weight_lr: float = 1e-5, seed: int = 0,
        loss_fn: Callable | None = None, labels: list | None = None, progress: str = "off") -> FinetuneResult:
    torch = _setup(seed)
    dev = device()
    student = GraphModule(qdq, reference=fp32).to(dev)
    teacher = GraphModule(fp32).to(dev)
    out_name = student.output_names[0]
    # Adam is invariant to gradient scale, so LSQ's gradient scaling alone would let ``lr`` move a step size
    # by the same absolute amount whatever its magnitude: each step size gets lr relative to its own size
    groups = []
    for fq in student.fq.values():
        fq.scale.requires_grad_(True)
        groups.append({"params": [fq.scale], "lr": lr * float(fq.scale.detach().abs().mean())})
        if plus and fq.qmin >= 0:  # affine grid: learnable offset (LSQ+)
            fq.learn_offset = True
            fq.offset.requires_grad_(True)
            groups.append({"params": [fq.offset], "lr": lr * float(fq.scale.detach().abs().mean())})
    for wq in student.wq.values():
        wq.scale.requires_grad_(True)
        groups.append({"params": [wq.scale], "lr": lr * float(wq.scale.detach().abs().mean())})
    if train_weights:
        for wq in student.wq.values():
            wq.weight.requires_grad_(True)
            groups.append({"params": [wq.weight], "lr": weight_lr * float(wq.weight.detach().abs().mean()) * 100})
    snapshot = {k: v.detach().clone() for k, v in student.state_dict().items()}
    opt = torch.optim.Adam(groups)
    with torch.no_grad():
        tensors = [{k: torch.from_numpy(np.array(v)).to(dev) for k, v in b.items()} for b in batches]
        targets = [teacher(f)[out_name] for f in tensors]
    lossf = loss_fn or (lambda y, t, _labels: torch.mean((y - t) ** 2))

    def evaluate() -> float:
        with torch.no_grad():
            return float(np.mean([float(lossf(student(f)[out_name], t, labels[i] if labels else None))
                                  for i, (f, t) in enumerate(zip(tensors, targets))]))

    before = evaluate()
    bar = Progress("lsq", total=iters, unit="iterations", mode=progress)
    t0 = time.perf_counter()
    for it in range(iters):
        k = it % len(tensors)
        y = student(tensors[k])[out_name]
        loss = lossf(y, targets[k], labels[k] if labels else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for fq in student.fq.values():
                fq.scale.clamp_(min=1e-7)
            for wq in student.wq.values():
                wq.scale.clamp_(min=1e-7)
        bar.update(1, note=f"loss {float(loss):.4g}")
    dt = time.perf_counter() - t0
    bar.close()
    after = evaluate()
    if not after < before:  # never make the model worse than its calibration: keep the starting point
        student.load_state_dict(snapshot)
        for fq in student.fq.values():
            fq.learn_offset = False
        after = before
    written = student.write_back()
    return FinetuneResult("lsq+" if plus else "lsq", iters, dt, dt / max(iters, 1), before, after, written)


def adaround(qdq: gs.Graph, fp32: gs.Graph, batches: list[dict[str, np.ndarray]], *, iters: int = 500,
             lr: float = 1e-2, reg: float = 0.01, beta_start: float = 20.0, beta_end: float = 2.0,
             warmup: float = 0.2, seed: int = 0, progress: str = "off") -> FinetuneResult:
    torch = _setup(seed)
    from .ops import OPS

    dev = device()
    student = GraphModule(qdq, reference=fp32).to(dev)
    teacher = GraphModule(fp32).to(dev)
    layers = [n for n in qdq.nodes if n.op in WEIGHTED and
              _key_of(produced_by(n.inputs[1], "DequantizeLinear")) in student.wq]
    ref_names = {n.name for n in fp32.nodes}
    layers = [n for n in layers if n.name in ref_names]
    if not layers:
        raise BridgeError("no quantized layer with a stored integer weight to round", code="QC603")
    feeds = [{k: torch.from_numpy(np.array(v)).to(dev) for k, v in b.items()} for b in batches]
    with torch.no_grad():
        fp_out: dict[str, list[Any]] = {n.name: [] for n in layers}
        for f in feeds:
            cap = teacher(f, capture={n.name for n in layers})["__captured__"]
            for n in layers:
                fp_out[n.name].append(cap[n.name][1][0].detach())
    total_before = total_after = 0.0
    bar = Progress("adaround", total=len(layers), unit="layers", mode=progress)
    t0 = time.perf_counter()
    for layer in layers:
        wq = student.wq[_key_of(producer(layer.inputs[1]))]
        with torch.no_grad():  # the layer's inputs in the quantized model, earlier layers already rounded
            xs = []
            for f in feeds:
                cap = student(f, capture={layer.name}, until=layer.name)
                xs.append([t.detach() if isinstance(t, torch.Tensor) else t for t in cap[layer.name][0]])
        targets = fp_out[layer.name]
        wq.init_adaround()
        opt = torch.optim.Adam([wq.alpha], lr=lr)
        fn = OPS[layer.op]
        widx = 1

        def run(ins):
            ins = list(ins)
            ins[widx] = wq()
            return fn(ins, layer.attrs, student.opset)[0]

        with torch.no_grad():
            wq.mode = "nearest"
            before = float(np.mean([float(torch.mean((run(x) - t) ** 2)) for x, t in zip(xs, targets)]))
            wq.mode = "adaround"
        for it in range(iters):
            k = it % len(xs)
            rec = torch.mean((run(xs[k]) - targets[k]) ** 2)
            frac = it / max(iters - 1, 1)
            if frac < warmup:
                loss = rec
            else:
                r = (frac - warmup) / max(1 - warmup, 1e-9)
                beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos(r * math.pi))
                loss = rec + reg * torch.sum(1 - torch.abs(2 * wq.h() - 1) ** beta)
            opt.zero_grad()
            loss.backward()
            opt.step()

        with torch.no_grad():  # freeze the hard decision for the layers that follow
            ints = wq.integer_weight()
            master = wq.weight.detach().clone()
            s = wq._expand(wq.scale)
            z = wq._expand(wq.zero_point)
            wq.weight.copy_((ints - z) * s)  # on the grid: nearest rounding reproduces the learned integers
            wq.mode = "nearest"
            wq.alpha = None
            after = float(np.mean([float(torch.mean((run(x) - t) ** 2)) for x, t in zip(xs, targets)]))
            if after > before:  # learned rounding worse than nearest on this layer: keep nearest
                wq.weight.copy_(master)
                after = before
        total_before += before
        total_after += after
        bar.update(1, note=f"{layer.name}: error {before:.4g} -> {after:.4g}")
    dt = time.perf_counter() - t0
    bar.close()
    written = student.write_back()
    n = max(len(layers), 1)
    return FinetuneResult("adaround", iters, dt, dt / max(iters * len(layers), 1), total_before / n, total_after / n,
                          written, layers=len(layers))


def _key_of(node: gs.Node | None) -> str | None:
    from .module import _key

    return _key(node.name) if node is not None else None


def reference_graph(fp32: gs.Graph, qdq: gs.Graph, diagnostics: DiagnosticEngine) -> gs.Graph:
    """The FP32 graph exactly as it was right before quantization: the FP32-preserving passes that ran before
    ``calibrate`` (recorded in the QDQ model's metadata) are replayed on the FP32 model, so layer names,
    folded weights and layer outputs line up with the QDQ graph."""
    from ..ir.io import get_meta
    from ..pm import PassContext, load_pipeline, run_pipeline
    from ..pm.pipeline import Element, PipelineSpec, RepeatSpec, expand
    from ..pm.registry import default_registry

    text = get_meta(qdq).metadata_props.get("qcompiler.pipeline")
    if not text:
        diagnostics.warning("QC603", "the quantized model records no qcompiler pipeline; its FP32 layers are "
                                     "matched to the given FP32 model by name only")
        return fp32
    prefix: list[Element] = []
    for el in expand(load_pipeline(text)).elements:
        if isinstance(el, RepeatSpec):
            prefix.append(el)
            continue
        if el.name == "calibrate" or el.name in ("insert-qdq",):
            break
        cls = default_registry().get_pass(el.name)
        if not cls.fp32_preserving:
            break
        prefix.append(el)
    if prefix:
        run_pipeline(fp32, PipelineSpec(tuple(prefix)), PassContext())
    return fp32


def finetune_model(qdq_path: str, fp32_path: str, out_path: str, *, method: str, calib_data: Any,
                   calib_options: dict | None = None, iters: int | None = None, lr: float | None = None,
                   train_weights: bool = False, seed: int = 0, progress: bool | None = None,
                   diagnostics: DiagnosticEngine | None = None, max_samples: int = 256) -> str:
    """``qcompiler finetune``: load, train, write back, verify, save atomically."""

    from ..calib.data import as_data_source
    from ..ir import load_model, save_model, verify_graph
    from ..quant.lint import lint_graph

    diags = diagnostics if diagnostics is not None else DiagnosticEngine()
    qdq = load_model(qdq_path)
    fp32 = reference_graph(load_model(fp32_path), qdq, diags)
    data = as_data_source(calib_data, **(calib_options or {}))
    data.check_signature(fp32)
    batches = collect_inputs(data, fp32, (calib_options or {}).get("max_samples") or max_samples, diags)
    show = mode_for(progress)
    if method == "gptq":  # numpy, no torch: the record insert-qdq would have kept is read back from the graph
        from ..quant.gptq import record_from_graph, run_gptq

        rep = run_gptq(qdq, fp32, record_from_graph(qdq), data, max_samples=min(max_samples, 128), progress=show,
                       diagnostics=diags)
        er = sum(a for a, _ in rep.layers.values())
        eg = sum(b for _, b in rep.layers.values())
        res = FinetuneResult("gptq", len(rep.layers), rep.seconds, rep.seconds / max(len(rep.layers), 1), er, eg,
                             {}, layers=len(rep.layers))
    elif method == "adaround":
        res = adaround(qdq, fp32, batches, iters=iters or 500, lr=lr or 1e-2, seed=seed, progress=show)
    else:
        res = lsq(qdq, fp32, batches, iters=iters or 300, lr=lr or 1e-3, train_weights=train_weights,
                  plus=method == "lsq+", seed=seed, progress=show)
    diags.remark("QC603", f"{res.method}: loss {res.loss_before:.4g} -> {res.loss_after:.4g} in {res.seconds:.1f} s "
                          f"({1000 * res.seconds_per_iteration:.1f} ms per iteration)")
    verify_graph(qdq)
    lint = lint_graph(qdq)
    if lint.n_errors:
        raise BridgeError(f"the fine-tuned model fails lint-trt: {lint.findings[0].message}", code="QC603")
    save_model(qdq, out_path)
    return out_path
