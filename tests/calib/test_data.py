"""Calibration data: every input form, layouts, batching rules, streaming, and each bad input named precisely."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from qcompiler.calib.data import NpzSource, as_data_source, iter_batches
from qcompiler.calib.npy import NpyArray
from qcompiler.diagnostics import CalibrationError, DiagnosticEngine

from ..builders import G


def _graph(batch="N", shape=(3, 4, 4), name="x"):
    b = G()
    x = b.input(name, [batch, *shape])
    b.output(b.relu(x))
    return b.graph()


def _rnn_graph():
    """A streaming RNN step: input [T, 576] (sequence-first, symbolic T), state h, c [1, 1, 128]."""
    b = G()
    x = b.input("input", ["T", 576])
    h = b.input("h", [1, 1, 128])
    c = b.input("c", [1, 1, 128])
    y = b.matmul(x, 576, 128)
    b.output(b.node("Add", [b.node("ReduceMean", [y], axes=[0], keepdims=1), b.node("Add", [h, c])]))
    return b.graph()


def _collect(data, graph, **kw):
    return list(iter_batches(as_data_source(data, **kw), graph))


def _arr(n, shape=(3, 4, 4), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_npz_is_streamed_and_rebatched(tmp_path):
    x = _arr(21)
    np.savez(tmp_path / "c.npz", x=x)
    batches = _collect(str(tmp_path / "c.npz"), _graph(), batch_size=8)
    assert [b.samples for b in batches] == [8, 8, 5] and all(b.batch_axis for b in batches)
    assert [b.first for b in batches] == [0, 8, 16]
    np.testing.assert_array_equal(np.concatenate([b.feeds["x"] for b in batches]), x)


def test_stored_npz_is_read_at_offsets_compressed_is_streamed(tmp_path):
    x = _arr(13)
    np.savez(tmp_path / "s.npz", x=x)
    np.savez_compressed(tmp_path / "z.npz", x=x)
    assert NpzSource(tmp_path / "s.npz").arrays["x"].seekable
    assert not NpzSource(tmp_path / "z.npz").arrays["x"].seekable
    for f in ("s.npz", "z.npz"):
        got = np.concatenate([b.feeds["x"] for b in _collect(str(tmp_path / f), _graph(), batch_size=4)])
        np.testing.assert_array_equal(got, x)
    np.save(tmp_path / "x.npy", x)
    a = NpyArray(tmp_path / "x.npy", None, "x")
    assert a.seekable and np.array_equal(np.concatenate(list(a.iter_rows(5))), x)
    np.testing.assert_array_equal(np.concatenate([b.feeds["x"] for b in _collect(str(tmp_path / "x.npy"), _graph())]),
                                  x)


def _peak_while_reading(path, shape) -> tuple[int, int]:
    data = as_data_source(str(path), batch_size=8)
    tracemalloc.start()
    try:
        n = sum(b.samples for b in data.batches(_graph(shape=shape)))
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_memory_held_does_not_grow_with_the_sample_count(tmp_path, saver):
    """Reading 512 samples allocates what reading 64 does: a batch at a time (memory-mapped or streamed)."""
    shape = (3, 64, 64)
    saver(tmp_path / "small.npz", x=_arr(64, shape=shape))
    saver(tmp_path / "big.npz", x=_arr(512, shape=shape))  # 24 MiB
    batch_bytes = 8 * 3 * 64 * 64 * 4
    n_small, small = _peak_while_reading(tmp_path / "small.npz", shape)
    n_big, big = _peak_while_reading(tmp_path / "big.npz", shape)
    assert (n_small, n_big) == (64, 512)
    assert big < 1.1 * small + 65536, f"peak {big / 2**20:.2f} MiB at 512 samples vs {small / 2**20:.2f} at 64"
    assert big < 8 * batch_bytes, f"peak {big / 2**20:.1f} MiB for batches of {batch_bytes / 2**20:.2f} MiB"


def test_compressed_npz_and_max_samples(tmp_path):
    x = _arr(30)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    batches = _collect(str(tmp_path / "c.npz"), _graph(), batch_size=4, max_samples=10)
    assert sum(b.samples for b in batches) == 10


def test_fixed_batch_of_one_gets_single_samples(tmp_path):
    np.savez(tmp_path / "c.npz", x=_arr(5))
    diags = DiagnosticEngine()
    batches = list(iter_batches(as_data_source(str(tmp_path / "c.npz"), batch_size=8), _graph(batch=1), diags))
    assert [b.feeds["x"].shape for b in batches] == [(1, 3, 4, 4)] * 5


def test_fixed_batch_drops_the_remainder_with_a_remark(tmp_path):
    np.savez(tmp_path / "c.npz", x=_arr(7))
    diags = DiagnosticEngine()
    batches = list(iter_batches(as_data_source(str(tmp_path / "c.npz")), _graph(batch=3), diags))
    assert len(batches) == 2
    assert any("dropped the last 1" in d.message for d in diags)


def test_folder_files_are_one_feed_each(tmp_path):
    d = tmp_path / "samples"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i:03d}.npy", _arr(1, seed=i)[0])  # one sample without batch axis
    batches = _collect(str(d), _graph(), batch_size=2)
    assert [b.feeds["x"].shape for b in batches] == [(1, 3, 4, 4)] * 3
    assert [b.origin.endswith(f"{i:03d}.npy") for i, b in enumerate(batches)] == [True] * 3
    d2 = tmp_path / "npz"
    d2.mkdir()
    for i in range(2):
        np.savez(d2 / f"{i}.npz", x=_arr(2, seed=i))
    assert [b.samples for b in _collect(str(d2), _graph(), batch_size=8)] == [2, 2]
    # --layout batch joins the files' samples into batches, as a single .npz would be
    assert [b.samples for b in _collect(str(d2), _graph(), batch_size=3, layout="batch")] == [3, 1]


def test_folder_of_rnn_feeds_with_sequence_first_inputs_and_states(tmp_path):
    """Each file holds one feed: input [T, 576] with its own T, states [1, 1, 128]; axis 0 is no batch axis."""
    d = tmp_path / "feeds"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, T in enumerate((7, 12, 5)):
        np.savez(d / f"{i}.npz", input=rng.standard_normal((T, 576)).astype(np.float32),
                 h=rng.standard_normal((1, 1, 128)).astype(np.float32),
                 c=rng.standard_normal((1, 1, 128)).astype(np.float32))
    batches = _collect(str(d), _rnn_graph())
    assert [b.feeds["input"].shape[0] for b in batches] == [7, 12, 5]
    assert all(not b.batch_axis and b.samples == 1 for b in batches)
    assert [b.first for b in batches] == [0, 1, 2]
    assert len(_collect(str(d), _rnn_graph(), max_samples=2)) == 2  # feeds are counted, never cut
    # one such feed as a single .npz, and several stacked on a new leading axis
    np.savez(tmp_path / "one.npz", input=rng.standard_normal((9, 576)).astype(np.float32),
             h=np.zeros((1, 1, 128), np.float32), c=np.zeros((1, 1, 128), np.float32))
    (one,) = _collect(str(tmp_path / "one.npz"), _rnn_graph())
    assert one.feeds["input"].shape == (9, 576)
    np.savez(tmp_path / "stacked.npz", input=rng.standard_normal((4, 9, 576)).astype(np.float32),
             h=np.zeros((4, 1, 1, 128), np.float32), c=np.zeros((4, 1, 1, 128), np.float32))
    stacked = _collect(str(tmp_path / "stacked.npz"), _rnn_graph())
    assert len(stacked) == 4 and stacked[2].feeds["h"].shape == (1, 1, 128)


def test_ambiguous_layout_says_which_option_to_use(tmp_path):
    np.savez(tmp_path / "mixed.npz", input=np.zeros((4, 9, 576), np.float32), h=np.zeros((1, 1, 128), np.float32),
             c=np.zeros((1, 1, 128), np.float32))
    with pytest.raises(CalibrationError) as info:
        _collect(str(tmp_path / "mixed.npz"), _rnn_graph())
    msg = str(info.value)
    assert "cannot tell how the arrays are laid out" in msg and "'input' rank 3 (model 2)" in msg
    assert "--layout" in info.value.diagnostic.hint
    with pytest.raises(CalibrationError, match="different numbers of stacked feeds on axis 0"):
        _collect(str(tmp_path / "mixed.npz"), _rnn_graph(), layout="stacked")
    with pytest.raises(CalibrationError, match="unknown data layout"):
        as_data_source(str(tmp_path / "mixed.npz"), layout="rows")


def test_batch_layout_with_unequal_sample_counts_is_refused_with_the_way_out(tmp_path):
    np.savez(tmp_path / "rnn.npz", input=np.zeros((9, 576), np.float32), h=np.zeros((1, 1, 128), np.float32),
             c=np.zeros((1, 1, 128), np.float32))
    with pytest.raises(CalibrationError) as info:
        _collect(str(tmp_path / "rnn.npz"), _rnn_graph(), layout="batch")
    assert "different numbers of samples on axis 0" in str(info.value)
    assert "--layout feed" in info.value.diagnostic.hint


def test_iterables_and_data_readers():
    feeds = [{"x": _arr(2, seed=i)} for i in range(3)]
    batches = _collect(feeds, _graph())
    assert len(batches) == 3 and all(b.samples == 2 and b.batch_axis for b in batches)

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
    # RNN feeds from a list: one run each, as given
    rnn = [{"input": np.zeros((T, 576), np.float32), "h": np.zeros((1, 1, 128), np.float32),
            "c": np.zeros((1, 1, 128), np.float32)} for T in (3, 4)]
    assert [b.feeds["input"].shape[0] for b in _collect(rnn, _rnn_graph())] == [3, 4]
    # an item that is not a dict is matched to the inputs by position: a list of scalars for an image input is
    # refused by what it is
    with pytest.raises(CalibrationError, match=r"item 1\): input 'x' has rank 0 .* the model expects rank 4"):
        _collect([{"x": _arr(1)}, [1, 2]], _graph())


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


def test_feed_with_a_wrong_state_shape_names_the_file(tmp_path):
    d = tmp_path / "feeds"
    d.mkdir()
    np.savez(d / "0.npz", input=np.zeros((3, 576), np.float32), h=np.zeros((2, 1, 128), np.float32),
             c=np.zeros((1, 1, 128), np.float32))
    with pytest.raises(CalibrationError) as info:
        _collect(str(d), _rnn_graph())
    assert f"'{d / '0.npz'}': input 'h' has dim 0 = 2; the model fixes it to 1" in str(info.value)


def test_nan_names_input_and_sample_or_skips():
    x = _arr(10)
    x[7, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError) as info:
        _collect({"x": x}, _graph(), batch_size=4)
    assert "input 'x' has NaN or Inf in sample 7" in str(info.value)
    assert info.value.code == "QC403"
    diags = DiagnosticEngine()
    batches = list(iter_batches(as_data_source({"x": x}, batch_size=4, skip_bad=True), _graph(), diags))
    assert sum(b.samples for b in batches) == 9
    assert any(d.code == "QC403" for d in diags)


def test_nan_in_a_feed_without_batch_axis_skips_the_feed(tmp_path):
    bad = {"input": np.full((3, 576), np.nan, np.float32), "h": np.zeros((1, 1, 128), np.float32),
           "c": np.zeros((1, 1, 128), np.float32)}
    good = dict(bad, input=np.zeros((3, 576), np.float32))
    with pytest.raises(CalibrationError, match="has NaN or Inf in the feed starting at sample 1"):
        _collect([good, bad], _rnn_graph())
    assert len(_collect([good, bad, good], _rnn_graph(), skip_bad=True)) == 2


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
    assert batches[0].feeds["x"].dtype == np.float32


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
    assert [b.feeds["x"].shape for b in batches] == [(2, 3, 6, 6), (1, 3, 6, 6)]
    (d / "bad.png").write_bytes(b"not an image")
    with pytest.raises(CalibrationError, match="cannot read image"):
        list(iter_batches(as_data_source(str(d), preprocess="resize=8 crop=6"), _graph(shape=(3, 6, 6))))
