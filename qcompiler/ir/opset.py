"""Opset upgrades with onnx's version converter, applied in place on a graph."""

from __future__ import annotations

from pathlib import Path

import onnx_graphsurgeon as gs
from onnx import version_converter

from ..diagnostics import QCompilerError
from .io import export_model, import_model
from .graph import get_meta


def replace_graph_contents(dst: gs.Graph, src: gs.Graph) -> None:
    """Make ``dst`` hold ``src``'s nodes and interface (keeps the object identity passes rely on)."""
    dst.nodes = src.nodes
    dst.inputs = src.inputs
    dst.outputs = src.outputs
    dst.opset = src.opset
    dst.import_domains = src.import_domains
    dst.functions = src.functions
    dst.name = src.name


def upgrade_opset(graph: gs.Graph, target: int) -> bool:
    """Convert the default-domain opset to ``target`` (>= current).  Returns True if anything changed."""
    current = int(graph.opset) if graph.opset is not None else 1
    if current >= target:
        return False
    meta = get_meta(graph)
    model = export_model(graph)
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
        node = None
        for line in text:
            if "node" in line.lower() and ("op_type" in line or "Node" in line):
                node = line.strip()
                break
        raise QCompilerError(
            f"cannot convert the model from opset {current} to {target}: {detail}", code="QC207", node=node,
            hint=f"re-export the model at opset >= {target} (e.g. torch.onnx.export(..., opset_version={target}))"
        ) from None
    base = Path(meta.path).parent if meta.path else Path.cwd()
    new = import_model(converted, base_dir=base, source=meta.path)
    replace_graph_contents(graph, new)
    # keep the loaded external data readers (the converter copied the protos but not our lazy loaders)
    if meta.external_files:
        new_meta = get_meta(new)
        meta.external_files = tuple(sorted(set(meta.external_files) | set(new_meta.external_files)))
    return True


def import_domain(graph: gs.Graph, domain: str, version: int) -> None:
    """Declare that ``graph`` uses ops of ``domain`` (com.microsoft's contrib ops) at ``version``; the default
    domain's entry is kept."""
    import onnx

    have = list(graph.import_domains or [onnx.helper.make_opsetid("", int(graph.opset or 13))])
    if not any(d.domain == domain for d in have):
        have.append(onnx.helper.make_opsetid(domain, version))
    graph.import_domains = have
