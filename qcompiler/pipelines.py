"""Named pipelines: ``tidy``, ``fp32-prep``, ``trt-int8``, ``trt-fp8``, ``ort-int8``.

Each is a function of its options returning pipeline text; they are elements of the pipeline
grammar like passes (``trt-int8{calib=entropy}``), expanded when run.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pm.options import option
from .pm.registry import NamedPipeline, register_pipeline


@dataclass(frozen=True)
class _NoOpts:
    pass


register_pipeline(NamedPipeline(
    "tidy", "dead code, Identity, constant folding until nothing changes",
    lambda o: "cleanup,repeat{max-steps=4}(fold-constants,cleanup)", _NoOpts))
