"""The torch front end: compile a ``torch.nn.Module`` directly, and run a compiled model inside torch.

    import qcompiler
    res = qcompiler.compile_torch(model, (torch.randn(1, 3, 224, 224),), "model.int8.onnx",
                                  pipeline="trt-int8", calib_data=loader)      # a DataLoader of real images
    qm = qcompiler.torch.OnnxModule("model.int8.onnx")                        # torch tensors in and out
    acc = my_eval_loop(qm, val_loader)

The *float* module is exported (the dynamo exporter by default, ``torch.onnx.export(..., dynamo=True)``; the
TorchScript exporter when that fails, with a remark saying why) and then compiled exactly as ``compile_model``
compiles a file: the quantized graph never goes through a torch exporter, so fake-quant hooks and their exporter
bugs (pytorch #167063, #143954) never come into it.  Calibration data may be a DataLoader, a Dataset or any
iterable of tensors, tuples or dicts (qcompiler/calib/sources.py), streamed.

torch is imported on first use: ``import qcompiler`` never needs it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..diagnostics import DiagnosticEngine, QCompilerError, UsageError

__all__ = ["OnnxModule", "compile_torch", "export_module", "load_exported_program"]

INSTALL = "pip install torch==2.13.0 && pip install 'qcompiler[torch]'"


def _torch():
    try:
        import torch
    except ImportError:
        raise UsageError("the torch front end needs torch, which is not installed", code="QC601",
                         hint=INSTALL) from None
    return torch


def _args(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _names(module: Any, args: tuple, input_names: Sequence[str] | None) -> list[str]:
    if input_names:
        return list(input_names)
    import inspect

    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(params) >= len(args):
            return [p.name for p in params[:len(args)]]
    except (TypeError, ValueError):
        pass
    return [f"input_{k}" for k in range(len(args))]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()[:300]}"
    return type(exc).__name__


def export_module(module: Any, example_inputs: Any, path: str | os.PathLike, *,
                  dynamic_shapes: Any = None, input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None, opset: int | None = None, exporter: str = "auto",
                  diagnostics: DiagnosticEngine | None = None) -> Path:
    """Export the float ``module`` to ``path``.  ``exporter``: ``dynamo`` (torch.export), ``torchscript``, or
    ``auto`` (dynamo, then TorchScript with a QC3xx remark naming why dynamo failed).  ``dynamic_shapes`` as
    torch.export takes them; without them every input's first dim is dynamic (the batch) when it can be.  A failure
    of every exporter is an error naming the module and each exporter's first line."""
    torch = _torch()
    diags = diagnostics if diagnostics is not None else DiagnosticEngine()
    args = _args(example_inputs)
    program = type(module).__name__ == "ExportedProgram"  # torch.export's: already traced, shapes decided
    names = _names(module.module() if program else module, args, input_names)
    was_training = bool(getattr(module, "training", False))
    if not program:
        module.eval()
    path = Path(path)
    errors: list[str] = []
    try:
        order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    except KeyError:
        raise UsageError(f"unknown exporter '{exporter}'", code="QC101",
                         hint="use auto, dynamo or torchscript") from None
    try:
        with torch.no_grad():
            for which in order:
                try:
                    if which == "dynamo":
                        _dynamo(torch, module, args, path, names, output_names, opset, dynamic_shapes, diags)
                    else:
                        _torchscript(torch, module, args, path, names, output_names, opset, dynamic_shapes)
                    if errors:
                        diags.remark("QC301", f"exported {type(module).__name__} with the TorchScript exporter: the "
                                              f"dynamo exporter failed ({errors[0]})")
                    return path
                except QCompilerError:
                    raise
                except Exception as exc:  # noqa: BLE001 - exporters raise anything
                    errors.append(f"{which}: {_first_line(exc)}")
    finally:
        if not program:
            module.train(was_training)
    raise QCompilerError(f"cannot export {type(module).__name__} to ONNX: " + "; ".join(errors), code="QC203",
                         hint="check that the module runs on the example inputs; try exporter='torchscript' or "
                              "'dynamo', give dynamic_shapes explicitly, or export it yourself and compile the "
                              ".onnx file")


def _dynamo(torch, module, args, path, names, output_names, opset, dynamic_shapes, diags) -> None:
    kw: dict[str, Any] = {"dynamo": True, "input_names": names, "external_data": True, "verbose": False}
    if output_names:
        kw["output_names"] = list(output_names)
    if opset:
        kw["opset_version"] = opset
    if dynamic_shapes is not None or type(module).__name__ == "ExportedProgram":
        torch.onnx.export(module, args, str(path), dynamic_shapes=dynamic_shapes, **kw)
        return
    batch = torch.export.Dim("batch")
    dims = tuple({0: batch} if getattr(a, "ndim", 0) >= 1 else None for a in args)
    traced = args
    batched = [isinstance(a, torch.Tensor) and a.ndim >= 1 for a in args]
    if any(batched) and all(int(a.shape[0]) == 1 for a, b in zip(args, batched) if b):
        # torch.export specializes a dim of size 1 to the constant 1: trace on the example repeated twice
        traced = tuple(torch.cat([a, a]) if b else a for a, b in zip(args, batched))
    try:  # the batch free when the model allows it; else the example's shapes
        torch.onnx.export(module, traced, str(path), dynamic_shapes=dims, **kw)
    except Exception as exc:  # noqa: BLE001
        diags.remark("QC301", f"exported with the example inputs' shapes: a dynamic batch dim failed "
                              f"({_first_line(exc)})")
        torch.onnx.export(module, args, str(path), **kw)


def _torchscript(torch, module, args, path, names, output_names, opset, dynamic_shapes) -> None:
    if type(module).__name__ == "ExportedProgram":
        module = module.module()
    outs = list(output_names) if output_names else None
    axes = None
    if dynamic_shapes is None:
        axes = {n: {0: "batch"} for n, a in zip(names, args) if getattr(a, "ndim", 0) >= 1}
    torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=outs,
                      dynamic_axes=axes, opset_version=min(opset or 17, 20),
                      training=torch.onnx.TrainingMode.EVAL, do_constant_folding=False)


def load_exported_program(path: str | os.PathLike) -> tuple[Any, tuple]:
    """A saved ``torch.export`` program (``.pt2``) and its example inputs."""
    torch = _torch()
    try:
        ep = torch.export.load(str(path))
    except FileNotFoundError:
        raise UsageError(f"'{path}' does not exist", code="QC201") from None
    except Exception as exc:  # noqa: BLE001
        raise QCompilerError(f"cannot load '{path}' as a torch.export program: {_first_line(exc)}", code="QC201",
                             hint="save it with torch.export.save(torch.export.export(model, args), 'model.pt2')"
                             ) from None
    args = ep.example_inputs[0] if ep.example_inputs else ()
    return ep, tuple(args)


def compile_torch(module: Any, example_inputs: Any, output: str | os.PathLike, pipeline: Any = "trt-int8",
                  options: Any = None, *, dynamic_shapes: Any = None, input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None, opset: int | None = None, exporter: str = "auto",
                  keep_export: str | os.PathLike | None = None, diagnostics: DiagnosticEngine | None = None,
                  **kwargs: Any):
    """Export ``module`` (float) and compile it like :func:`qcompiler.compile_model`; returns its CompileResult.
    ``options``/``kwargs`` are :class:`qcompiler.CompileOptions` fields (``calib_data`` may be a DataLoader, a
    Dataset or an iterable of tensors, tuples or dicts).  A torch.export ``ExportedProgram`` is taken as the
    module.  ``keep_export``: also keep the float ONNX export there."""
    from ..api import compile_model

    diags = diagnostics if diagnostics is not None else DiagnosticEngine()
    with tempfile.TemporaryDirectory(prefix="qc-export-") as tmp:
        src = Path(keep_export) if keep_export else Path(tmp) / "model.onnx"
        export_module(module, example_inputs, src, dynamic_shapes=dynamic_shapes, input_names=input_names,
                      output_names=output_names, opset=opset, exporter=exporter, diagnostics=diags)
        return compile_model(src, output, pipeline, options, diagnostics=diags, **kwargs)


class _Lazy:
    """``OnnxModule`` is a torch.nn.Module subclass, defined when first used (torch is optional)."""

    cls: Any = None


def OnnxModule(path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None):
    """A compiled model as a callable torch module: torch tensors in (positional in input order, or by name),
    torch tensors out (one, or a tuple), on the device the inputs are on; onnxruntime underneath (CUDA when its
    provider is installed and the inputs are on a GPU, else CPU).  Float inputs are converted to the model's
    declared float types (an fp16-IO model takes float32 tensors too)."""
    if _Lazy.cls is None:
        _Lazy.cls = _module_class()
    return _Lazy.cls(path, providers=providers, threads=threads)


def _module_class():
    torch = _torch()
    import numpy as np
    import onnxruntime as ort

    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}

    class _OnnxModule(torch.nn.Module):  # type: ignore[name-defined]  # (torch is imported at run time)
        def __init__(self, path, *, providers=None, threads=None):
            super().__init__()
            so = ort.SessionOptions()
            so.log_severity_level = 3
            if threads:
                so.intra_op_num_threads = threads
            avail = ort.get_available_providers()
            prov = list(providers) if providers else [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                                      if p in avail]
            self.path = str(path)
            self.session = ort.InferenceSession(self.path, so, providers=prov)
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.input_types = {i.name: types.get(i.type) for i in self.session.get_inputs()}
            self.output_names = [o.name for o in self.session.get_outputs()]

        def forward(self, *args, **kwargs):
            feeds = dict(zip(self.input_names, args))
            feeds.update(kwargs)
            missing = [n for n in self.input_names if n not in feeds]
            if missing:
                raise TypeError(f"{Path(self.path).name} takes inputs {self.input_names}; missing {missing}")
            device = next((v.device for v in feeds.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
            arrays = {}
            for n, v in feeds.items():
                a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                want = self.input_types.get(n)
                if want is not None and a.dtype != want and a.dtype.kind == np.dtype(want).kind:
                    a = a.astype(want)
                arrays[n] = a
            outs = self.session.run(self.output_names, arrays)
            res = tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outs)
            return res[0] if len(res) == 1 else res

        def extra_repr(self) -> str:
            return f"{self.path}, inputs={self.input_names}, outputs={self.output_names}"

    return _OnnxModule
