"""Calibration data: every input form, batching rules, and each bad-input case named precisely."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.calib.data import as_data_source, iter_batches
from qcompiler.diagnostics import CalibrationError, DiagnosticEngine

from ..builders import G


def _graph(batch="N", shape=(3, 4, 4), name="x"):
    b = G()
    x = b.input(name, [batch, *shape])
    b.output(b.relu(x))
    return b.graph()


def _collect(data, graph, **kw):
    return list(iter_batches(as_data_source(data, **kw), graph))


def _arr(n, shape=(3, 4, 4), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_npz_is_streamed_and_rebatched(tmp_path):
    x = _arr(21)
    np.savez(tmp_path / "c.npz", x=x)
    batches = _collect(str(tmp_path / "c.npz"), _graph(), batch_size=8)
    assert [b["x"].shape[0] for _, b in batches] == [8, 8, 5]
    assert [i for i, _ in batches] == [0, 8, 16]
    np.testing.assert_array_equal(np.concatenate([b["x"] for _, b in batches]), x)


def test_compressed_npz_and_max_samples(tmp_path):
    x = _arr(30)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    batches = _collect(str(tmp_path / "c.npz"), _graph(), batch_size=4, max_samples=10)
    assert sum(b["x"].shape[0] for _, b in batches) == 10


def test_fixed_batch_of_one_gets_single_samples(tmp_path):
    np.savez(tmp_path / "c.npz", x=_arr(5))
    diags = DiagnosticEngine()
    batches = list(iter_batches(as_data_source(str(tmp_path / "c.npz"), batch_size=8), _graph(batch=1), diags))
    assert [b["x"].shape for _, b in batches] == [(1, 3, 4, 4)] * 5


def test_fixed_batch_drops_the_remainder_with_a_remark(tmp_path):
    np.savez(tmp_path / "c.npz", x=_arr(7))
    diags = DiagnosticEngine()
    batches = list(iter_batches(as_data_source(str(tmp_path / "c.npz")), _graph(batch=3), diags))
    assert len(batches) == 2
    assert any("dropped the last 1" in d.message for d in diags)


def test_folder_of_npy_and_npz(tmp_path):
    d = tmp_path / "samples"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i:03d}.npy", _arr(1, seed=i)[0])  # one sample without batch axis
    batches = _collect(str(d), _graph(), batch_size=2)
    assert [b["x"].shape[0] for _, b in batches] == [2, 1]
    d2 = tmp_path / "npz"
    d2.mkdir()
    for i in range(2):
        np.savez(d2 / f"{i}.npz", x=_arr(2, seed=i))
    assert sum(b["x"].shape[0] for _, b in _collect(str(d2), _graph(), batch_size=8)) == 4


def test_iterables_and_data_readers():
    feeds = [{"x": _arr(2, seed=i)} for i in range(3)]
    assert len(_collect(feeds, _graph())) == 3

    class Reader:  # onnxruntime.quantization.CalibrationDataReader protocol
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = iter(feeds)

    src = as_data_source(Reader())
    assert len(list(iter_batches(src, _graph()))) == 3
    assert len(list(iter_batches(src, _graph()))) == 3  # rewound


def test_one_shot_generator_cannot_be_reused():
    src = as_data_source(({"x": _arr(1)} for _ in range(2)))
    list(iter_batches(src, _graph()))
    with pytest.raises(CalibrationError, match="already consumed"):
        list(iter_batches(src, _graph()))


@pytest.mark.parametrize("data,fragment", [
    ({"y": _arr(4)}, "no data for model input 'x'"),
    ({"x": _arr(4), "z": _arr(4)}, "'z', which is not a model input"),
    ({"x": _arr(4, shape=(3, 4))}, "has rank 3"),
    ({"x": _arr(4, shape=(5, 4, 4))}, "dim 1 = 5; the model fixes it to 3"),
    ({"x": _arr(4).astype(np.int32)}, "is int32; the model expects float32"),
])
def test_signature_mismatch_names_input_and_expectation(data, fragment):
    with pytest.raises(CalibrationError) as info:
        _collect(data, _graph())
    assert fragment in str(info.value)
    assert info.value.code == "QC402"


def test_nan_names_input_and_sample_or_skips():
    x = _arr(10)
    x[7, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError) as info:
        _collect({"x": x}, _graph(), batch_size=4)
    assert "input 'x' has NaN or Inf in sample 7" in str(info.value)
    assert info.value.code == "QC403"
    diags = DiagnosticEngine()
    batches = list(iter_batches(as_data_source({"x": x}, batch_size=4, skip_bad=True), _graph(), diags))
    assert sum(b["x"].shape[0] for _, b in batches) == 9
    assert any(d.code == "QC403" for d in diags)


def test_empty_and_missing_data(tmp_path):
    with pytest.raises(CalibrationError, match="no usable samples"):
        _collect({"x": _arr(0)}, _graph())
    with pytest.raises(CalibrationError, match="not found"):
        as_data_source(str(tmp_path / "nope.npz"))
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CalibrationError, match="empty"):
        as_data_source(str(tmp_path / "empty.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="cannot read"):
        as_data_source(str(tmp_path / "junk.npz"))


def test_float64_is_converted():
    batches = _collect({"x": _arr(3).astype(np.float64)}, _graph())
    assert batches[0][1]["x"].dtype == np.float32


def test_images_with_preprocessing(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        PIL.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    src = as_data_source(str(d), preprocess="resize=8 crop=6 mean=0.5,0.5,0.5 std=0.25,0.25,0.25 layout=NCHW",
                         batch_size=2)
    batches = list(iter_batches(src, _graph(shape=(3, 6, 6))))
    assert [b["x"].shape for _, b in batches] == [(2, 3, 6, 6), (1, 3, 6, 6)]
