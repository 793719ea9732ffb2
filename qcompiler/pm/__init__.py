"""Pass manager: the pass contract, typed options, registry, pipeline text/JSON/YAML, manager, instruments."""

from .base import Pass, PassResult
from .context import PassContext
from .instruments import DumpIR, Instrument, Reproducer, Timing
from .manager import PassManager, PipelineResult, run_pipeline
from .options import NoOptions, option
from .pipeline import (PassSpec, PipelineSpec, RepeatSpec, expand, from_data, load_pipeline, parse_pipeline,
                       print_pipeline, to_data, to_json, to_yaml)
from .state import MissingStateError, State, StateStore
from .registry import NamedPipeline, Registry, default_registry, register_pass, register_pipeline

__all__ = [
    "Pass", "PassResult", "PassContext", "DumpIR", "Instrument", "Reproducer", "Timing",
    "PassManager", "PipelineResult", "run_pipeline", "NoOptions", "option", "PassSpec", "PipelineSpec",
    "RepeatSpec", "expand", "from_data", "load_pipeline", "parse_pipeline", "print_pipeline", "to_data", "to_json",
    "to_yaml", "NamedPipeline", "Registry", "default_registry", "register_pass", "register_pipeline",
    "State", "StateStore", "MissingStateError",
]
