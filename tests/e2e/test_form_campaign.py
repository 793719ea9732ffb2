"""The form campaign (issue 17): every model in every graph form through every named pipeline.

A model is taken in each form an exporter may write it in (models/forms.py: constants as initializers, as
Constant nodes, behind Identity nodes, also listed as graph inputs; opset 11/13/17/21; a symbolic batch; weights
in an external-data file) and compiled with each named pipeline through the command line.  Unmutated, every case
must succeed with

* a checker-valid model that onnxruntime runs,
* Q/DQ in it when the pipeline quantizes (never an unquantized "success"), lint-trt clean for the TensorRT ones,
* an exact FP32-preserving part: the pipeline's passes before the first non-FP32-preserving one (the whole
  pipeline for ``tidy`` and ``fp32-prep``) compute what the original model computes (rtol 1e-4 of the output
  range, onnxruntime at basic optimization, on real data).

Mutated (the fuzzer of test_fuzz.py applied to each form), a case may also fail, but only with a diagnostic
(exit 1 or 2), nothing written, the input untouched; a success must meet the same checks.  The default suite
runs every (form, pipeline) pair once on the digits zoo and the other-exporter models, rotating the models; ``-m
slow`` runs the whole product, two 224x224 architectures, and mutations.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompiler.diagnostics import Severity
from qcompiler.ir import import_model
from qcompiler.ir.query import op_histogram
from qcompiler.ir.shapes import reconcile_inputs, reconcile_shapes
from qcompiler.pm import PassContext, default_registry, run_pipeline
from qcompiler.pm.pipeline import PassSpec, PipelineSpec, expand, print_pipeline
from qcompiler.quant.lint import lint_model
from qcompiler.testing import assert_outputs_close, run

from .test_fuzz import MUTATIONS, mutate, run_case

FORMS = ("initializers", "constant-nodes", "identity", "identity-constant", "inputs", "opset-11", "opset-13",
         "opset-17", "opset-21", "symbolic-batch", "external-data", "outputs-rank0", "outputs-wrong-rank",
         "outputs-wrong-dims", "outputs-no-shape", "value-info-rank0", "value-info-wrong-rank", "input-rank0",
         "input-no-shape")
PIPELINES = ("tidy", "fp32-prep", "trt-int8", "trt-fp8", "ort-int8")
QUANTIZING = {"trt-int8", "trt-fp8", "ort-int8"}
SMALL = ("resnet", "resnet-bottleneck", "mobilenetv2", "conv1x1", "transformer", "decoder")
EXOTIC = ("paddle-opset12", "tf-nhwc-opset11", "identity-shared", "if-subgraph", "loop-subgraph",
          "residual-opset21", "dynamo-resnet")
BIG = ("mobilenetv2-full", "efficientnet-b0")


def fp32_part(pipeline: str) -> str:
    """The named pipeline's leading FP32-preserving passes, as pipeline text."""
    reg = default_registry()
    spec = expand(PipelineSpec((PassSpec(pipeline),)))
    head = []
    for el in spec:
        if isinstance(el, PassSpec) and not reg.get_pass(el.name).fp32_preserving:
            break
        head.append(el)
    return print_pipeline(list(head))


class Case:
    """One model, its calibration file and real inputs; ``export(opset)`` re-exports a zoo model at an opset."""

    def __init__(self, name: str, model: onnx.ModelProto, calib: Path, feeds: dict[str, np.ndarray],
                 export=None):
        self.name, self.model, self.calib, self.feeds, self.export = name, model, calib, feeds, export

    def in_form(self, form: str) -> onnx.ModelProto:
        """The model in ``form``; opset forms of zoo models are real torch exports at that opset (the TorchScript
        exporter stops at 20: 21 is converted up from 20).  Raises FormUnavailable."""
        from qcompiler.zoo import forms

        if form == "external-data":
            return forms.rewrite(self.model, "initializers")  # a copy: saving moves the data out of the proto
        if form.startswith("opset-") and self.export is not None:
            n = int(form.split("-")[1])
            m = onnx.load(self.export(min(n, 20)))
            return forms.rewrite(m, form) if n > 20 else m
        return forms.rewrite(self.model, form)


@pytest.fixture(scope="module")
def cases(zoo, tmp_path_factory):
    pytest.importorskip("torch")
    from qcompiler.zoo import exotic

    root = tmp_path_factory.mktemp("campaign")
    out: dict[str, Case] = {}

    def add(name, model, calib, export=None):
        x = np.load(calib)
        out[name] = Case(name, model, calib, {k: x[k][:4] for k in x.files}, export)

    for name in SMALL + BIG:
        add(name, onnx.load(zoo.onnx_path(name)), zoo.calibration_npz(name, 16),
            lambda opset, name=name: zoo.onnx_path(name, opset=opset))
    for name in EXOTIC:
        m = exotic.build(name)
        shape = exotic.input_shape(m)
        x = np.random.default_rng(0).standard_normal([16] + shape[1:]).astype(np.float32)
        calib = root / f"{name}.npz"
        np.savez(calib, **{m.graph.input[0].name: x})
        add(name, m, calib)
    return out


def write_form(case: Case, form: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    model = case.in_form(form)
    if form == "external-data":
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.weights", size_threshold=0)
    else:
        onnx.save(model, path)
    return path


def check_success(case: Case, src: Path, out: Path, pipeline: str, *, exact: bool = True) -> list[str]:
    """What is wrong with a successful compile (empty: nothing)."""
    problems = []
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:  # noqa: BLE001 - reported as a finding
        return [f"invalid output: {str(exc)[:200]}"]
    g = import_model(onnx.load(str(out)), normalize=False)
    hist = op_histogram(g)
    if pipeline in QUANTIZING:
        if not hist.get("DequantizeLinear"):
            problems.append("quantizing pipeline succeeded with no DequantizeLinear")
        if pipeline.startswith("trt-"):
            lint = lint_model(out, fp8=pipeline == "trt-fp8")
            if lint.n_errors:
                problems.append("lint-trt: " + "; ".join(f"{d.rule} {d.node}: {d.message}" for d in lint.findings
                                                        if d.severity >= Severity.ERROR)[:300])
    elif hist.get("QuantizeLinear") or hist.get("DequantizeLinear"):
        problems.append(f"{pipeline} added Q/DQ")
    if not exact:
        return problems
    if pipeline != "trt-fp8":  # onnxruntime's CPU float8 kernels are not the point here
        try:
            run(g, case.feeds)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"onnxruntime cannot run the output: {str(exc)[:200]}")
    head = fp32_part(pipeline)
    g = import_model(onnx.load(str(src)))
    if reconcile_inputs(g, {k: v.ndim for k, v in case.feeds.items()}):  # as compile does, from the data
        reconcile_shapes(g)
    run_pipeline(g, head, PassContext())
    try:
        assert_outputs_close(case.model, g, case.feeds, rtol=1e-4)
    except AssertionError as exc:
        problems.append(f"FP32 part '{head}' is not exact: {exc}")
    return problems


def _code(err: str) -> str:
    """The diagnostic code of a failed run (``error: QC506: ...``)."""
    for line in err.splitlines():
        if line.startswith("error: QC"):
            return line.split(":")[1].strip()
    return "?"


#: errors that are a right answer on a supported form: the model has nothing this pipeline quantizes (tiny
#: layers under fp8's small-layer rule); the same model in its plain form must give the same answer
EXPECTED_ERRORS = {"QC506"}


def compile_case(case: Case, form: str, pipeline: str, folder: Path, *, mutation: tuple[str, int] | None = None,
                 ) -> tuple[str, list[str]]:
    """Compile one case; (outcome: "ok" or the error code, problems)."""
    src = write_form(case, form, folder)
    if mutation is not None:
        kind, seed = mutation
        m = mutate(onnx.load(str(src), load_external_data=False), np.random.default_rng(seed), kind)
        onnx.save(m, src)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    out = folder / "out" / "q.onnx"
    out.parent.mkdir(exist_ok=True)
    rc, err = run_case(str(src), str(out), str(case.calib), pipeline)
    what = f"{case.name} [{form}{f'+{mutation[0]}#{mutation[1]}' if mutation else ''}] {pipeline}: rc={rc}"
    outcome = "ok" if rc == 0 else _code(err)
    problems: list[str] = []
    if rc not in (0, 1, 2) or "this is a bug" in err:
        problems.append(f"internal error: {err.strip()[-400:]}")
    elif rc != 0 and mutation is None and outcome not in EXPECTED_ERRORS:
        problems.append(f"a supported form failed: {err.strip()[:400]}")
    elif rc != 0 and any(out.parent.iterdir()):
        problems.append("output written despite the error")
    elif rc == 0:
        problems += check_success(case, src, out, pipeline, exact=mutation is None)
    if {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} != before:
        problems.append("input files modified")
    for p in sorted(out.parent.iterdir()):
        os.unlink(p)
    return outcome, [f"{what}: {p}" for p in problems]


def _pairs(models, forms=FORMS, pipelines=PIPELINES):
    """Each (form, pipeline) pair once, the models taken in turn."""
    cycle = itertools.cycle(models)
    return [(next(cycle), f, p) for f in forms for p in pipelines]


def _campaign(cases, tmp_path, triples, mutations: int = 0, seed: int = 0) -> None:
    from qcompiler.zoo.forms import FormUnavailable

    rng = np.random.default_rng(seed)
    failures, unavailable = [], set()
    plain: dict[tuple[str, str], str] = {}  # outcome on the plain-initializer form

    def baseline(name: str, pipeline: str) -> str:
        if (name, pipeline) not in plain:
            plain[(name, pipeline)], problems = compile_case(cases[name], "initializers", pipeline,
                                                             tmp_path / f"plain-{name}-{pipeline}")
            failures.extend(problems)
        return plain[(name, pipeline)]

    for i, (name, form, pipeline) in enumerate(triples):
        case = cases[name]
        try:
            case.in_form(form)
        except FormUnavailable:
            unavailable.add((name, form))
            continue
        outcome, problems = compile_case(case, form, pipeline, tmp_path / f"c{i}")
        failures += problems
        if not problems and outcome != baseline(name, pipeline):
            failures.append(f"{name} [{form}] {pipeline}: {outcome}, but {baseline(name, pipeline)} on the plain "
                            "form")
        for k in range(mutations):
            kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
            failures += compile_case(case, form, pipeline, tmp_path / f"c{i}m{k}",
                                     mutation=(kind, int(rng.integers(1 << 30))))[1]
    assert not failures, f"{len(failures)} failing cases:\n" + "\n".join(failures[:30])
    # only onnx's version converter may make a form unavailable, and only for hand-built models (zoo models are
    # exported at each opset)
    assert all(f.startswith("opset-") and n in EXOTIC for n, f in unavailable), unavailable
    assert len(unavailable) * 4 < len({(n, f) for n, f, _ in triples}), unavailable
    # the expected errors are the exception: most cases quantize
    assert sum(v == "ok" for v in plain.values()) > 0.75 * len(plain), plain


def test_fp32_part_of_the_named_pipelines():
    assert fp32_part("fp32-prep") == "fold-bn,merge-conv1x1,fold-residual,cle,cleanup"
    q = fp32_part("trt-int8")
    assert q.startswith("cleanup,to-fp32,fold-constants,fold-bn") and "calibrate" not in q


def test_declared_shapes_that_lie(cases, tmp_path):
    """Outputs, value_info and inputs declared with the wrong rank, ``shape {}``, wrong dims or no shape: every
    named pipeline compiles each (the data decides an input's rank)."""
    from qcompiler.zoo.forms import SHAPE_FORMS

    exotic = ("if-subgraph", "paddle-opset12", "loop-subgraph")
    _campaign(cases, tmp_path, _pairs(SMALL, forms=SHAPE_FORMS) + _pairs(exotic, forms=SHAPE_FORMS,
                                                                       pipelines=("trt-int8",)))


def test_every_form_through_every_named_pipeline(cases, tmp_path):
    from qcompiler.zoo.forms import SHAPE_FORMS

    plain = tuple(f for f in FORMS if f not in SHAPE_FORMS)
    _campaign(cases, tmp_path, _pairs(SMALL, forms=plain) + _pairs(EXOTIC, forms=plain,
                                                                    pipelines=("trt-int8", "ort-int8")))


@pytest.mark.slow
def test_every_model_form_and_pipeline(cases, tmp_path):
    triples = [(m, f, p) for m in SMALL + EXOTIC for f in FORMS for p in PIPELINES]
    _campaign(cases, tmp_path, triples)


@pytest.mark.slow
def test_big_models_in_every_form(cases, tmp_path):
    _campaign(cases, tmp_path, [(m, f, p) for m in BIG for f in FORMS for p in ("fp32-prep", "trt-int8")])


@pytest.mark.slow
def test_mutated_forms(cases, tmp_path):
    _campaign(cases, tmp_path, _pairs(SMALL + EXOTIC), mutations=6, seed=17)
