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

from ..diagnostics import BridgeError, DiagnosticEngine, Severity
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


def _lsq(qdq: gs.Graph, fp32: gs.Graph, batches: list[dict[str, np.ndarray]], *, iters: int = 300, lr: float = 1e-3,
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


def _adaround(qdq: gs.Graph, fp32: gs.Graph, batches: list[dict[str, np.ndarray]], *, iters: int = 500,
             lr: float = 1e-2, reg: float = 0.01, beta_start: float = 20.0, beta_end: float = 2.0,
             warmup: float = 0.2, seed: int = 0, progress: str = "off", sample: int = 8,
             min_iters: int = 200, full_size: int = 4096, patience: int = 3) -> FinetuneResult:
    """AdaRound, layer by layer in topological order, in time linear in the model:

    * the quantized model (earlier layers already rounded) and the FP32 model are each run *once*, layer after
      layer (:meth:`GraphModule.run_until` keeps only the live tensors); each layer's inputs and FP32 outputs over
      all the calibration samples are cached while it trains, then dropped;
    * every iteration reconstructs a random ``sample`` of those samples, not all of them;
    * a layer with ``w`` weights gets ``iters * min(1, w / full_size)`` iterations, at least ``min_iters``;
    * after the warm-up a layer stops early when its reconstruction error has not improved by 0.5 % for
      ``patience`` windows of 50 iterations and its rounding has settled (99 % of the soft decisions decided);
    * progress: a line per layer (layer k/N, error before -> after, elapsed, time left) in a log.
    """
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
    s_env = [student.start(f) for f in feeds]
    t_env = [teacher.start(f) for f in feeds]
    s_pos = [0] * len(feeds)
    t_pos = [0] * len(feeds)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total_before = total_after = 0.0
    iterations = 0
    bar = Progress("adaround", total=len(layers), unit="layers", mode=progress, interval=0.0)
    t0 = time.perf_counter()
    for layer in layers:
        wq = student.wq[_key_of(producer(layer.inputs[1]))]
        fn = OPS[layer.op]
        with torch.no_grad():  # this layer's inputs in both models, each model advanced to it only once
            xs, ts = [], []
            for b in range(len(feeds)):
                s_pos[b], ins = student.run_until(s_env[b], s_pos[b], layer.name)
                t_pos[b], tins = teacher.run_until(t_env[b], t_pos[b], layer.name)
                xs.append(ins)
                ts.append(fn(tins, layer.attrs, teacher.opset)[0].detach())
            X = torch.cat([x[0] for x in xs]) if len(xs) > 1 else xs[0][0]
            T = torch.cat(ts) if len(ts) > 1 else ts[0]
            rest = xs[0][1:]
        n = int(X.shape[0])
        wq.init_adaround()
        opt = torch.optim.Adam([wq.alpha], lr=lr)

        def run(x, _rest=rest, _fn=fn, _layer=layer):
            ins = [x] + list(_rest)
            ins[1] = wq()
            return _fn(ins, _layer.attrs, student.opset)[0]

        def error(_X=X, _T=T) -> float:
            with torch.no_grad():
                return float(sum(float(torch.sum((run(_X[i:i + 64]) - _T[i:i + 64]) ** 2))
                                 for i in range(0, n, 64)) / max(_T.numel(), 1))

        wq.mode = "nearest"
        before = error()
        wq.mode = "adaround"
        n_w = int(wq.weight.numel())
        budget = max(min_iters, int(iters * min(1.0, n_w / full_size)))
        window, best, stale = 0.0, float("inf"), 0
        it = 0
        for it in range(budget):
            idx = torch.randperm(n, generator=gen)[: min(sample, n)].to(dev) if n > sample else None
            xb, tb = (X, T) if idx is None else (X[idx], T[idx])
            rec = torch.mean((run(xb) - tb) ** 2)
            frac = it / max(budget - 1, 1)
            if frac < warmup:
                loss = rec
            else:
                r = (frac - warmup) / max(1 - warmup, 1e-9)
                beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + math.cos(r * math.pi))
                loss = rec + reg * torch.sum(1 - torch.abs(2 * wq.h() - 1) ** beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            window += float(rec.detach())
            if (it + 1) % 50 == 0:
                avg, window = window / 50, 0.0
                if avg < best * 0.995:
                    best, stale = avg, 0
                else:
                    stale += 1
                if frac > warmup and stale >= patience:
                    with torch.no_grad():
                        settled = float(torch.mean((torch.abs(2 * wq.h() - 1) > 0.9).float()))
                    if settled > 0.99:
                        break
        iterations += it + 1
        with torch.no_grad():  # freeze the hard decision for the layers that follow
            ints = wq.integer_weight()
            master = wq.weight.detach().clone()
            s = wq._expand(wq.scale)
            z = wq._expand(wq.zero_point)
            wq.weight.copy_((ints - z) * s)  # on the grid: nearest rounding reproduces the learned integers
            wq.mode = "nearest"
            wq.alpha = None
        after = error()
        if after > before:  # learned rounding worse than nearest on this layer: keep nearest
            with torch.no_grad():
                wq.weight.copy_(master)
            after = before
        with torch.no_grad():  # the environments computed this layer's weight before it was trained
            w_now = wq()
            for env in s_env:
                env[layer.inputs[1].name] = w_now
        total_before += before
        total_after += after
        del xs, ts
        bar.update(1, note=f"{layer.name}: error {before:.4g} -> {after:.4g} ({it + 1} iterations)")
    dt = time.perf_counter() - t0
    bar.close()
    written = student.write_back()
    n_l = max(len(layers), 1)
    return FinetuneResult("adaround", iterations, dt, dt / max(iterations, 1), total_before / n_l,
                          total_after / n_l, written, layers=len(layers))


def parse_milestones(text: str | dict | None) -> dict[str, int]:
    """``observers=2,bn=3`` -> {"observers": 2, "bn": 3} (epochs at which each freezes)."""
    if not text:
        return {}
    items: list[tuple[str, Any]]
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in str(text).split(","):
            if "=" not in part:
                raise BridgeError(f"milestone '{part}' must look like name=EPOCH (observers=2,bn=3)", code="QC603")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    out = {}
    for k, v in items:
        if k not in ("observers", "bn"):
            raise BridgeError(f"unknown milestone '{k}'", code="QC603", hint="milestones: observers, bn")
        try:
            out[k] = int(v)
        except ValueError:
            raise BridgeError(f"milestone {k}={v}: the epoch must be an integer", code="QC603") from None
    return out


def _qat(qdq: gs.Graph, fp32: gs.Graph, batches, *, epochs: int = 5, lr: float = 1e-3, scale_lr: float = 1e-3,
        milestones: dict[str, int] | str | None = None, loss_fn: Callable | None = None,
        labels: list | None = None, eval_fn: Callable[[Any], float] | None = None, eval_every: int = 1,
        seed: int = 0, progress: str = "off", diagnostics: DiagnosticEngine | None = None) -> FinetuneResult:
    """Quantization-aware training of the Q/DQ graph: float master weights and every step size, end to end.

    ``batches``: a list of feed dicts (the calibration data) or any iterable the loop re-iterates each epoch
    (the user's own loader yielding feed dicts, or ``(feeds, labels)`` pairs).  The loss is ``loss_fn(output,
    teacher_output, labels)``, by default the MSE to the FP32 model's output (distillation; no labels needed).
    Schedule: cosine learning rate over all steps; ``milestones`` freeze things from an epoch on (numbered from
    0): ``observers`` stops learning the step sizes (the observers' ranges are final), ``bn`` freezes
    BatchNormalization statistics (a remark says so when none is left: they are folded before quantization).
    ``eval_fn(module)`` runs every ``eval_every`` epochs; each epoch logs one line (loss, evaluation)."""
    torch = _setup(seed)
    dev = device()
    ms = parse_milestones(milestones)
    student = GraphModule(qdq, reference=fp32).to(dev)
    teacher = GraphModule(fp32).to(dev)
    out_name = student.output_names[0]
    if "bn" in ms and diagnostics is not None and not any(n.op == "BatchNormalization" for n in qdq.nodes):
        diagnostics.remark("QC603", "qat: milestone bn has nothing to freeze: no BatchNormalization is left in the "
                                    "quantized graph (folded into the layers before quantization)")
    scale_params = [q.scale for q in list(student.fq.values()) + list(student.wq.values())]
    weight_params = [w.weight for w in student.wq.values()]
    for p in scale_params + weight_params:
        p.requires_grad_(True)
    groups = [{"params": [p], "lr": scale_lr * float(p.detach().abs().mean()) * 10} for p in scale_params]
    groups += [{"params": [w], "lr": lr * float(w.detach().abs().mean())} for w in weight_params]
    opt = torch.optim.Adam(groups)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]

    def split(item):
        if isinstance(item, tuple) and len(item) == 2:
            return item[0], item[1]
        return item, None

    data = list(batches) if not isinstance(batches, list) else batches
    steps = max(1, epochs * len(data))
    lossf = loss_fn or (lambda y, t, _l: torch.mean((y - t) ** 2))

    def to_dev(feeds):
        return {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))).to(dev)
                for k, v in feeds.items()}

    with torch.no_grad():
        first, _ = split(data[0])
        before = float(lossf(student(to_dev(first))[out_name], teacher(to_dev(first))[out_name], None))
    step = 0
    last = before
    bar = Progress("qat", total=epochs, unit="epochs", mode=progress, interval=0.0)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if epoch == ms.get("observers", -1):
            for p in scale_params:
                p.requires_grad_(False)
        total = 0.0
        for k, item in enumerate(data):
            feeds, lab = split(item)
            f = to_dev(feeds)
            with torch.no_grad():
                target = teacher(f)[out_name]
            y = student(f)[out_name]
            loss = lossf(y, target, lab if lab is not None else (labels[k] if labels else None))
            opt.zero_grad()
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
            opt.step()
            with torch.no_grad():
                for p in scale_params:
                    p.clamp_(min=1e-7)
            total += float(loss.detach())
            step += 1
        last = total / max(len(data), 1)
        note = f"epoch {epoch + 1}/{epochs}: loss {last:.4g}"
        if eval_fn is not None and (epoch + 1) % max(eval_every, 1) == 0:
            note += f", evaluation {eval_fn(student):.4g}"
        if epoch + 1 >= ms.get("observers", 10 ** 9):
            note += " (step sizes frozen)"
        bar.update(1, note=note)
    dt = time.perf_counter() - t0
    bar.close()
    for p in scale_params + weight_params:
        p.requires_grad_(False)
    written = student.write_back()
    return FinetuneResult("qat", step, dt, dt / max(step, 1), before, last, written)


def _in_fp32(train: Callable) -> Callable:
    """A training entry point that takes compiled models whatever their float type: an fp16/bf16 graph computes in
    float32 while it trains and gets its float type back (and its fp32 islands) when written back."""
    import functools

    @functools.wraps(train)
    def run(qdq: gs.Graph, *args: Any, **kwargs: Any) -> FinetuneResult:
        from ..quant.floattype import computing_in_fp32

        with computing_in_fp32(qdq):
            return train(qdq, *args, **kwargs)
    return run


lsq = _in_fp32(_lsq)
adaround = _in_fp32(_adaround)
qat = _in_fp32(_qat)


def _key_of(node: gs.Node | None) -> str | None:
    from .module import _key

    return _key(node.name) if node is not None else None


def reference_graph(fp32: gs.Graph, qdq: gs.Graph, diagnostics: DiagnosticEngine) -> gs.Graph:
    """The FP32 graph exactly as it was right before quantization: the FP32-preserving passes that ran before
    ``calibrate`` (recorded in the QDQ model's metadata) are replayed on the FP32 model, so layer names,
    folded weights and layer outputs line up with the QDQ graph."""
    from ..ir.graph import get_meta
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
                   diagnostics: DiagnosticEngine | None = None, max_samples: int = 256, epochs: int = 5,
                   milestones: str | dict | None = None, executor: Any = None) -> str:
    """``qcompiler finetune``: load, train, write back, verify, save atomically.  A model whose float parts are
    fp16 or bf16 trains in float32 and gets its float type (and fp32 islands) back.

    ``executor`` (``"local"``, ``"ray"``, ``"ray:ADDRESS"`` or an Executor): GPTQ's Hessians and solves run as its
    tasks; AdaRound, LSQ and QAT train in this process (each layer's inputs depend on the layers before it), which
    a remark says."""
    from ..ir import load_model, save_model, verify_graph
    from ..quant.floattype import computing_in_fp32
    from ..quant.lint import lint_graph

    diags = diagnostics if diagnostics is not None else DiagnosticEngine()
    qdq = load_model(qdq_path)
    lint_before = {(d.rule, d.node) for d in lint_graph(qdq).findings if d.severity >= Severity.ERROR}
    with computing_in_fp32(qdq):
        res = _finetune(qdq, fp32_path, method=method, calib_data=calib_data, calib_options=calib_options,
                        iters=iters, lr=lr, train_weights=train_weights, seed=seed, progress=progress, diags=diags,
                        max_samples=max_samples, epochs=epochs, milestones=milestones, executor=executor)
    diags.remark("QC603", f"{res.method}: loss {res.loss_before:.4g} -> {res.loss_after:.4g} in {res.seconds:.1f} s "
                          f"({1000 * res.seconds_per_iteration:.1f} ms per iteration)")
    verify_graph(qdq)
    lint = lint_graph(qdq)
    new = [d for d in lint.findings if d.severity >= Severity.ERROR and (d.rule, d.node) not in lint_before]
    if new:  # fine-tuning may not break what the input met (a W4A4 input may fail lint-trt as it came)
        raise BridgeError(f"the fine-tuned model fails lint-trt: {new[0].message}", code="QC603")
    save_model(qdq, out_path)
    return out_path


def _finetune(qdq: gs.Graph, fp32_path: str, *, method: str, calib_data: Any, calib_options: dict | None,
              iters: int | None, lr: float | None, train_weights: bool, seed: int, progress: bool | None,
              diags: DiagnosticEngine, max_samples: int, epochs: int, milestones: str | dict | None,
              executor: Any) -> FinetuneResult:
    from ..calib.data import as_data_source
    from ..ir import load_model

    fp32 = reference_graph(load_model(fp32_path), qdq, diags)
    data = as_data_source(calib_data, **(calib_options or {}))
    data.check_signature(fp32)
    batches = collect_inputs(data, fp32, (calib_options or {}).get("max_samples") or max_samples, diags)
    show = mode_for(progress)
    if executor not in (None, "local") and method != "gptq":
        diags.remark("QC603", f"{method} trains in this process: each layer's inputs depend on the layers before "
                              "it, so the executor is not used")
    if method == "gptq":  # numpy, no torch: the record insert-qdq would have kept is read back from the graph
        from ..executor import make_executor
        from ..quant.gptq import record_from_graph, run_gptq

        ex = make_executor(executor)
        try:
            rep = run_gptq(qdq, fp32, record_from_graph(qdq), data, max_samples=min(max_samples, 128),
                           progress=show, diagnostics=diags, executor=ex)
        finally:
            if ex is not executor:
                ex.close()
        er = sum(a for a, _ in rep.layers.values())
        eg = sum(b for _, b in rep.layers.values())
        res = FinetuneResult("gptq", len(rep.layers), rep.seconds, rep.seconds / max(len(rep.layers), 1), er, eg,
                             {}, layers=len(rep.layers))
    elif method == "adaround":
        res = adaround(qdq, fp32, batches, iters=iters or 500, lr=lr or 1e-2, seed=seed, progress=show)
    elif method == "qat":
        res = qat(qdq, fp32, batches, epochs=epochs, lr=lr or 1e-3, milestones=milestones, seed=seed,
                  progress=show, diagnostics=diags)
    else:
        res = lsq(qdq, fp32, batches, iters=iters or 300, lr=lr or 1e-3, train_weights=train_weights,
                  plus=method == "lsq+", seed=seed, progress=show)
    return res
