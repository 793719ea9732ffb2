"""calibrate: collect activation statistics with onnxruntime for the tensors insert-qdq will quantize.

Which tensors: the placement plan (recipe + target rules) decides, so only activations that get a
Q/DQ (plus Concat partners that share their scale) are observed, not every tensor.

How: one onnxruntime session over the model with min/max reductions added in the graph (only a few
numbers per tensor leave onnxruntime) and, for histogram observers, the tensors exposed and turned
into fixed-resolution histograms batch by batch.  Memory does not grow with the number of samples;
results do not depend on the batch size or the order of the data (see qcompiler/calib/observers.py).

Observers (``method``): ``min_max``, ``moving_average`` (EMA of per-batch min/max), ``percentile``,
``mse`` (clip value minimising quantization MSE on the target grid), ``entropy`` (TensorRT's KL
calibration), ``histogram`` (collect once; the range comes from ``range-method``).  ``auto`` takes the
recipe's observer, else the target's default.

With ``--calib-cache FILE`` the statistics are stored keyed by a hash of (graph, data, observer
state); a matching cache skips the run, a stale one is ignored with a remark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from qcompiler.calib import CalibrationStats, CollectOptions, ObserverConfig, cache_key
from qcompiler.calib.collect import collect_sharded
from qcompiler.calib.data import CalibData, RandomSource
from qcompiler.calib.observers import METHODS
from qcompiler.diagnostics import CalibrationError
from qcompiler.pm import Pass, PassResult, option
from qcompiler.ir.graph import graph_fingerprint
from qcompiler.quant.plan import make_plan
from qcompiler.quant.recipe import validate_for_target
from qcompiler.quant.session import PlanOptions, default_observer, ensure_recipe


class Calibrate(Pass["Calibrate.Options"]):
    """Collect activation statistics (streaming, through onnxruntime) for the tensors to quantize."""

    name = "calibrate"
    provides = frozenset({"calibrated"})

    @dataclass(frozen=True)
    class Options(PlanOptions):
        method: str = option("auto", "observer for every activation (auto: the recipe's, else the target's default)",
                             choices=("auto",) + METHODS)
        percentile: float = option(99.99, "percentile for method=percentile", min=50.0, max=100.0)
        range_method: str = option("entropy", "what method=histogram turns into ranges",
                                   choices=("percentile", "mse", "entropy"))
        bins: int = option(2048, "histogram bins over [0, R) (R: the power of two above max |x|)", min=128)
        averaging_constant: float = option(0.01, "EMA constant for moving_average", min=0.0, max=1.0)
        batch_size: int = option(0, "batch size (0: the data's or the recipe's; models with a fixed batch dim use it)",
                                 min=0)
        max_samples: int = option(0, "use at most this many samples (0: all)", min=0)
        hist_sample: int = option(0, "histogram every k-th element of each sample (0: auto, at most 8192 per sample "
                                     "and tensor; 1: all); the choice never depends on the batch size", min=0)
        histograms: bool = option(False, "collect histograms with min_max/moving_average too (the guard computes "
                                         "other ranges from them)")
        keep_outputs: int = option(0, "keep the model's FP32 outputs on the first batches holding this many samples "
                                      "(the output guard's reference, from this run; 0: none)", min=0)
        random_samples: int = option(32, "samples of random data when calibrating without data "
                                         "(only with allow-random-calibration)", min=1)

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        from .insert_qdq import refuse_if_quantized

        refuse_if_quantized(graph)
        recipe = ensure_recipe(ctx, self.options)
        validate_for_target(recipe)
        recipe.check_patterns(graph, ctx.diagnostics)
        plan = make_plan(graph, recipe, None)
        observed = plan.observed()
        if not observed:
            if not any(s for w, s in recipe.specs() if w.endswith(".activation")):  # weight-only: as asked
                ctx.remark("QC405", "nothing to calibrate: the recipe quantizes weights only")
            else:
                ctx.warning("QC405", "nothing to calibrate: the plan quantizes no activation")
            ctx.state.put(CalibrationStats({}, "", 0))
            return PassResult(False, {"tensors": 0})
        cal = recipe.calibration
        configs = {}
        for t, spec in observed.items():
            method = self.options.method if self.options.method != "auto" else \
                (spec.observer or cal.get("method") or default_observer(recipe))
            configs[t] = ObserverConfig(
                method=method, axis=1 if spec.per_channel else None,
                bins=int(spec.option("bins", cal.get("bins", self.options.bins))),
                percentile=float(spec.option("percentile", cal.get("percentile", self.options.percentile))),
                averaging_constant=float(spec.option("averaging_constant",
                                                     cal.get("averaging_constant", self.options.averaging_constant))),
                range_method=str(spec.option("range_method", cal.get("range_method", self.options.range_method))),
                num_bits=8, symmetric=spec.symmetric, unsigned=not spec.signed, narrow=bool(spec.narrow),
                fp8=spec.fp8, histogram=self.options.histograms)

        data = ctx.calib_data
        if data is None:
            if not ctx.allow_random_calibration:
                raise CalibrationError("calibrate needs calibration data", code="QC401",
                                       hint="pass --calib-data PATH (an .npz keyed by input name), or "
                                            "--allow-random-calibration to calibrate on random inputs")
            ctx.warning("QC407", "calibrating on random data: ranges will not match real inputs")
            data = CalibData(RandomSource(self.options.random_samples, ctx.seed))
        batch = self.options.batch_size or data.options.batch_size or int(cal.get("batch_size", 0) or 0) or None
        max_samples = (self.options.max_samples or data.options.max_samples or int(cal.get("max_samples", 0) or 0)
                       or None)
        if max_samples != data.options.max_samples:
            data = data.limited(max_samples, batch_size=batch)
        data.check_signature(graph)

        key = ""
        fp = data.fingerprint() if ctx.calib_cache else None  # hashing the data costs a read of it
        if ctx.calib_cache and fp is not None:
            key = cache_key(graph_fingerprint(graph), fp, {t: c.key() for t, c in configs.items()})
            cached = self._load_cache(ctx, key)
            if cached is not None:
                for t, st in cached.tensors.items():
                    st.config = configs.get(t, st.config)
                    st.range = None
                if all(t in cached.tensors for t in configs):
                    cached.finalize()
                    ctx.state.put(cached)
                    ctx.remark("QC404", f"calibration statistics reused from '{ctx.calib_cache}' "
                                        f"({len(configs)} tensors, {cached.samples} samples)")
                    return PassResult(False, {"tensors": len(configs), "samples": cached.samples, "cached": 1})
        elif ctx.calib_cache and fp is None:
            ctx.remark("QC404", "this calibration data cannot be fingerprinted (a Python iterable without "
                                "cache_key), so the cache is not used")

        t0 = time.perf_counter()
        kept: list = []
        stats = collect_sharded(graph, configs, data, ctx.executor, diagnostics=ctx.diagnostics,
                                options=CollectOptions(batch_size=batch, threads=ctx.threads, opt_level="all",
                                                       hist_sample=self.options.hist_sample,
                                                       progress=ctx.progress_mode(),
                                                       keep_samples=self.options.keep_outputs if ctx.calib_data
                                                       is not None else 0),
                                timings=ctx.timings, kept=kept)
        samples = next(iter(stats.values())).extra.get("samples", 0) if stats else 0
        cs = CalibrationStats(stats, key, samples, {"methods": sorted({c.method for c in configs.values()})},
                              outputs=kept)
        cs.finalize()
        for t, k in cs.non_finite().items():
            ctx.remark("QC406", f"tensor '{t}' takes non-finite values (first on sample {k}; e.g. an additive -inf "
                                "attention mask): it stays float", node=t)
        for t in cs.unseen():
            ctx.remark("QC408", f"tensor '{t}' was never computed on the calibration data (inside an If branch no "
                                "sample took): it stays float; add data that takes that branch", node=t)
        ctx.timings["calibrate.total"] = ctx.timings.get("calibrate.total", 0.0) + time.perf_counter() - t0
        if ctx.calib_cache and key:
            cs.save_cache(ctx.calib_cache)
        ctx.state.put(cs)
        return PassResult(False, {"tensors": len(configs), "samples": samples, "cached": 0})

    @staticmethod
    def _load_cache(ctx, key: str) -> CalibrationStats | None:
        from pathlib import Path

        p = Path(ctx.calib_cache)
        if not p.exists():
            return None
        try:
            cached = CalibrationStats.load_cache(p)
        except Exception as exc:
            ctx.remark("QC404", f"ignoring unreadable calibration cache '{p}': {exc}")
            return None
        if cached.key != key:
            ctx.remark("QC404", f"calibration cache '{p}' is stale (model, data or observers changed); recalibrating")
            return None
        return cached
