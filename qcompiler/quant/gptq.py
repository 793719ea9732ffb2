"""GPTQ: layer-wise second-order weight rounding (Frantar et al. 2023), in numpy, from the ONNX graph alone.

(Over 500 lines on purpose: the math, the im2col views of each layer kind and the driver that gathers Hessians
are one algorithm; the parallel part is a task for qcompiler/executor.map_over_graph.)

A weighted layer is seen as a matrix ``W`` [rows, K] acting on input vectors ``x`` [K] (rows: output channels;
K: input channels times kernel taps, the im2col view of a convolution).  With ``H = 2 X^T X`` from the layer's
calibration inputs, GPTQ quantizes the columns of ``W`` one at a time and spreads each column's rounding error
over the columns not yet quantized so as to minimise ``||(W - Q) X||^2``:

    err_j = (w_j - q(w_j)) / U_jj,     W[:, j+1:] -= err_j U_j,j+1:        (U: upper Cholesky of H^-1)

in lazy batches of ``block`` columns (the update of the columns after a batch is one matrix product).  Options:
damping (``damp`` x the mean of diag H added to the diagonal), act-order (columns by decreasing diag H), and
any quantizer ``q`` (per-channel or per-block scales, fixed beforehand from the original weights: "static
groups", so act-order and blocks compose).  Deterministic: float64 throughout, no randomness.

Views: :func:`matrix_view` and :func:`from_matrix` map Conv (per group), ConvTranspose (as the equivalent
convolution), Gemm and MatMul weights to and from ``[rows, K]``; :func:`patches` turns a layer's input batch into
the rows of ``X`` for that view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..diagnostics import QCompilerError
from ..ir.edit import Namer
from ..ir.layers import ConvAttrs, LayerGeometry, LayerKind
from ..ir.query import const_value, producer
from ..pm.state import State
from ..progress import Progress
from .emit import EmitResult, QParams, expand_scale, quantize_weight, weight_qparams
from .numerics import db
from .plan import Plan, WeightPoint
from .qspec import QSpec
from .state import QuantizationRecord


# --------------------------------------------------------------------------------------------
# the algorithm
# --------------------------------------------------------------------------------------------


def gptq(W: np.ndarray, H: np.ndarray, quantize: Callable[[np.ndarray, int], np.ndarray], *, block: int = 128,
         damp: float = 0.01, act_order: bool = False) -> np.ndarray:
    """The quantized (dequantized, on the grid) matrix for ``W`` [rows, K] given ``H`` [K, K].

    ``quantize(column, j)`` rounds column ``j`` (an index into the original column order) onto its grid and
    returns the dequantized values."""
    W = np.array(W, np.float64)
    H = np.array(H, np.float64)
    rows, k = W.shape
    dead = np.diag(H) <= 0
    if dead.any():  # inputs that never fire: any value works, keep zero
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    W = W[:, perm]
    H = H[np.ix_(perm, perm)]
    H[np.diag_indices(k)] += damp * float(np.mean(np.diag(H)))
    L = np.linalg.cholesky(H)
    Linv = np.linalg.solve(L, np.eye(k))
    Hinv = Linv.T @ Linv
    U = np.linalg.cholesky(Hinv).T  # upper: Hinv = U^T U
    Q = np.zeros_like(W)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            q = quantize(w, int(perm[i1 + i]))
            Q[:, i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    inv = np.empty_like(perm)
    inv[perm] = np.arange(k)
    return Q[:, inv]


def rtn(W: np.ndarray, quantize: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Round-to-nearest with the same quantizer (the baseline GPTQ improves on)."""
    W = np.asarray(W, np.float64)
    return np.stack([quantize(W[:, j], j) for j in range(W.shape[1])], axis=1)


def grid_quantizer(scale: np.ndarray, zero: np.ndarray, qmin: int,
                   qmax: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """``quantize(column, j)`` for scales of shape [rows, K] (per-channel scales repeated over K, or per-block)."""
    scale = np.asarray(scale, np.float64)
    zero = np.asarray(zero, np.float64)

    def q(col: np.ndarray, j: int) -> np.ndarray:
        s, z = scale[:, j], zero[:, j]
        return (np.clip(np.rint(col / s) + z, qmin, qmax) - z) * s

    return q


# --------------------------------------------------------------------------------------------
# views of a layer as [rows, K]
# --------------------------------------------------------------------------------------------


def _conv_transpose_as_conv(W: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weight [Cin, Cout/g, *k] -> the equivalent convolution's [Cout, Cin/g, *k] (flipped)."""
    cin, cout_g = W.shape[0], W.shape[1]
    rest = W.shape[2:]
    Wg = W.reshape((group, cin // group, cout_g) + rest)
    Wc = np.swapaxes(Wg, 1, 2)  # [g, cout_g, cin_g, *k]
    Wc = np.flip(Wc, axis=tuple(range(3, Wc.ndim)))
    return Wc.reshape((group * cout_g, cin // group) + rest)


def _conv_as_conv_transpose(Wc: np.ndarray, group: int) -> np.ndarray:
    cout, cin_g = Wc.shape[0], Wc.shape[1]
    rest = Wc.shape[2:]
    Wg = np.flip(Wc.reshape((group, cout // group, cin_g) + rest), axis=tuple(range(3, 3 + len(rest))))
    return np.swapaxes(Wg, 1, 2).reshape((group * cin_g, cout // group) + rest)


def matrix_view(W: np.ndarray, geo: LayerGeometry) -> list[np.ndarray]:
    """One [rows, K] matrix per group (convolutions) or a single one (Gemm/MatMul)."""
    if geo.kind is LayerKind.GEMM:
        return [W if geo.trans_b else W.T]
    if geo.kind is LayerKind.MATMUL:
        return [W.T]
    Wc = _conv_transpose_as_conv(W, geo.group) if geo.kind is LayerKind.CONV_TRANSPOSE else W
    g = geo.group
    cout = Wc.shape[0]
    return [Wc[i * cout // g:(i + 1) * cout // g].reshape(cout // g, -1) for i in range(g)]


def from_matrix(mats: list[np.ndarray], geo: LayerGeometry) -> np.ndarray:
    """The weight in its ONNX layout from :func:`matrix_view`'s matrices."""
    if geo.kind is LayerKind.GEMM:
        return mats[0] if geo.trans_b else mats[0].T
    if geo.kind is LayerKind.MATMUL:
        return mats[0].T
    shape = tuple(geo.weight_shape)
    if geo.kind is LayerKind.CONV_TRANSPOSE:
        cshape = (shape[1] * geo.group, shape[0] // geo.group) + shape[2:]
        return _conv_as_conv_transpose(np.concatenate(mats).reshape(cshape), geo.group)
    return np.concatenate(mats).reshape(shape)


def patches(x: np.ndarray, geo: LayerGeometry, attrs: dict) -> list[np.ndarray]:
    """The rows of X (one [positions, K] matrix per group) for the layer's input batch ``x``.

    Convolutions: im2col with the layer's strides, pads and dilations (2-D and 1-D); ConvTranspose: of the
    stride-dilated, re-padded input its equivalent convolution reads.  Gemm/MatMul: the last axis."""
    if not geo.kind.is_conv:
        return [x.reshape(-1, x.shape[-1])]
    ca = ConvAttrs.from_attrs(attrs, geo.weight_shape)
    nsp = len(ca.kernel)
    k = ca.kernel
    strides, dil = list(ca.strides), list(ca.dilations)
    if ca.pads_begin is None or ca.pads_end is None:
        raise ValueError("auto_pad SAME_* with strides > 1 is not supported by gptq's patch extraction")
    pads = list(ca.pads_begin) + list(ca.pads_end)
    x = np.asarray(x, np.float64)
    if geo.kind is LayerKind.CONV_TRANSPOSE:
        # stride-dilate the input, pad by dilation*(k-1) - pad (+ output_padding at the end), unit stride
        n, c = x.shape[:2]
        sp = x.shape[2:]
        dx = np.zeros((n, c) + tuple((s - 1) * st + 1 for s, st in zip(sp, strides)))
        dx[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)] = x
        outpad = list(ca.output_padding)
        before = [d * (kk - 1) - p for d, kk, p in zip(dil, k, pads[:nsp])]
        after = [d * (kk - 1) - p + op for d, kk, p, op in zip(dil, k, pads[nsp:], outpad)]
        if min(before + after) < 0:
            raise ValueError("ConvTranspose pads larger than the kernel are not supported by gptq")
        x = np.pad(dx, ((0, 0), (0, 0)) + tuple(zip(before, after)))
        strides = [1] * nsp
    else:
        x = np.pad(x, ((0, 0), (0, 0)) + tuple(zip(pads[:nsp], pads[nsp:])))
    g = geo.group
    c = x.shape[1]
    win = tuple((kk - 1) * d + 1 for kk, d in zip(k, dil))
    v = np.lib.stride_tricks.sliding_window_view(x, win, axis=tuple(range(2, 2 + nsp)))
    # v: [N, C, *out_full, *win]; keep the strides and the dilated taps
    sel = (slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides) + \
        tuple(slice(None, None, d) for d in dil)
    v = v[sel]  # [N, C, *out, *k]
    out = []
    for i in range(g):
        vg = v[:, i * c // g:(i + 1) * c // g]
        # -> [N, *out, C/g, *k] -> [positions, C/g * prod(k)]
        order = (0,) + tuple(range(2, 2 + nsp)) + (1,) + tuple(range(2 + nsp, 2 + 2 * nsp))
        out.append(np.ascontiguousarray(vg.transpose(order)).reshape(-1, (c // g) * int(np.prod(k))))
    return out


# --------------------------------------------------------------------------------------------
# on a quantized graph
# --------------------------------------------------------------------------------------------


def _hessian_groups(layers, budget_bytes: int) -> list[list]:
    """Split the layers into groups whose Hessians fit ``budget_bytes`` together (one data pass per group)."""
    out: list[list] = []
    cur: list = []
    used = 0
    for item in layers:
        k = item["k"]
        nbytes = 8 * k * k * item["groups"]
        if cur and used + nbytes > budget_bytes:
            out.append(cur)
            cur, used = [], 0
        cur.append(item)
        used += nbytes
    if cur:
        out.append(cur)
    return out


def collect_hessians(reference, items: list[dict], data, *, max_samples: int, threads: int | None = None,
                     budget_bytes: int = 1 << 30, progress=None, quantized=None) -> None:
    """``item["H"]`` = 2 X^T X / n per group, X the patches of the layer's input over the calibration data
    (streamed: batch by batch; several data passes when the matrices do not fit ``budget_bytes`` together).

    With ``quantized`` (the Q/DQ graph, layer names shared with ``reference``), X is the layer's input in the
    quantized model (activations through their Q/DQ, earlier layers rounded to nearest) and ``item["C"]`` =
    2 X_fp^T X / n is gathered too: the cross term that lets GPTQ aim at the FP32 layer's output from the
    quantized input (:func:`asymmetric_target`)."""
    from ..ir.graph import copy_graph
    from ..ir.runtime import Session

    def probe(graph, names, level):
        g = copy_graph(graph)
        ts = g.tensors()
        g.outputs = [ts[n] for n in names]
        g.cleanup(remove_unused_graph_inputs=False)
        return Session(g, opt_level=level, threads=threads)

    per = 2 if quantized is not None else 1
    for group in _hessian_groups(items, budget_bytes // per):
        s_ref = probe(reference, sorted({it["input"] for it in group}), "all")
        s_q = probe(quantized, sorted({it["q_input"] for it in group}), "basic") if quantized is not None else None
        for it in group:
            it["H"] = [np.zeros((it["k"], it["k"])) for _ in range(it["groups"])]
            it["C"] = [np.zeros((it["k"], it["k"])) for _ in range(it["groups"])] if s_q is not None else None
            it["n"] = 0
        try:
            for b in data.limited(max_samples).batches(reference, None):
                outs = dict(zip(s_ref.output_names, s_ref.run({k: v for k, v in b.feeds.items()
                                                                if k in s_ref.input_names})))
                qouts = dict(zip(s_q.output_names, s_q.run({k: v for k, v in b.feeds.items()
                                                            if k in s_q.input_names}))) if s_q is not None else {}
                for it in group:
                    x = outs[it["input"]]
                    xq = qouts.get(it.get("q_input", ""))
                    steps = x.shape[0] if it["geo"].kind.is_conv else 1
                    for i in range(steps):  # a sample at a time: the patches stay small
                        sl = slice(i, i + 1) if it["geo"].kind.is_conv else slice(None)
                        pf = patches(x[sl], it["geo"], it["attrs"])
                        pq = patches(xq[sl], it["geo"], it["attrs"]) if xq is not None else pf
                        for gi, (a, q) in enumerate(zip(pf, pq)):
                            it["H"][gi] += 2.0 * (q.T @ q)
                            if it["C"] is not None:
                                it["C"][gi] += 2.0 * (a.T @ q)
                            if gi == 0:
                                it["n"] += q.shape[0]
                if progress is not None:
                    progress.update(b.samples if b.batch_axis else 1)
        finally:
            s_ref.close()
            if s_q is not None:
                s_q.close()
        for it in group:
            n = max(it["n"], 1)
            it["H"] = [h / n for h in it["H"]]
            if it["C"] is not None:
                it["C"] = [c / n for c in it["C"]]


def asymmetric_target(W: np.ndarray, H: np.ndarray, C: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """The float weight that best maps the quantized input to the FP32 output: argmin_W' ||W X_fp - W' X_q||^2
    = W C H^-1 (C = X_fp^T X_q, H = X_q^T X_q, damped like GPTQ).  GPTQ on it with H then minimises
    ||W X_fp - Q X_q||^2: the rounding also absorbs the error of the quantized activations before it."""
    k = H.shape[0]
    Hd = H + damp * float(np.mean(np.diag(H)) or 1.0) * np.eye(k)
    return np.linalg.solve(Hd.T, (W @ C).T).T


# --------------------------------------------------------------------------------------------
# the pass's work (passes/gptq.py, qcompiler finetune --method gptq)
# --------------------------------------------------------------------------------------------


@dataclass
class GPTQReport(State):
    """Per layer: the objective ||(W - Q) X||^2 / n with round-to-nearest and with GPTQ."""

    fact = "gptq-report"
    layers: dict[str, tuple[float, float]]
    seconds: float
    wider: list[str] = field(default_factory=list)  # layers given 8-bit weights by the fallback


def _objective(W: np.ndarray, Q: np.ndarray, H: np.ndarray) -> float:
    D = W - Q
    return float(np.einsum("ik,kl,il->", D, H, D)) / 2.0


def _solve_layer(task: tuple) -> tuple[np.ndarray, QParams, float, float, bool, float]:
    """GPTQ one layer (pure: a Ray task or a local call): its rounded weight, grid, objectives (round-to-nearest,
    GPTQ), whether the grid is new, and the layer's output energy on the same scale (``W H W^T / 2``).  With a
    ``fallback_db`` and a weight of fewer than 8 bits, a layer whose GPTQ output SQNR (energy over objective) stays
    below it is solved again with 8-bit weights on the same granularity."""
    W, geo, qp, spec, Hs, Cs, new_grid, asym, block, damp, act_order, fallback_db = task
    W = W.astype(np.float64)
    if asym and Cs is not None:
        # the weight that maps the quantized input to the FP32 output, on a grid sized for it
        W = from_matrix([asymmetric_target(wm, H, C, damp) for wm, H, C in zip(matrix_view(W, geo), Hs, Cs)], geo)
        qp = weight_qparams(W, spec, qp.axis)
        new_grid = True
    mats = matrix_view(W, geo)
    signal = float(sum(_objective(wm, np.zeros_like(wm), H) for wm, H in zip(mats, Hs)))
    Wq, e_rtn, e_gptq = _round_layer(W, geo, qp, Hs, block, damp, act_order)
    if fallback_db > 0 and spec.width < 8 and not spec.fp8 and db(signal, e_gptq) < fallback_db:
        spec8 = replace(spec, dtype="s8")
        qp = weight_qparams(W, spec8, qp.axis)
        Wq, e_rtn, e_gptq = _round_layer(W, geo, qp, Hs, block, damp, act_order)
        new_grid = True
    return Wq, qp, e_rtn, e_gptq, new_grid, signal


def _round_layer(W: np.ndarray, geo, qp: QParams, Hs, block: int, damp: float, act_order: bool) \
        -> tuple[np.ndarray, float, float]:
    s_full, z_full = expand_scale(qp, W.shape)
    s_mats = matrix_view(np.broadcast_to(s_full, W.shape).astype(np.float64), geo)
    z_mats = matrix_view(np.broadcast_to(z_full, W.shape).astype(np.float64), geo)
    out_mats, e_rtn, e_gptq = [], 0.0, 0.0
    for wm, sm, zm, H in zip(matrix_view(W, geo), s_mats, z_mats, Hs):
        quant = grid_quantizer(sm, zm, qp.qmin, qp.qmax)
        qr = rtn(wm, quant)
        qg = gptq(wm, H, quant, block=block, damp=damp, act_order=act_order)
        er, eg = _objective(wm, qr, H), _objective(wm, qg, H)
        out_mats.append(qg if eg < er else qr)  # never worse than round-to-nearest on the objective
        e_rtn += er
        e_gptq += min(eg, er)
    return from_matrix(out_mats, geo), e_rtn, e_gptq


def _solve_task(it: dict, *, block: int, damp: float, act_order: bool, asym: bool, fallback_db: float = 0.0) -> tuple:
    return (it["W"], it["geo"], it["qp"], it["spec"], it["H"], it.get("C"), it["new_grid"], asym, block, damp,
            act_order, fallback_db)


def _write_layer(it: dict, solved: tuple, names: Namer, record: QuantizationRecord, report: dict,
                 state: dict) -> None:
    """Write a solved layer's integers (and its new grid) into its DequantizeLinear."""
    Wq, qp, e_rtn, e_gptq, new_grid, signal = solved
    ints = quantize_weight(Wq, qp)
    dq: gs.Node = it["dq"]
    dq.inputs[0] = gs.Constant(names(it["node"].name + "_w_gptq"), ints)
    if new_grid:
        dq.inputs[1] = gs.Constant(names(it["node"].name + "_w_scale"), np.asarray(qp.scale))
        dq.inputs[2] = gs.Constant(names(it["node"].name + "_w_zero_point"), np.asarray(qp.zero_point))
        dq.attrs.pop("block_size", None)
        if qp.axis is not None:
            dq.attrs["axis"] = int(qp.axis)
        if qp.block_size:
            dq.attrs["block_size"] = int(qp.block_size)
            state["need_opset"] = max(state["need_opset"], 21)
        record.emitted.weight_qparams[it["node"].name] = qp
    report[it["node"].name] = (e_rtn, e_gptq)
    it["signal"], it["bits"] = signal, int(qp.spec.width)
    it["H"] = it["C"] = None  # free as we go


def run_gptq(qdq: gs.Graph, reference: gs.Graph, record: QuantizationRecord, data, *, bits: int = 0,
             block_size: int = 0, act_order: bool = True, damp: float = 0.01, block: int = 128,
             max_samples: int = 128, threads: int | None = None, progress: str = "off",
             diagnostics=None, inputs: str = "quantized", executor: Any = None,
             fallback_db: float = 0.0) -> GPTQReport:
    """Re-round the weights of ``qdq`` in place (see the module docstring).  With a parallel ``executor`` the
    layers' solves run as tasks (the same numpy code, so the same integers)."""
    t0 = time.perf_counter()
    ref_nodes = {n.name: n for n in reference.nodes}
    nodes = {n.name: n for n in qdq.nodes}
    items = []
    for wp in record.plan.weights:
        node, rn = nodes.get(wp.node), ref_nodes.get(wp.node)
        if node is None or rn is None:
            continue  # inside a subgraph, or renamed: left as round-to-nearest
        dq = producer(node.inputs[wp.index])
        W = const_value(rn.inputs[wp.index])
        if dq is None or dq.op != "DequantizeLinear" or const_value(dq.inputs[0]) is None or W is None \
                or wp.spec.fp8:
            continue
        geo = LayerGeometry.of(rn, tuple(W.shape))
        if geo is None:
            continue
        spec, axis = wp.spec, wp.axis
        if bits:
            spec = replace(spec, dtype=f"s{bits}")
        if block_size:
            if rn.op not in ("MatMul", "Gemm"):
                raise QCompilerError(f"gptq: block-size is for MatMul/Gemm weights, not {rn.op} {rn.name}",
                                     code="QC603", hint="use block-size=0 (per channel) for convolutions")
            spec = replace(spec, qscheme="per_block_symmetric", block_size=block_size)
            axis = geo.in_axis
        elif bits:
            spec = replace(spec, qscheme="per_channel_symmetric", block_size=None)
            axis = geo.out_axis if geo.per_channel_writable else None
        qp = weight_qparams(W, spec, axis) if (bits or block_size) else record.emitted.weight_qparams[wp.node]
        k = matrix_view(W.astype(np.float64), geo)[0].shape[1]
        items.append({"node": node, "dq": dq, "ref": rn, "W": W, "geo": geo, "qp": qp, "spec": spec, "k": k,
                      "groups": geo.group if geo.kind.is_conv else 1, "input": rn.inputs[0].name,
                      "q_input": node.inputs[0].name, "attrs": dict(rn.attrs),
                      "new_grid": bool(bits or block_size)})
    if not items:
        raise QCompilerError("gptq found no quantized layer with a stored integer weight to re-round", code="QC603",
                             hint="run it after insert-qdq with weights=dq (the default)")
    names = Namer(qdq)
    report: dict[str, tuple[float, float]] = {}
    state = {"need_opset": 0}

    def gather(batch: list[dict]) -> None:
        collect_hessians(reference, batch, data, max_samples=max_samples, threads=threads,
                         quantized=qdq if inputs in ("quantized", "sequential") else None)

    kw: dict[str, Any] = {"block": block, "damp": damp, "act_order": act_order, "asym": inputs == "sequential",
                          "fallback_db": fallback_db}

    def done(it: dict) -> None:
        er, eg = report[it["node"].name]
        layer_db = db(it["signal"], eg)
        if it["bits"] != int(it["spec"].width):
            fallbacks.append(it["node"].name)
        if diagnostics is not None:
            diagnostics.remark("QC603", f"gptq {it['node'].name}: objective {er:.4g} (round-to-nearest) -> "
                                        f"{eg:.4g}, output SQNR {layer_db:.1f} dB"
                                        + (f", {it['bits']}-bit weights (below {fallback_db:g} dB at "
                                           f"{int(it['spec'].width)} bits)" if it["bits"] != int(it["spec"].width)
                                           else ""),
                               node=it["node"].name, pass_name="gptq")

    fallbacks: list[str] = []
    solved = None
    if executor is not None and executor.parallel and inputs != "sequential" and len(items) > 1:
        solved = _solve_on(executor, items, reference, qdq if inputs == "quantized" else None, data,
                           max_samples, kw, progress)
    if solved is not None:
        for it, sol in zip(items, solved):
            _write_layer(it, sol, names, record, report, state)
            done(it)
    else:
        if executor is not None and executor.parallel and diagnostics is not None:
            why = ("inputs=sequential: each layer's inputs depend on the layers before it" if inputs == "sequential"
                   else "a model over 2 GB" if len(items) > 1 else "one layer")
            diagnostics.remark("QC603", f"gptq runs in this process ({why})", pass_name="gptq")
        if inputs != "sequential":
            total = data.size_hint()
            with Progress("gptq: hessians", total=min(total, max_samples) if total else None, unit="samples",
                          mode=progress) as bar:
                collect_hessians(reference, items, data, max_samples=max_samples, threads=threads, progress=bar,
                                 quantized=qdq if inputs == "quantized" else None)
        with Progress("gptq", total=len(items), unit="layers", mode=progress, interval=0.0) as bar:
            for it in items:
                if inputs == "sequential":  # this layer's inputs with every layer before it already re-rounded
                    gather([it])
                _write_layer(it, _solve_layer(_solve_task(it, **kw)), names, record, report, state)
                done(it)
                bar.update(1, note=f"{it['node'].name}: {report[it['node'].name][0]:.3g} -> "
                                   f"{report[it['node'].name][1]:.3g}")
    need_opset = state["need_opset"]
    if need_opset and int(qdq.opset or 1) < need_opset:
        from ..ir.opset import upgrade_opset

        upgrade_opset(qdq, need_opset)
    qdq.cleanup(remove_unused_graph_inputs=False)
    return GPTQReport(report, time.perf_counter() - t0, fallbacks)



#: what a task needs of a layer to gather its Hessian and solve it (no graph objects)
_PORTABLE = ("W", "geo", "qp", "spec", "k", "groups", "input", "q_input", "attrs", "new_grid")


def _balanced(items: list[dict], n: int) -> list[list[int]]:
    """Indices of ``items`` in ``n`` groups of about equal work (a Hessian costs ~k^2 per patch, a solve ~k^3),
    each group in the original order."""
    load = [0.0] * n
    groups: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(items)), key=lambda i: (-items[i]["k"] ** 2 * items[i]["groups"], i)):
        j = min(range(n), key=lambda j: (load[j], j))
        groups[j].append(i)
        load[j] += float(items[i]["k"]) ** 2 * items[i]["groups"]
    return [sorted(g) for g in groups if g]


def _gptq_task(inputs, task: tuple) -> list[tuple]:
    """A task: the Hessians of a group of layers over all the data (from its own sessions), then their solves;
    only the rounded weights travel back."""
    reference, quantized = inputs.graphs
    items, max_samples, kw = task
    collect_hessians(reference, items, inputs.data, max_samples=max_samples, threads=inputs.threads,
                     quantized=quantized)
    return [_solve_layer(_solve_task(it, **kw)) for it in items]


def _solve_on(executor, items: list[dict], reference: gs.Graph, quantized: gs.Graph | None, data,
              max_samples: int, kw: dict[str, Any], progress: str) -> list[tuple] | None:
    """GPTQ's Hessians and solves on ``executor``: the layers in one group per worker, each group a task that
    reads the data itself.  A layer's Hessian is the same sum over the same samples as in one process, so the
    integers are the same; None when a model is too big to ship."""
    from ..executor import map_over_graph

    groups = _balanced(items, min(len(items), executor.workers))
    tasks = [([{k: items[i][k] for k in _PORTABLE} for i in g], max_samples, kw) for g in groups]
    parts = map_over_graph(executor, [reference, quantized], tasks, _gptq_task, data=data, what="gptq",
                           progress=progress,
                           labels=[f"gptq of {len(g)} layer(s) from {items[g[0]]['node'].name}" for g in groups])
    if parts is None:
        return None
    out: list[Any] = [None] * len(items)
    for g, part in zip(groups, parts):
        for i, sol in zip(g, part):
            out[i] = sol
    return out


def record_from_graph(qdq: gs.Graph) -> QuantizationRecord:
    """What insert-qdq would have recorded, read back from a quantized graph (``qcompiler finetune`` starts from a
    file): every weighted layer whose weight is DequantizeLinear(integer constant), with its scale, zero point,
    axis or block, and the grid its integers use (symmetric: [-m, m], m the largest |integer|, e.g. s4 stored
    as int8)."""
    from .targets import get_target
    from .recipe import Recipe

    plan = Plan(get_target("tensorrt"), Recipe())
    emitted = EmitResult()
    for n in qdq.nodes:
        if LayerKind.of(n.op) is None or len(n.inputs) < 2:
            continue
        dq = producer(n.inputs[1])
        q = const_value(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        if q is None or q.dtype.kind not in "iu" and q.dtype.name not in ("int4", "uint4"):
            continue
        assert dq is not None
        scale = np.asarray(const_value(dq.inputs[1]))
        zp = np.asarray(const_value(dq.inputs[2])) if len(dq.inputs) > 2 and dq.inputs[2].name else \
            np.zeros(scale.shape, q.dtype)
        block = dq.attrs.get("block_size")
        axis = int(dq.attrs.get("axis", 1)) if scale.size > 1 else None
        m = int(np.max(np.abs(q.astype(np.int64)))) if q.size else 127
        bits = max(2, int(np.ceil(np.log2(m + 1))) + 1)
        signed = q.dtype.name in ("int8", "int4")
        qmin, qmax = (-m, m) if signed else (0, 2 ** bits - 1)
        spec = QSpec(dtype=f"{'s' if signed else 'u'}{bits}",
                     qscheme="per_block_symmetric" if block else "per_channel_symmetric" if axis is not None
                     else "per_tensor_symmetric", block_size=int(block) if block else None)
        plan.weights.append(WeightPoint(n.name, 1, dq.inputs[0].name, spec, axis))
        emitted.weight_qparams[n.name] = QParams(scale.astype(np.float32), zp, qmin, qmax, spec, axis,
                                                 int(block) if block else None)
    return QuantizationRecord(plan, emitted, {})
