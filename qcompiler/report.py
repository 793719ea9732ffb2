"""What quantization cost, layer by layer: ``qcompiler report`` and ``compile --report``.

* output SQNR (and top-1 when the calibration data carries labels) of the quantized model vs FP32;
* per-layer SQNR: the output of every quantized layer in the quantized model vs the same tensor in the
  FP32 model (the FP32 model is replayed through the FP32-preserving passes the quantized model went
  through, so tensor names and folded weights line up);
* sensitivity: the model's output SQNR when *only* that layer is quantized (everything else float) -
  the layers with the lowest values are the ones to keep in float (see the ``mixed-precision`` pass);
* activation histograms of the worst layers with the quantization range marked.

Outputs: ``report.html`` (self-contained: plots embedded), ``report.md``, ``report.json``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .diagnostics import QCompilerError
from .fsutil import atomic_write
from .ir import load_model
from .ir.io import copy_graph, get_meta
from .ir.query import const_value, produced_by, producer
from .ir.runtime import Session
from .progress import Progress, mode_for
from .quant.numerics import db
from .quant.strip import float_inputs

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantized_layers(g: gs.Graph) -> list[gs.Node]:
    out = []
    for n in g.nodes:
        if n.op in WEIGHTED and len(n.inputs) > 1:
            src = [producer(i) for i in n.inputs[:2]]
            if any(p is not None and p.op == "DequantizeLinear" for p in src):
                out.append(n)
    return out


def streamed_sqnr(ref: gs.Graph, test: gs.Graph, tensors: list[str], data, *, labels: np.ndarray | None = None,
                  ref_level: str = "all", threads: int | None = None) -> dict[str, Any]:
    """SQNR of ``tensors`` (present in both graphs) over the data, accumulated batch by batch."""
    def exposing(g):
        h = copy_graph(g)
        ts = h.tensors()
        h.outputs = [ts[t] for t in tensors]
        h.cleanup(remove_unused_graph_inputs=False)
        return Session(h, opt_level="basic" if any(n.op == "QuantizeLinear" for n in h.nodes) else ref_level,
                       threads=threads)

    sa, sb = exposing(ref), exposing(test)
    sig = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    correct = total = agree = 0
    try:
        for batch in data.batches(ref, None):
            first, feeds = batch.first, batch.feeds
            a = sa.run({k: v for k, v in feeds.items() if k in sa.input_names})
            b = sb.run({k: v for k, v in feeds.items() if k in sb.input_names})
            for t, x, y in zip(tensors, a, b):
                x64 = x.astype(np.float64)
                sig[t] += float(np.sum(x64 ** 2))
                noise[t] += float(np.sum((x64 - y) ** 2))
            if tensors:
                x, y = a[-1], b[-1]
                if x.ndim == 2:
                    agree += int(np.sum(x.argmax(1) == y.argmax(1)))
                    if labels is not None:
                        correct += int(np.sum(y.argmax(1) == labels[first:first + len(y)]))
                total += x.shape[0] if x.ndim else 1
    finally:
        sa.close()
        sb.close()
    out = {"sqnr": {t: db(sig[t], noise[t]) for t in tensors}, "samples": total}
    if total:
        out["argmax_agreement"] = agree / total
        if labels is not None:
            out["top1"] = 100.0 * correct / total
    return out


def float_all_but(qdq: gs.Graph, reference: gs.Graph, keep: set[str]) -> gs.Graph:
    """A copy of the quantized graph where only the layers in ``keep`` stay quantized: every other Q/DQ
    edge reads the float tensor again and other weights are the FP32 ones."""
    return _unquantize(qdq, reference, lambda n: n.name not in keep)


def float_layers(qdq: gs.Graph, reference: gs.Graph, names: set[str]) -> gs.Graph:
    """A copy of the quantized graph with the layers in ``names`` back in float (their input Q/DQ edges read
    the float tensor, their weights are the FP32 ones); everything else stays as it is."""
    return _unquantize(qdq, reference, lambda n: n.name in names)


def _unquantize(qdq: gs.Graph, reference: gs.Graph, which) -> gs.Graph:
    """A copy of ``qdq`` in which the nodes ``which`` accepts read float inputs (quant/strip.py)."""
    g = copy_graph(qdq)
    ref_nodes = {n.name: n for n in reference.nodes}
    for n in list(g.nodes):
        if n.op not in ("QuantizeLinear", "DequantizeLinear") and which(n):
            float_inputs(n, ref_nodes.get(n.name))
    g.cleanup(remove_unused_graph_inputs=False)
    return g


def layer_sensitivity(qdq: gs.Graph, reference: gs.Graph, data, *, layers: list[gs.Node] | None = None,
                      progress: str = "off", executor: Any = None) -> dict[str, float]:
    """Output SQNR with only one layer quantized, for each quantized layer.  With a parallel ``executor`` the
    layers are split into groups, one task each; every evaluation is the same run as here, so the numbers (and
    the ranking) are identical."""
    layers = layers if layers is not None else quantized_layers(qdq)
    names = [n.name for n in layers]
    if executor is not None and executor.parallel and len(names) > 1:
        from .ir.io import put_graph

        q_ref, r_ref = put_graph(executor, qdq), put_graph(executor, reference)
        if q_ref is not None and r_ref is not None:
            d_ref = executor.put(data)
            k = min(len(names), 4 * executor.workers)  # a few groups per worker: the slow layers even out
            bounds = [len(names) * i // k for i in range(k + 1)]
            groups = [names[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
            parts = executor.map(_sensitivity_task, [(q_ref, r_ref, d_ref, g) for g in groups], what="sensitivity",
                                 progress=progress, labels=[f"sensitivity of layers {g[0]} .. {g[-1]}"
                                                            for g in groups])
            merged = {name: v for part in parts for name, v in part.items()}
            return {name: merged[name] for name in names}
    return _sensitivity_of(qdq, reference, data, names, progress)


def _sensitivity_of(qdq: gs.Graph, reference: gs.Graph, data, names: list[str], progress: str = "off",
                    threads: int | None = None) -> dict[str, float]:
    outs = [t.name for t in reference.outputs]
    res = {}
    with Progress("sensitivity", total=len(names), unit="layers", mode=progress) as bar:
        for name in names:
            g = float_all_but(qdq, reference, {name})
            r = streamed_sqnr(reference, g, outs[:1], data, threads=threads)
            res[name] = r["sqnr"][outs[0]]
            bar.update(1, note=f"{name}: {res[name]:.1f} dB")
    return res


def _sensitivity_task(task: tuple) -> dict[str, float]:
    """A Ray task: the sensitivity of a group of layers, the models and data fetched from the object store."""
    from .executor import resolve, task_threads
    from .ir.io import graph_from_ref

    q_ref, r_ref, d_ref, names = task
    return _sensitivity_of(graph_from_ref(q_ref), graph_from_ref(r_ref), resolve(d_ref),
                           names, threads=task_threads())


@dataclass
class Comparison:
    outputs: dict[str, float]
    top1: float | None = None
    top1_fp32: float | None = None
    agreement: float | None = None
    samples: int = 0

    def render_text(self) -> str:
        lines = [f"report: {self.samples} samples"]
        for k, v in self.outputs.items():
            lines.append(f"  output '{k}': SQNR {v:.1f} dB vs FP32")
        if self.agreement is not None:
            lines.append(f"  same argmax as FP32 on {100 * self.agreement:.1f}% of samples")
        if self.top1 is not None:
            lines.append(f"  top-1 {self.top1:.2f}% (FP32 {self.top1_fp32:.2f}%)")
        return "\n".join(lines)


def compare_models(fp32: Any, qdq: Any, *, calib_data, threads: int | None = None) -> Comparison:
    a = load_model(fp32) if not isinstance(fp32, gs.Graph) else fp32
    b = load_model(qdq) if not isinstance(qdq, gs.Graph) else qdq
    if calib_data is None:
        raise QCompilerError("--report needs --calib-data (the samples the outputs are compared on)", code="QC401")
    labels = calib_data.labels() if hasattr(calib_data, "labels") else None
    outs = [t.name for t in a.outputs]
    r = streamed_sqnr(a, b, outs, calib_data, labels=labels)
    fp = None
    if labels is not None:
        fp = streamed_sqnr(a, a, outs[:1], calib_data, labels=labels).get("top1")
    return Comparison(r["sqnr"], r.get("top1"), fp, r.get("argmax_agreement"), r["samples"])


# ------------------------------------------------------------------------------------------------
# the report files
# ------------------------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _short(name: str) -> str:
    """'/features/features.7/conv/conv.3/Conv' -> 'features.7/conv.3' (enough to tell layers apart)."""
    parts = [p for p in name.split("/") if p]
    if len(parts) >= 3:
        keep = [p for p in parts[:-1] if "." in p] or parts[-3:-1]
        return "/".join(keep[-2:])
    return name[-28:]


def _plots(layer_sqnr: dict[str, float], sens: dict[str, float] | None, hists: list[dict]) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out = {}
    names = list(layer_sqnr)
    short = [_short(n) for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 3.2))
    vals = [min(layer_sqnr[n], 80) for n in names]
    ax.bar(range(len(names)), vals, color=["#c0392b" if v < 20 else "#e67e22" if v < 30 else "#2e86c1" for v in vals])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(short, rotation=70, fontsize=7)
    for y, c, label in ((20, "#c0392b", "< 20 dB"), (30, "#e67e22", "20-30 dB")):
        ax.axhline(y, color=c, lw=0.8, ls="--", label=label)
    ax.legend(loc="upper right", fontsize=7, title="bar colour", title_fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Per-layer SQNR: quantized vs FP32 output of each layer")
    out["layers"] = _png(fig)
    plt.close(fig)
    if sens:
        order = sorted(sens, key=lambda k: sens[k])
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order)), 3.2))
        ax.bar(range(len(order)), [min(sens[k], 80) for k in order], color="#8e44ad")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([_short(k) for k in order], rotation=70, fontsize=7)
        ax.set_ylabel("model output SQNR (dB)")
        ax.set_title("Sensitivity: output SQNR with only this layer quantized (lowest = most sensitive)")
        out["sensitivity"] = _png(fig)
        plt.close(fig)
    if hists:
        fig, axes = plt.subplots(1, len(hists), figsize=(4 * len(hists), 2.8))
        axes = np.atleast_1d(axes)
        for ax, h in zip(axes, hists):
            ax.bar(h["edges"][:-1], h["counts"], width=np.diff(h["edges"]), color="#7f8c8d")
            for x in (h["lo"], h["hi"]):
                ax.axvline(x, color="#c0392b", lw=1.5)
            ax.set_yscale("log")
            ax.set_title(_short(h["name"]), fontsize=8)
            ax.set_xlabel("value (red: quantization range)", fontsize=7)
        out["histograms"] = _png(fig)
        plt.close(fig)
    return out


def _activation_histograms(ref: gs.Graph, qdq: gs.Graph, data, worst: list[str]) -> list[dict]:
    """Histograms of the inputs of the worst layers, with the range their Q/DQ uses."""
    out = []
    nodes = {n.name: n for n in qdq.nodes}
    for name in worst:
        n = nodes.get(name)
        dq = produced_by(n.inputs[0], "DequantizeLinear") if n is not None else None
        q = produced_by(dq.inputs[0], "QuantizeLinear") if dq is not None else None
        if q is None:
            continue
        t = q.inputs[0].name
        scale = float(np.asarray(const_value(q.inputs[1])).reshape(-1)[0])
        zp = float(np.asarray(const_value(q.inputs[2])).astype(np.float64).reshape(-1)[0]) if len(q.inputs) > 2 else 0
        signed = np.asarray(const_value(q.inputs[2])).dtype.kind == "i" if len(q.inputs) > 2 else False
        lo, hi = ((-128 - zp) * scale, (127 - zp) * scale) if signed else ((0 - zp) * scale, (255 - zp) * scale)
        h = copy_graph(ref)
        ts = h.tensors()
        if t not in ts:
            continue
        h.outputs = [ts[t]]
        h.cleanup(remove_unused_graph_inputs=False)
        s = Session(h, opt_level="all")
        vals = []
        for batch in data.batches(ref, None):
            vals.append(s.run({k: v for k, v in batch.feeds.items() if k in s.input_names})[0].reshape(-1)[::7])
            if sum(v.size for v in vals) > 200_000:
                break
        s.close()
        v = np.concatenate(vals)
        counts, edges = np.histogram(v, bins=80, range=(min(v.min(), lo), max(v.max(), hi)))
        out.append({"name": name, "tensor": t, "counts": counts.tolist(), "edges": edges.tolist(), "lo": lo, "hi": hi})
    return out


def write_report(fp32_path: str, qdq_path: str, out_dir: str, *, calib_data: Any, calib_options: dict | None = None,
                 sensitivity: bool = True, plots: bool = True, executor: Any = None) -> list[Path]:
    from .bridge.finetune import reference_graph
    from .calib.data import as_data_source
    from .diagnostics import DiagnosticEngine

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = as_data_source(calib_data, **(calib_options or {}))
    qdq = load_model(qdq_path)
    diags = DiagnosticEngine()
    ref = reference_graph(load_model(fp32_path), qdq, diags)
    data.check_signature(ref)
    layers = [n for n in quantized_layers(qdq) if n.name in {m.name for m in ref.nodes}]
    ref_tensors = {t for t in ref.tensors()}
    tensors = [n.outputs[0].name for n in layers if n.outputs[0].name in ref_tensors]
    outs = [t.name for t in ref.outputs]
    res = streamed_sqnr(ref, qdq, tensors + outs[:1], data, labels=data.labels())
    layer_sqnr = {n.name: res["sqnr"][n.outputs[0].name] for n in layers if n.outputs[0].name in res["sqnr"]}
    sens = None
    if sensitivity:
        from .executor import make_executor

        ex = make_executor(executor)
        try:
            sens = layer_sensitivity(qdq, ref, data, layers=layers, progress=mode_for(None), executor=ex)
        finally:
            if ex is not executor:
                ex.close()
    worst = sorted(layer_sqnr, key=lambda k: layer_sqnr[k])[:3]
    hists = _activation_histograms(ref, qdq, data, worst)
    meta = get_meta(qdq).metadata_props
    summary = {
        "fp32": str(fp32_path), "quantized": str(qdq_path), "samples": res["samples"],
        "output_sqnr_db": res["sqnr"][outs[0]], "argmax_agreement": res.get("argmax_agreement"),
        "top1": res.get("top1"), "pipeline": meta.get("qcompiler.pipeline"),
        "layers": [{"layer": k, "sqnr_db": layer_sqnr[k], **({"sensitivity_sqnr_db": sens[k]} if sens else {})}
                   for k in layer_sqnr],
        "worst_layers": worst, "seconds": round(time.perf_counter() - t0, 2),
    }
    recipe_file = Path(str(qdq_path) + ".recipe.json")
    if recipe_file.exists():
        summary["recipe"] = json.loads(recipe_file.read_text())
    files = []
    p = out / "report.json"
    atomic_write(p, json.dumps(summary, indent=2, default=_json_default) + "\n")
    files.append(p)
    md = ["# Quantization report", "", f"* FP32: `{fp32_path}`", f"* quantized: `{qdq_path}`",
          f"* pipeline: `{summary['pipeline']}`", f"* samples: {summary['samples']}",
          f"* output SQNR vs FP32: **{summary['output_sqnr_db']:.1f} dB**"]
    if summary.get("top1") is not None:
        md.append(f"* top-1: {summary['top1']:.2f}%")
    if summary.get("argmax_agreement") is not None:
        md.append(f"* same prediction as FP32: {100 * summary['argmax_agreement']:.1f}%")
    recipe = summary.get("recipe") or {}
    if recipe.get("float_layers"):
        md += ["", "Layers left float by the compiler, and why:", ""]
        md += [f"* `{k}`: {v}" for k, v in sorted(recipe["float_layers"].items())]
    guard = recipe.get("guard")
    if guard and guard.get("decisions"):
        md += ["", f"The accuracy guard (threshold {guard['sqnr_threshold_db']:g} dB) found the worst output part at "
                   f"{guard['worst_before_db']:.1f} dB and brought it to {guard['worst_after_db']:.1f} dB "
                   f"({100 * guard['float_macs_fraction']:.2f} % of the MACs float):", ""]
        for d in guard["decisions"]:
            what = "float" if d["remedy"] == "float" else f"the {d['remedy'].split('=')[1]} range"
            md.append(f"* {', '.join(f'`{t}`' for t in d['tensors'])}: {what}"
                      + (f" (layers {', '.join(d['layers'])})" if d["layers"] else ""))
    md += ["", "| layer | SQNR dB | only-this-layer output SQNR dB |", "|---|---|---|"]
    for row in sorted(summary["layers"], key=lambda r: r["sqnr_db"]):
        md.append(f"| `{row['layer']}` | {row['sqnr_db']:.1f} | "
                  f"{row.get('sensitivity_sqnr_db', float('nan')):.1f} |")
    p = out / "report.md"
    atomic_write(p, "\n".join(md) + "\n")
    files.append(p)
    images = _plots(layer_sqnr, sens, hists) if plots else {}
    p = out / "report.html"
    atomic_write(p, _html(summary, images))
    files.append(p)
    for k, v in images.items():
        ip = out / f"{k}.png"
        atomic_write(ip, base64.b64decode(v))
        files.append(ip)
    return files


def _json_default(o):
    if isinstance(o, float) and not np.isfinite(o):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _html(summary: dict, images: dict[str, str]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td><code>{e(r['layer'])}</code></td><td>{r['sqnr_db']:.1f}</td>"
                   f"<td>{r.get('sensitivity_sqnr_db', float('nan')):.1f}</td></tr>"
                   for r in sorted(summary["layers"], key=lambda r: r["sqnr_db"]))
    img = "".join(f"<h2>{e(k.title())}</h2><img src='data:image/png;base64,{v}'/>" for k, v in images.items())
    top1 = f"<li>top-1: {summary['top1']:.2f}%</li>" if summary.get("top1") is not None else ""
    recipe = ""
    if summary.get("recipe"):
        text = json.dumps(summary["recipe"], indent=2, default=str)[:20000]
        recipe = "<h2>Recipe used</h2><pre>" + e(text) + "</pre>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qcompiler report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}} td,th{{padding:2px 10px;text-align:left}}
tr:nth-child(even){{background:#f3f3f3}} img{{max-width:100%}} code{{font-size:90%}}</style></head><body>
<h1>Quantization report</h1>
<ul><li>FP32: <code>{e(summary['fp32'])}</code></li><li>quantized: <code>{e(summary['quantized'])}</code></li>
<li>pipeline: <code>{e(str(summary['pipeline']))}</code></li><li>samples: {summary['samples']}</li>
<li>output SQNR vs FP32: <b>{summary['output_sqnr_db']:.1f} dB</b></li>{top1}
<li>worst layers: {', '.join('<code>' + e(w) + '</code>' for w in summary['worst_layers'])}</li>
<li>time: {summary['seconds']} s</li></ul>
{img}
<h2>Layers (worst first)</h2><table><tr><th>layer</th><th>SQNR dB</th>
<th>only-this-layer output SQNR dB</th></tr>{rows}</table>
{recipe}
</body></html>
"""
