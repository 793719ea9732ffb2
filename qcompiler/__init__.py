"""qcompiler: a graph-rewriting quantization compiler over ONNX.

Python API in a nutshell::

    import qcompiler as qc
    graph = qc.load_model("model.onnx")
    result = qc.compile_graph(graph, "fold-bn,cle,calibrate,insert-qdq", calib_data="calib.npz")
    qc.save_model(graph, "model.int8.onnx")
"""

__version__ = "0.1.0"

from .diagnostics import Diagnostic, QCompilerError, Severity  # noqa: E402
from .ir import graph_to_text, load_model, save_model, verify_graph  # noqa: E402
from .pm import PassContext, PassManager, parse_pipeline, print_pipeline, run_pipeline  # noqa: E402


def compile_graph(graph, pipeline, options=None, **kwargs):
    """Run ``pipeline`` on ``graph`` in place; see :func:`qcompiler.api.compile_graph`."""
    from .api import compile_graph as _compile

    return _compile(graph, pipeline, options, **kwargs)


def compile_model(input_path, output_path, pipeline, options=None, **kwargs):
    """Load, compile and save atomically; see :func:`qcompiler.api.compile_model`."""
    from .api import compile_model as _compile

    return _compile(input_path, output_path, pipeline, options, **kwargs)


def compile_torch(module, example_inputs, output, pipeline="trt-int8", options=None, **kwargs):
    """Export a torch module (float) and compile it; see :func:`qcompiler.torch.compile_torch`."""
    from .torch import compile_torch as _compile

    return _compile(module, example_inputs, output, pipeline, options, **kwargs)


def __getattr__(name):
    if name == "CompileOptions":  # the options object (qcompiler.api), imported on first use
        from .api import CompileOptions

        return CompileOptions
    if name == "torch":  # qcompiler.torch (OnnxModule, compile_torch): torch is imported only then
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")


__all__ = ["Diagnostic", "QCompilerError", "Severity", "graph_to_text", "load_model", "save_model",
           "verify_graph", "PassContext", "PassManager", "parse_pipeline", "print_pipeline", "run_pipeline",
           "compile_graph", "compile_model", "compile_torch", "CompileOptions", "__version__"]
