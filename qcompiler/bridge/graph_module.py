"""The torch side of the bridge: :class:`TorchGraphModule`, a graph run as a ``torch.nn.Module``.

Imported only through :func:`qcompiler.bridge.module.GraphModule`, which checks that torch is installed first (torch
is an optional dependency); everything torch-free (the op check, zero points, write-back helpers) lives in
qcompiler/bridge/module.py.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import onnx_graphsurgeon as gs
import torch

from ..diagnostics import BridgeError
from ..ir.edit import Namer
from ..ir.query import const_value, produced_by, require_const
from ..quant.qspec import dequantize_linear, storage_grid
from ..quant.strip import dequantized_constant
from .fakequant import FakeQuant, WeightFakeQuant
from .module import _cast_zp, _consistent, _key, _zp_value, check_supported
from .ops import OPS


class TorchGraphModule(torch.nn.Module):
    """A Q/DQ graph as a torch module (module docstring of qcompiler/bridge/module.py)."""

    def __init__(self, graph: gs.Graph, *, reference: gs.Graph | None = None):
        super().__init__()
        check_supported(graph)
        self.graph = graph
        self.opset = int(graph.opset or 13)
        self.input_names = [t.name for t in graph.inputs]
        self.output_names = [t.name for t in graph.outputs]
        self.params = torch.nn.ParameterDict()
        self.fq = torch.nn.ModuleDict()  # activation fake-quant, keyed by Q node
        self.wq = torch.nn.ModuleDict()  # weight fake-quant, keyed by DQ node
        self.const: dict[str, Any] = {}
        self._attr_values: dict[str, Any] = {}
        self._moved: dict[tuple[str, str], Any] = {}  # constants copied to the device the inputs are on
        self._plan: list[tuple[str, gs.Node]] = []
        self._weight_q: set[str] = set()  # Q nodes of weights=qdq weights, folded into self.wq
        ref_layers = {n.name: n for n in reference.nodes} if reference is not None else {}
        consumers_of: dict[str, list[gs.Node]] = {}
        for n in graph.nodes:
            for i in n.inputs:
                consumers_of.setdefault(i.name, []).append(n)
        handled_dq: set[str] = set()
        for n in graph.nodes:
            if n.op == "QuantizeLinear":
                self._add_q(n, consumers_of, ref_layers, handled_dq)
        for n in graph.nodes:
            if n.op == "DequantizeLinear" and n.name not in handled_dq:
                self._add_weight_dq(n, consumers_of, ref_layers, handled_dq)
        for n in graph.nodes:
            if n.op == "QuantizeLinear":
                self._plan.append(("skip" if n.name in self._weight_q else "q", n))
            elif n.op == "DequantizeLinear":
                self._plan.append(("dq", n) if _key(n.name) in self.wq else ("skip", n))
            else:
                self._plan.append(("op", n))
                for i in n.inputs:
                    self._register_const(i)
                if n.op in ("Constant", "ConstantOfShape"):
                    v = n.attrs.get("value")
                    if v is None:
                        for k in ("value_float", "value_floats", "value_int", "value_ints"):
                            if k in n.attrs:
                                v = np.asarray(n.attrs[k], dtype=np.float32 if "float" in k else np.int64)
                    arr = v.values if isinstance(v, gs.Constant) else v
                    # kept beside the graph: the graph's attributes are never touched
                    self._attr_values[n.name] = torch.as_tensor(np.asarray(arr)) if arr is not None else None

    # -- construction ------------------------------------------------------------------
    def _register_const(self, t: gs.Tensor) -> None:
        if not isinstance(t, gs.Constant) or t.name in self.const:
            return
        arr = np.asarray(t.values)
        if arr.dtype.kind == "f" and arr.size > 1:
            key = _key(t.name)
            while key in self.params:
                key += "_"
            self.params[key] = torch.nn.Parameter(torch.as_tensor(arr.astype(np.float32)), requires_grad=False)
            self.const[t.name] = ("param", key)
        else:
            self.const[t.name] = ("value", torch.as_tensor(arr.copy() if arr.dtype.kind != "V" else
                                                           arr.astype(np.float32)))

    def _add_q(self, q: gs.Node, consumers_of, ref_layers, handled_dq) -> None:
        out = q.outputs[0]
        dqs = [c for c in consumers_of.get(out.name, []) if c.op == "DequantizeLinear"]
        if not dqs or len(dqs) != len(consumers_of.get(out.name, [])):
            raise BridgeError("a QuantizeLinear must feed DequantizeLinear nodes only", node=q.name, code="QC602")
        scale = const_value(q.inputs[1])
        zp, zdt = _zp_value(q)
        if scale is None:
            raise BridgeError("QuantizeLinear with a non-constant scale", node=q.name, code="QC602")
        qmin, qmax, fp8 = storage_grid(zdt)
        axis = int(q.attrs.get("axis", 1)) if np.asarray(scale).size > 1 else None
        x = q.inputs[0]
        W = const_value(x)
        if W is not None and W.dtype.kind == "f":  # weights=qdq: Q(float weight) -> DQ
            for dq in dqs:  # weights=qdq keeps the float weight itself as the master copy
                self.wq[_key(dq.name)] = WeightFakeQuant(dq.name, W, scale, np.asarray(zp, np.float32),
                                                         qmin, qmax, axis, fp8=fp8)
                handled_dq.add(dq.name)
            self._weight_q.add(q.name)
            return
        self.fq[_key(q.name)] = FakeQuant(q.name, scale, np.asarray(zp, np.float32), qmin, qmax, axis, fp8)
        for dq in dqs:
            handled_dq.add(dq.name)

    def _add_weight_dq(self, dq: gs.Node, consumers_of, ref_layers, handled_dq) -> None:
        src = dq.inputs[0]
        q = const_value(src)
        if q is None:
            raise BridgeError("a DequantizeLinear that reads neither a QuantizeLinear nor a constant",
                              node=dq.name, code="QC602")
        scale = require_const(dq.inputs[1], "scale")
        zp, zdt = _zp_value(dq)
        qmin, qmax, fp8 = storage_grid(q.dtype if q.dtype.kind != "V" else zdt)
        if q.dtype == np.int32:  # an int32 bias (onnxruntime target): a fixed constant
            self.const[dq.outputs[0].name] = ("value", torch.as_tensor(dequantized_constant(dq)))
            handled_dq.add(dq.name)
            return
        axis = int(dq.attrs.get("axis", 1)) if np.asarray(scale).size > 1 else None
        if axis is not None and axis < 0:
            axis += q.ndim
        block = dq.attrs.get("block_size")
        if not fp8 and q.dtype.kind in "iu" and np.all(np.asarray(zp) == 0) and q.size:
            # symmetric weights: the grid is [-m, m] with m = max |q| (scale = amax / qmax puts the
            # largest weight of every channel exactly on +-qmax), e.g. [-7, 7] for s4 stored as int8
            m = int(np.max(np.abs(q.astype(np.int64))))
            if 0 < m < qmax:
                qmin, qmax = -m, m
            elif m >= qmax:
                qmin = -qmax  # narrow range: never -128
        deq = dequantize_linear(q.astype(np.float32) if q.dtype.kind == "V" else q, scale, zp,
                          axis if axis is not None else 0, block)
        layer = (consumers_of.get(dq.outputs[0].name) or [None])[0]
        master = deq
        if layer is not None and layer.name in ref_layers:
            rn = ref_layers[layer.name]
            idx = next((k for k, i in enumerate(layer.inputs) if i is dq.outputs[0]), 1)
            rw = const_value(rn.inputs[idx]) if idx < len(rn.inputs) else None
            if rw is not None and rw.shape == q.shape and _consistent(rw, deq, scale, axis, block):
                master = rw  # the float weight the integers were rounded from
        self.wq[_key(dq.name)] = WeightFakeQuant(dq.name, master, scale, np.asarray(zp).astype(np.float32), qmin,
                                                 qmax, axis, block_size=block, fp8=fp8)
        handled_dq.add(dq.name)

    # -- running -------------------------------------------------------------------------
    def _value(self, env: dict, t: gs.Tensor):
        if not t.name:
            return None
        if t.name in env:
            return env[t.name]
        c = self.const.get(t.name)
        if c is None:
            if isinstance(t, gs.Constant):
                self._register_const(t)
                c = self.const[t.name]
            else:
                raise BridgeError(f"tensor '{t.name}' is used before it is computed", code="QC602")
        if c[0] == "param":
            return self.params[c[1]]
        v = c[1]
        dev = env.get("__device__")
        if dev is not None and isinstance(v, torch.Tensor) and v.device != dev:
            key = (t.name, str(dev))
            moved = self._moved.get(key)
            if moved is None:
                moved = self._moved[key] = v.to(dev)
            return moved
        return v

    def start(self, feeds: dict) -> dict[str, Any]:
        """An environment holding the inputs, for :meth:`forward` or :meth:`run_until`."""
        env: dict[str, Any] = {}
        for name in self.input_names:
            v = feeds[name]
            env[name] = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        if self.input_names:
            env["__device__"] = env[self.input_names[0]].device
        return env

    def _step(self, env: dict, kind: str, n: gs.Node):
        """Run one plan step; returns (inputs, outputs) of an op node, else None."""
        if kind == "skip":
            return None
        if kind == "q":
            y = self.fq[_key(n.name)](self._value(env, n.inputs[0]))
            for dq in n.outputs[0].outputs:
                env[dq.outputs[0].name] = y
            return None
        if kind == "dq":
            env[n.outputs[0].name] = self.wq[_key(n.name)]()
            return None
        ins = [self._value(env, i) for i in n.inputs]
        attrs = n.attrs
        if n.op == "Split":
            attrs = dict(attrs, __n_outputs__=len(n.outputs))
        elif n.name in self._attr_values:
            v = self._attr_values[n.name]
            if v is not None and v.device != env["__device__"]:
                v = v.to(env["__device__"])
            attrs = dict(attrs, __value__=v)
        outs = OPS[n.op](ins, attrs, self.opset)
        for t, v in zip(n.outputs, outs):
            if t.name:
                env[t.name] = v
        return ins, outs

    def _frees(self) -> dict[int, list[str]]:
        """Plan step -> tensors no later step reads (freed after it by :meth:`run_until`)."""
        if getattr(self, "_free_at", None) is None:
            last: dict[str, int] = {}
            for i, (kind, n) in enumerate(self._plan):
                if kind in ("op", "q"):
                    for t in (n.inputs if kind == "op" else n.inputs[:1]):
                        if t.name and not isinstance(t, gs.Constant):
                            last[t.name] = i
            keep = {t.name for t in self.graph.outputs} | set(self.input_names)
            free: dict[int, list[str]] = {}
            for name, i in last.items():
                if name not in keep:
                    free.setdefault(i, []).append(name)
            self._free_at = free
        return self._free_at

    def run_until(self, env: dict, start: int, stop: str) -> tuple[int, list]:
        """Run the plan from step ``start`` up to the node named ``stop`` (not run): returns its step index and
        its inputs.  Tensors no later step needs are dropped from ``env`` as it goes, so running the model
        layer after layer costs one forward in all and holds only what is live."""
        free = self._frees()
        for i in range(start, len(self._plan)):
            kind, n = self._plan[i]
            if kind == "op" and n.name == stop:
                return i, [self._value(env, t) for t in n.inputs]
            self._step(env, kind, n)
            for name in free.get(i, ()):
                env.pop(name, None)
        raise BridgeError(f"node '{stop}' is not in the graph the bridge runs", code="QC602")

    def forward(self, *args, capture: set[str] | None = None, until: str | None = None, **feeds):
        if args:
            if len(args) == 1 and isinstance(args[0], dict):
                feeds = dict(args[0])
            else:
                feeds = dict(zip(self.input_names, args))
        env = self.start(feeds)
        captured: dict[str, Any] = {}
        for kind, n in self._plan:
            r = self._step(env, kind, n)
            if r is None:
                continue
            if capture and n.name in capture:
                captured[n.name] = r
            if until is not None and n.name == until:
                return captured
        result = {name: env[name] if name in env else self._value(env, t)
                  for name, t in zip(self.output_names, self.graph.outputs)}
        if capture:
            result["__captured__"] = captured
        return result

    # -- write back ----------------------------------------------------------------------
    def activation_quantizers(self) -> dict[str, FakeQuant]:
        return {k: cast(FakeQuant, v) for k, v in self.fq.items()}

    def weight_quantizers(self) -> dict[str, WeightFakeQuant]:
        return {k: cast(WeightFakeQuant, v) for k, v in self.wq.items()}

    def write_back(self) -> dict[str, int]:
        """Learned scales, zero points and integer weights into the graph's Q/DQ constants."""
        from ..ir.edit import constant

        g = self.graph
        names = Namer(g)
        nodes = {n.name: n for n in g.nodes}
        counts = {"activations": 0, "weights": 0}
        for fq in self.activation_quantizers().values():
            q = nodes[fq.name]
            s = fq.scale.detach().cpu().numpy().astype(np.float32)
            s = np.maximum(s, 1e-7)
            _, zdt = _zp_value(q)
            zp = fq.export_zero_point().detach().cpu().numpy()
            zc = constant(names(q.name + "_zp_ft"), _cast_zp(zp, zdt, fq.qmin, fq.qmax))
            sc = constant(names(q.name + "_scale_ft"), s.reshape(np.asarray(const_value(q.inputs[1])).shape))
            for node in [q] + [c for c in q.outputs[0].outputs if c.op == "DequantizeLinear"]:
                node.inputs[1] = sc
                if len(node.inputs) > 2:
                    node.inputs[2] = zc
            counts["activations"] += 1
        for wq in self.weight_quantizers().values():
            dq = nodes[wq.name]
            s = np.maximum(wq.scale.detach().cpu().numpy().astype(np.float32), 1e-7)
            sc = constant(names(dq.name + "_scale_ft"), s.reshape(np.asarray(const_value(dq.inputs[1])).shape))
            src = dq.inputs[0]
            qn = produced_by(src, "QuantizeLinear")
            if qn is not None:  # weights=qdq form
                qn.inputs[0] = constant(names(qn.inputs[0].name + "_ft"),
                                        wq.weight.detach().cpu().numpy().astype(np.float32))
                qn.inputs[1] = sc
                dq.inputs[1] = sc
            else:
                ints = wq.integer_weight().cpu().numpy()
                old = require_const(src, "quantized weight")
                if wq.fp8:
                    import ml_dtypes

                    s_full = wq._expand(wq.scale).detach().cpu().numpy()
                    store = np.clip(wq.weight.detach().cpu().numpy() / s_full, -448, 448).astype(
                        ml_dtypes.float8_e4m3fn)
                else:
                    store = ints.astype(old.dtype)
                dq.inputs[0] = constant(names(src.name + "_ft"), store)
                dq.inputs[1] = sc
            counts["weights"] += 1
        g.cleanup(remove_unused_graph_inputs=False)
        return counts
