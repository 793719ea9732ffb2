"""Quantization math against the ONNX reference implementation (onnx.reference) and onnxruntime."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from qcompiler.diagnostics import RecipeError
from qcompiler.quant.emit import activation_qparams, dequantize_weight, quantize_weight, weight_qparams
from qcompiler.quant.qspec import QSpec, fake_quant, normalize_dtype, parse_qspec

from ..builders import dq_model, qdq_model


def _qdq_model(scale, zp, axis=None, opset=19, block=None):
    """(onnx.reference implements Q/DQ from opset 19; int8 semantics are those of opset 13)"""
    return qdq_model(scale, zp, axis=axis, block=block, opset=opset, expose_q=True)


def test_round_half_to_even_and_saturation_match_reference():
    x = np.array([-200, -128.5, -127.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 126.5, 127.5, 200], np.float32)
    ref = ReferenceEvaluator(_qdq_model(np.float32(1.0), np.int8(0)))
    y_ref, q_ref = ref.run(None, {"x": x})
    np.testing.assert_array_equal(fake_quant(x, 1.0, 0, -128, 127), y_ref)
    np.testing.assert_array_equal(q_ref, [-128, -128, -128, -2, -2, 0, 0, 2, 2, 126, 127, 127])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=64), st.floats(0.01, 2.0),
       st.sampled_from(["s8", "u8"]), st.integers(-20, 20))
def test_activation_qdq_matches_reference_and_error_bound(values, amax_frac, dtype, shift):
    x = np.asarray(values, np.float32)
    lo, hi = float(x.min()) * amax_frac, float(x.max()) * amax_frac
    spec = QSpec(dtype, "per_tensor_symmetric" if dtype == "s8" else "per_tensor_affine")
    q = activation_qparams(spec, lo, hi)
    ref = ReferenceEvaluator(_qdq_model(q.scale, q.zero_point)).run(None, {"x": x})[0]
    ours = fake_quant(x, q.scale, q.zero_point.astype(np.float64), q.qmin, q.qmax)
    np.testing.assert_array_equal(ours, ref)
    inside = (x >= q.qmin * q.scale - q.zero_point * 0) & (ref == ours)
    s = float(q.scale)
    z = float(q.zero_point)
    lo_r, hi_r = (q.qmin - z) * s, (q.qmax - z) * s
    m = (x >= lo_r) & (x <= hi_r)
    # half a step, up to float32 rounding of the values themselves (one ulp of |x| per operation, a few operations)
    ulp = np.spacing(np.abs(x[m & inside]).astype(np.float32))
    assert np.all(np.abs(x[m & inside] - ref[m & inside]) <= s / 2 + 1e-6 * max(1.0, abs(s)) + 4 * ulp)


@pytest.mark.parametrize("dtype", ["s8", "s4", "s6", "s7.7"])
@pytest.mark.parametrize("axis", [0, 1, None])
def test_weight_quantization_matches_reference(dtype, axis):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    spec = QSpec(dtype, "per_channel_symmetric" if axis is not None else "per_tensor_symmetric")
    q = weight_qparams(W, spec, axis)
    qi = quantize_weight(W, q)
    assert qi.dtype == np.int8
    lo, hi = spec.grid(narrow=True)
    assert qi.min() >= lo and qi.max() <= hi and -qi.min() <= hi  # narrow grid: never -2^(b-1)
    if dtype == "s8":
        assert hi == 127 and lo == -127
    # the DQ in onnx.reference gives what dequantize_weight gives
    ref = ReferenceEvaluator(dq_model(q.scale, q.zero_point, axis=axis)).run(None, {"q": qi})[0]
    np.testing.assert_allclose(dequantize_weight(qi, q), ref, rtol=1e-6, atol=1e-7)
    # the error of every weight is at most half a step of its channel
    step = q.scale if axis is None else q.scale.reshape([-1 if i == axis else 1 for i in range(4)])
    assert np.all(np.abs(W - ref) <= step / 2 + 1e-6)


def test_fractional_width_grid():
    assert QSpec("s7.7").grid(narrow=False) == (-103, 102)  # floor(2^6.7) = 103
    assert QSpec("s7.7").grid(narrow=True) == (-102, 102)
    assert QSpec("s4").grid(narrow=False) == (-8, 7)
    assert QSpec("u8", "per_tensor_affine").grid(narrow=False) == (0, 255)


def test_fp8_weights_match_ml_dtypes_and_reference():
    rng = np.random.default_rng(2)
    W = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    spec = QSpec("fp8e4m3", "per_channel_symmetric")
    q = weight_qparams(W, spec, 0)
    qi = quantize_weight(W, q)
    assert qi.dtype == ml_dtypes.float8_e4m3fn
    assert np.max(np.abs(qi.astype(np.float32))) <= 448
    m = _qdq_model(q.scale, np.zeros(4, ml_dtypes.float8_e4m3fn), axis=0, opset=19)
    y = ReferenceEvaluator(m).run(None, {"x": W})[0]
    np.testing.assert_allclose(dequantize_weight(qi, q), y, rtol=1e-6)


@pytest.mark.parametrize("bad,fragment", [("s9", "2 to 8"), ("q8", "unknown dtype"), ("u7.5", "fractional"),
                                          ("int12", "unknown dtype")])
def test_bad_dtypes(bad, fragment):
    with pytest.raises(RecipeError, match=fragment):
        normalize_dtype(bad, "recipe")


def test_parse_qspec_forms():
    assert parse_qspec("float", "x", weight=True) is None
    s = parse_qspec({"dtype": "int8", "qscheme": "per_tensor_affine", "observer": "kl"}, "x", weight=False)
    assert s.dtype == "s8" and s.observer == "entropy" and not s.symmetric
    s = parse_qspec({"dtype": "s4", "block_size": 32}, "x", weight=True)
    assert s.per_block and s.storage == "int4"
    with pytest.raises(RecipeError, match="did you mean 'qscheme'"):
        parse_qspec({"qschem": "per_tensor_symmetric"}, "x", weight=True)
    with pytest.raises(RecipeError, match="unknown qscheme"):
        parse_qspec({"qscheme": "per_row"}, "x", weight=True)


@pytest.mark.parametrize("zdtype,axis,block", [
    (np.int8, None, None), (np.uint8, None, None), (np.int8, 0, None), (np.uint8, 1, None),
    (ml_dtypes.int4, 0, None), (ml_dtypes.uint4, None, None), (np.int8, 1, 4), (ml_dtypes.int4, 1, 4),
    (ml_dtypes.float8_e4m3fn, 0, None),
])
def test_constant_quantize_dequantize_linear_match_reference(zdtype, axis, block):
    from qcompiler.quant.qspec import dequantize_linear, quantize_linear, storage_grid

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 8)) * 3).astype(np.float32)
    qmin, qmax, fp8 = storage_grid(np.dtype(zdtype))
    if block:
        sshape = (6, 2)
    elif axis is not None:
        sshape = (x.shape[axis],)
    else:
        sshape = ()
    scale = (rng.uniform(0.01, 0.1, sshape)).astype(np.float32)
    if fp8 or qmin < 0:
        zp = np.zeros(sshape, zdtype)
    else:
        zp = rng.integers(qmin, qmax // 2, sshape).astype(zdtype)
    ref = ReferenceEvaluator(_qdq_model(scale, zp, axis=axis if (axis is not None or block) else None,
                                        opset=21, block=block))
    y_ref, q_ref = ref.run(None, {"x": x})
    q = quantize_linear(x, scale, zp, axis if axis is not None else 1, block, np.dtype(zdtype))
    np.testing.assert_array_equal(np.asarray(q).astype(np.float64), np.asarray(q_ref).astype(np.float64))
    y = dequantize_linear(np.asarray(q_ref), scale, zp, axis if axis is not None else 1, block)
    np.testing.assert_array_equal(y, y_ref)


def test_storage_grid_rejects_unknown_types():
    from qcompiler.quant.qspec import storage_grid

    assert storage_grid(np.int8) == (-128, 127, False)
    assert storage_grid("float8_e4m3fn")[2]
    with pytest.raises(ValueError, match="float32"):
        storage_grid(np.float32)
