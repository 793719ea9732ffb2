"""matmul-nbits: blocked int4 (and int8) weights behind DequantizeLinear -> MatMul become onnxruntime's MatMulNBits.

onnxruntime's CPU (and CUDA) provider runs ``com.microsoft::MatMulNBits`` with packed 4-bit weights and
dequantizes them inside its GEMM: the weights stay 4-bit in memory, and on MiniLM-L3 (16 x 32 tokens, one core)
it ran 1.3-1.4x faster than DequantizeLinear (opset 21) feeding a float MatMul, as fast as FP32
(docs/benchmarks.md).  TensorRT cannot read it, so this is for
``ort-int4-weights``; ``trt-int4-weights`` keeps the standard DequantizeLinear form.

A MatMul qualifies when its B input is a DequantizeLinear of a constant 2-D int4 or int8 weight ``[K, N]`` blocked
along K (``axis=0``, ``block_size`` a power of two >= 16 dividing K), with zero points absent or zero (GPTQ's
int8 fallback layers are blocked int8).  MatMulNBits stores ``B`` transposed and unsigned, ``[N, K / block,
block * bits / 8]`` (4 bits: two per byte, the even K first, in the low nibble), ``q`` as ``q + 2^(bits-1)`` with
that default zero point, and one scale per (column, block).  The result equals the DequantizeLinear form up to
the order of float summation (tested against onnxruntime).  MatMuls that do not qualify (a Gemm, per-channel
int8 weights, a block onnxruntime does not take) stay as they are, counted in a remark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.ir.dtypes import float_kind
from qcompiler.ir.edit import Namer
from qcompiler.ir.opset import import_domain
from qcompiler.pm import Pass, PassResult


def _weight(t: gs.Tensor) -> tuple[np.ndarray, int] | None:
    """A constant int4 or int8 weight's values (as int8) and its bits, else None."""
    if not isinstance(t, gs.Constant):
        return None
    bits = {"int4": 4, "int8": 8}.get(getattr(np.dtype(t.dtype), "name", ""))
    return (np.asarray(t.values).astype(np.int8), bits) if bits else None


def pack(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """``q`` [K, N] (signed) as MatMulNBits' B: uint8 [N, K / block, block * bits / 8], each value stored as
    ``q + 2^(bits-1)`` (its default zero point), two 4-bit values to a byte with the even K in the low nibble."""
    u = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8).T  # [N, K]
    n, k = u.shape
    if bits == 4:
        u = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)
    return u.reshape(n, k // block, block * bits // 8)


class MatMulNBits(Pass["MatMulNBits.Options"]):
    """Blocked int4/int8 DequantizeLinear -> MatMul pairs become com.microsoft MatMulNBits (onnxruntime)."""

    name = "matmul-nbits"

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, graph: gs.Graph, ctx) -> PassResult:
        names = Namer(graph)
        done, left = 0, 0
        for mm in list(graph.nodes):
            if mm.op != "MatMul" or len(mm.inputs) != 2 or not mm.inputs[1].inputs:
                continue
            dq = mm.inputs[1].inputs[0]
            found = _weight(dq.inputs[0]) if dq.op == "DequantizeLinear" else None
            if found is None or (found[1] == 8 and int(dq.attrs.get("block_size", 0) or 0) == 0):
                continue  # (int8 per-channel weights are not this pass's: ort-int8's integer kernels take them)
            q, bits = found
            scale = dq.inputs[1]
            zp = dq.inputs[2] if len(dq.inputs) > 2 else None
            block = int(dq.attrs.get("block_size", 0) or 0)
            kind = float_kind(mm.inputs[0].dtype)
            if not (q.ndim == 2 and isinstance(scale, gs.Constant) and int(dq.attrs.get("axis", 1)) == 0
                    and block >= 16 and block & (block - 1) == 0 and q.shape[0] % block == 0
                    and kind in ("fp32", "fp16") and float_kind(scale.dtype) == kind
                    and (zp is None or (isinstance(zp, gs.Constant) and not np.any(np.asarray(zp.values))))):
                left += 1
                continue
            k, n = q.shape
            blob = gs.Constant(names(f"{dq.inputs[0].name}_nbits"), pack(q, bits, block))
            scales = gs.Constant(names(f"{scale.name}_nbits"),
                                 np.ascontiguousarray(np.asarray(scale.values).T).reshape(-1))
            node = gs.Node("MatMulNBits", names(f"{mm.name}_nbits"), domain="com.microsoft",
                           attrs={"K": int(k), "N": int(n), "bits": bits, "block_size": block},
                           inputs=[mm.inputs[0], blob, scales], outputs=list(mm.outputs))
            mm.outputs.clear()
            mm.inputs.clear()
            graph.nodes.append(node)
            done += 1
        if done:
            import_domain(graph, "com.microsoft", 1)
            graph.cleanup().toposort()
            ctx.remark("QC301", f"matmul-nbits: {done} MatMul(s) with blocked int4/int8 weights now run as "
                                "com.microsoft MatMulNBits"
                                + (f"; {left} MatMul(s) left as they are (a block or type onnxruntime's "
                                   "MatMulNBits does not take)" if left else ""))
        else:
            ctx.warning("QC301", "matmul-nbits: no MatMul with blocked int4/int8 weights to convert"
                                 + (f" ({left} MatMul(s) in a form it does not take)" if left else "")
                                 + "; run it after insert-qdq{precision=int4-weights}")
        return PassResult(done > 0, {"matmulnbits": done, "left": left})
