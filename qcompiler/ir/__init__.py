"""The IR boundary: the only package that turns ONNX protos into graphs and back.

Passes work on onnx-graphsurgeon graphs (``gs.Graph``).  Everything that reads or writes files,
pins ``ir_version``, handles external data, runs shape inference, converts opsets or builds
onnxruntime sessions lives here.
"""

import onnxruntime as _ort
from onnx_graphsurgeon.logger import G_LOGGER as _G_LOGGER

_ort.set_default_logger_severity(4)  # onnxruntime logs are noise: its errors reach users as diagnostics
_G_LOGGER.severity = _G_LOGGER.ERROR

# imported after the loggers are silenced (E402)
from .graph import ModelMeta, copy_graph, get_meta, iter_graphs, name_unnamed_nodes  # noqa: E402
from .io import export_model, import_model, load_model, read_model_proto, save_model, serialize_for_runtime  # noqa: E402
from .shapes import fix_input_shapes, infer_shapes, parse_input_shapes  # noqa: E402
from .text import graph_to_text  # noqa: E402
from .verify import structural_problems, verify_graph  # noqa: E402

__all__ = [
    "ModelMeta", "copy_graph", "export_model", "get_meta", "import_model", "iter_graphs", "load_model",
    "name_unnamed_nodes", "read_model_proto", "save_model", "serialize_for_runtime", "fix_input_shapes",
    "infer_shapes", "parse_input_shapes", "graph_to_text", "structural_problems", "verify_graph",
]
