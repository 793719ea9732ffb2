"""Element types of ops, from the ONNX schemas: which inputs and outputs of a node share the type of its data
(``T`` of ``Conv``, ``T1`` of ``Resize``'s X and Y) and which float types that may be at an opset.

The float-type rewrite (qcompiler/quant/floattype.py) reads this to know what changes when a node computes in
fp16 or bf16: the inputs and outputs bound to the data type variable change type, everything else (Resize's
scales, a Pow exponent of its own type variable, indices, shapes) keeps its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import ml_dtypes
import numpy as np
import onnx
import onnx.defs

#: the float types a graph may compute in, by the names options use
FLOAT_TYPES: dict[str, np.dtype] = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16),
                                    "bf16": np.dtype(ml_dtypes.bfloat16)}
#: the opset from which the ops a network is made of accept the type (Conv takes bf16 from opset 22)
MIN_OPSET = {"fp32": 0, "fp16": 19, "bf16": 22}
_ONNX_TYPE = {"fp32": "tensor(float)", "fp16": "tensor(float16)", "bf16": "tensor(bfloat16)"}
#: ONNX element type codes
ELEM = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}


def float_kind(dtype) -> str | None:
    """``fp32``/``fp16``/``bf16`` for those numpy dtypes, None for any other (float64, ints, unknown)."""
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):  # an ONNX element type code (graphsurgeon's dtype for bfloat16)
        return next((k for k, v in ELEM.items() if v == int(dtype)), None)
    try:
        d = np.dtype(dtype)
    except TypeError:
        return None
    for k, v in FLOAT_TYPES.items():
        if d == v:
            return k
    return None


@dataclass(frozen=True)
class TypeGroup:
    """The inputs and outputs of an op bound to one type variable, and the float kinds it may take."""

    inputs: frozenset[int]
    outputs: frozenset[int]
    allows: frozenset[str]


@dataclass(frozen=True)
class OpTyping:
    """How a node's element types hang together: one :class:`TypeGroup` per type variable of the schema (concrete
    types such as Resize's ``tensor(float)`` scales belong to no group and never change).  A variadic last formal
    parameter (Concat's inputs, Split's outputs) repeats: indices past it share its group."""

    groups: tuple[TypeGroup, ...]
    n_formal_in: int
    n_formal_out: int
    variadic_in: bool
    variadic_out: bool

    def group_of_input(self, k: int) -> TypeGroup | None:
        k = min(k, self.n_formal_in - 1) if self.variadic_in else k
        return next((g for g in self.groups if k in g.inputs), None)

    def group_of_output(self, k: int) -> TypeGroup | None:
        k = min(k, self.n_formal_out - 1) if self.variadic_out else k
        return next((g for g in self.groups if k in g.outputs), None)


@lru_cache(maxsize=None)
def op_typing(op: str, domain: str, opset: int) -> OpTyping | None:
    """The typing of ``op`` at ``opset`` (None for ops onnx has no schema for: custom domains, functions)."""
    try:
        s = onnx.defs.get_schema(op, opset, domain or "")
    except Exception:  # noqa: BLE001 - onnx raises SchemaError for unknown ops
        return None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    groups = []
    for tc in s.type_constraints:
        var = tc.type_param_str
        ins = frozenset(k for k, p in enumerate(s.inputs) if p.type_str == var)
        outs = frozenset(k for k, p in enumerate(s.outputs) if p.type_str == var)
        kinds = frozenset(k for k, t in _ONNX_TYPE.items() if t in set(tc.allowed_type_strs))
        if ins or outs:
            groups.append(TypeGroup(ins, outs, kinds))
    return OpTyping(tuple(groups), len(s.inputs), len(s.outputs),
                    bool(s.inputs) and s.inputs[-1].option == variadic,
                    bool(s.outputs) and s.outputs[-1].option == variadic)
