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
from .ir.graph import copy_graph, get_meta
from .ir.query import const_value, produced_by
from .ir.runtime import Session
from .progress import mode_for
from .quant.sensitivity import layer_sensitivity, quantized_layers, streamed_sqnr
from .quant.qspec import dequantize_linear, storage_grid

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
        zp = np.asarray(const_value(q.inputs[2])).reshape(-1)[:1] if len(q.inputs) > 2 else np.zeros(1, np.uint8)
        qmin, qmax, _ = storage_grid(zp.dtype)
        lo, hi = (float(v) for v in dequantize_linear(np.array([qmin, qmax]), np.asarray(scale), zp[:1]))
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
    from .quant.floattype import fp32_view

    qdq = fp32_view(load_model(qdq_path))  # an fp16/bf16 model is measured in float32
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
            sens = layer_sensitivity(qdq, ref, data, layers=layers, progress=mode_for(None), executor=ex,
                                     diagnostics=diags)
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
    ft = recipe.get("float_type")
    if ft and ft.get("type") != "fp32":
        md += ["", f"Float parts in {ft['type']}: {100 * ft['float_macs_share']:.0f} % of the float layers' MACs and "
                   f"{100 * ft['float_weight_share']:.0f} % of the float weight bytes; {ft['casts']} Cast(s); "
                   f"{len(ft['islands'])} fp32 island(s)" + (":" if ft["islands"] else "."), ""]
        md += [f"* `{i['node']}` ({i['op']}): {i['reason']}" for i in ft["islands"]]
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
