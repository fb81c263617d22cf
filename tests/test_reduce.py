"""The one-pass reduction kernel against NumPy on the same values.

Shapes cross the kernel's float32 blocks (128 positions, or whole samples up to 128
rows) and its chunks of 16 units (a remainder beside full chunks), and planted NaN, Inf and values whose squares overflow float32 send single
blocks down the masked float64 path, beside clean blocks of the same batch.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keraslens.capture import reduce
from keraslens.capture.stats import HIST_BINS, STATISTICS, Sums

BOUNDS = (-0.5, 0.5)


def numpy_moments(values: np.ndarray, shift: np.ndarray, bounds) -> np.ndarray:
    """The rows of `STATISTICS`, in float64."""
    v = values.astype(np.float64)
    flat = v.reshape(-1, v.shape[-1])
    finite = np.isfinite(flat)
    centred = np.where(finite, flat - shift, 0.0)
    with np.errstate(invalid="ignore"):
        rows = [
            finite.sum(0),
            centred.sum(0),
            (centred**2).sum(0),
            np.where(finite, flat, np.inf).min(0, initial=np.inf),
            np.where(finite, flat, -np.inf).max(0, initial=-np.inf),
            (flat > 0).sum(0),
            (v > 0).any(1).sum(0),
            np.isnan(flat).sum(0),
            np.isinf(flat).sum(0),
            (flat <= bounds[0]).sum(0) if bounds else np.zeros(v.shape[-1]),
            (flat >= bounds[1]).sum(0) if bounds else np.zeros(v.shape[-1]),
        ]
    return np.stack(rows).astype(np.float64)


def numpy_first_finite(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1, values.shape[-1])
    finite = np.isfinite(flat)
    if not flat.size:
        return np.zeros(values.shape[-1])
    first = np.argmax(finite, 0)
    return np.where(finite.any(0), flat[first, np.arange(flat.shape[1])], 0.0)


def numpy_hist(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).reshape(-1).view(np.int32)
    magnitude = (bits & 0x7FFFFFFF) >> 21
    index = np.where(bits < 0, 1023 - magnitude, 1024 + magnitude)[magnitude < 1020]
    return np.bincount(index, minlength=HIST_BINS)


def summarize(values, bounds=BOUNDS, histogram_samples=None, shift=None):
    start = None if shift is None else tf.constant(shift, tf.float32)
    summary = reduce.batch_summary(tf.constant(values), bounds, histogram_samples, start)
    return [t.numpy() for t in summary]


def assert_summary(values, bounds=BOUNDS, histogram_samples=None, shift=None):
    moments, used, hist = summarize(values, bounds, histogram_samples, shift)
    expected_shift = numpy_first_finite(values) if shift is None else shift
    np.testing.assert_array_equal(used, np.float32(expected_shift))
    expected = numpy_moments(values, used, bounds)
    exact = [0, 3, 4, 5, 6, 7, 8, 9, 10]
    np.testing.assert_array_equal(moments[exact], expected[exact])
    # float32 sums over blocks of at most 128 values: each off by < 1e-5 of its magnitude,
    # plus what float32 cannot hold: a square below its smallest normal (1.2e-38) is lost.
    flat = values.astype(np.float64).reshape(-1, values.shape[-1])
    centred = np.abs(np.where(np.isfinite(flat), flat - used, 0.0))
    tiny = np.finfo(np.float32).tiny * len(flat)
    for row, bound in ((1, centred.sum(0)), (2, (centred**2).sum(0))):
        error = np.abs(moments[row] - expected[row])
        assert (error <= 1e-5 * bound + tiny).all(), (STATISTICS[row].name, error, bound)
    sampled = values if histogram_samples is None else values[:histogram_samples]
    np.testing.assert_array_equal(hist, numpy_hist(sampled))


@pytest.mark.parametrize(
    "shape",
    [
        (5, 1, 3),
        (300, 1, 7),
        (50, 3, 37),
        (4, 128, 8),
        (3, 300, 5),
        (2, 129, 1),
        (1, 1, 1),
        (130, 1, 48),
        (3, 200, 33),
    ],
)
def test_clean_batches_match_numpy(shape):
    values = np.random.default_rng(0).normal(2.0, 3.0, size=shape).astype(np.float32)
    assert_summary(values)


@pytest.mark.parametrize("shape", [(200, 1, 4), (6, 300, 3), (40, 5, 6), (9, 140, 35)])
def test_planted_nan_inf_and_overflow_match_numpy(shape):
    rng = np.random.default_rng(1)
    values = rng.normal(size=shape).astype(np.float32)
    flat = values.reshape(-1)
    spots = rng.choice(flat.size, size=12, replace=False)
    flat[spots[:3]] = np.nan
    flat[spots[3:6]] = np.inf
    flat[spots[6:9]] = -np.inf
    flat[spots[9:]] = np.float32(3e30)  # its square overflows float32
    assert_summary(values)


def test_a_unit_with_no_finite_value_has_a_zero_shift_and_empty_moments():
    values = np.random.default_rng(2).normal(size=(4, 10, 3)).astype(np.float32)
    values[..., 1] = np.nan
    values[0, 0, 0] = np.inf  # the shift is the first finite value, not the first value
    moments, used, _ = summarize(values)
    assert used[1] == 0.0 and used[0] == values[0, 1, 0]
    assert moments[0, 1] == 0 and moments[3, 1] == np.inf and moments[4, 1] == -np.inf
    assert_summary(values)


def test_given_shift_and_histogram_samples_and_no_bounds():
    values = np.random.default_rng(3).normal(size=(9, 140, 4)).astype(np.float32)
    assert_summary(values, bounds=None, histogram_samples=2, shift=np.full(4, 0.25))


def test_an_empty_batch_has_zero_counts():
    moments, used, hist = summarize(np.zeros((0, 6, 3), np.float32))
    assert moments[0].sum() == 0 and (moments[3] == np.inf).all() and hist.sum() == 0
    np.testing.assert_array_equal(used, 0.0)


def test_batches_without_static_shapes_in_a_graph():
    values = np.random.default_rng(4).normal(size=(5, 7, 3)).astype(np.float32)
    values[1, 2, 0] = np.nan

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def dynamic(v):
        return reduce.batch_summary(v, BOUNDS, None)

    moments, used, _ = (t.numpy() for t in dynamic(values))
    np.testing.assert_allclose(moments, numpy_moments(values, used, BOUNDS), rtol=1e-5)


floats = st.floats(
    width=32, allow_subnormal=False, min_value=-(2.0**80), max_value=2.0**80
) | st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0])


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, 6), st.integers(1, 260), st.integers(1, 40)),
        elements=floats,
    )
)
def test_any_float32_batch_matches_numpy(values):
    assert_summary(values)


def test_the_kernel_refuses_buffers_of_the_wrong_size():
    from keraslens.capture import _kernel

    values = np.zeros((2, 3, 4), np.float32)
    shift, hist = np.zeros(4, np.float32), np.zeros(HIST_BINS, np.int64)
    with pytest.raises(ValueError, match="moments holds 8 bytes, expected 352"):
        _kernel.summarize(values, 2, 3, 4, shift, True, False, 0, 0, 2, np.zeros(1), hist)
    with pytest.raises(ValueError, match="values holds 96 bytes, expected 192"):
        _kernel.summarize(values, 4, 3, 4, shift, True, False, 0, 0, 2, np.zeros((11, 4)), hist)


def test_the_kernel_exports_the_rows_of_the_schema_in_its_order():
    from keraslens.capture import _kernel

    assert _kernel.ROWS == tuple(statistic.name for statistic in STATISTICS)


def test_an_unbuilt_kernel_names_the_fix():
    code = (
        "import sys\n"
        "sys.modules['keraslens.capture._kernel'] = None\n"
        "try:\n"
        "    import keraslens\n"
        "    keraslens.Lens\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "not built" in out and "pip install -e ." in out


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 vector widths")
@pytest.mark.parametrize(
    "flags", [["-U__linux__"], ["-U__linux__", "-mavx2"]], ids=["sse2", "avx2"]
)
def test_each_vector_width_of_the_kernel_matches_numpy(tmp_path, flags):
    # The installed kernel runs the copy for this CPU's widest vectors only; without
    # __linux__ there is one copy, for the width the flags allow (SSE2 is x86-64's base).
    source = Path(reduce.__file__).with_name("_kernel.c")
    library = tmp_path / f"_kernel{sysconfig.get_config_var('EXT_SUFFIX')}"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    include = sysconfig.get_paths()["include"]
    build = [compiler, "-O3", "-shared", "-fPIC", *flags, f"-I{include}", str(source)]
    subprocess.run([*build, "-o", str(library)], check=True)
    code = f"""
import importlib.util, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
spec = importlib.util.spec_from_file_location("_kernel", {str(library)!r})
kernel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel)
from keraslens.capture import reduce
reduce._kernel = kernel
import test_reduce
for shape in [(130, 1, 48), (3, 200, 33), (50, 3, 37)]:
    test_reduce.test_clean_batches_match_numpy(shape)
for shape in [(40, 5, 6), (9, 140, 35)]:
    test_reduce.test_planted_nan_inf_and_overflow_match_numpy(shape)
test_reduce.test_given_shift_and_histogram_samples_and_no_bounds()
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_a_first_value_far_from_the_rest_keeps_the_variance_exact():
    # The batch's shift is each unit's first value; the float32 sums must not be taken
    # around it all along, or the squares of 1000 - x swamp the spread of x.
    values = np.random.default_rng(5).normal(size=(64, 1024, 3)).astype(np.float32)
    values[0, 0] = 1000.0
    moments, used, _ = summarize(values)
    n, s1, s2 = moments[0], moments[1], moments[2]
    assert (used == 1000.0).all()
    expected = values.astype(np.float64).reshape(-1, 3).var(0) * n
    np.testing.assert_allclose(s2 - s1 * s1 / n, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("threads", "shape", "histogram_samples"),
    [(2, (9, 300, 200), 7), (3, (41, 140, 150), None), (5, (6, 1, 250_000), 4)],
)
def test_a_batch_split_over_threads_matches_numpy(monkeypatch, threads, shape, histogram_samples):
    # Each part holds at least 2**18 values (the kernel's PART_VALUES), so these shapes
    # split into `threads` parts of whole samples (the last case: one sample each, its
    # histogram ending inside a later part); NaN, Inf and overflow land in several parts.
    monkeypatch.setattr(reduce, "reduction_threads", lambda: threads)
    rng = np.random.default_rng(6)
    values = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    flat = values.reshape(-1)
    spots = rng.choice(flat.size, size=40, replace=False)
    flat[spots[:10]], flat[spots[10:20]], flat[spots[20:30]] = np.nan, np.inf, -np.inf
    flat[spots[30:]] = np.float32(3e30)
    assert_summary(values, histogram_samples=histogram_samples)


def test_reduction_threads_follow_tensorflow_and_the_cores(monkeypatch):
    threading = tf.config.threading
    monkeypatch.setattr(threading, "get_intra_op_parallelism_threads", lambda: 1)
    assert reduce.reduction_threads() == 1
    monkeypatch.setattr(threading, "get_intra_op_parallelism_threads", lambda: 0)
    monkeypatch.setattr(reduce.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert reduce.reduction_threads() == reduce.MAX_THREADS
    monkeypatch.setattr(reduce.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert reduce.reduction_threads() == 1


def numpy_sums(values: np.ndarray, shift: np.ndarray) -> Sums:
    moments = numpy_moments(values, shift, BOUNDS)
    return Sums(moments, shift.astype(np.float64), numpy_hist(values))


def test_sums_of_parts_with_their_own_shifts_add_up_to_the_whole():
    # Three batches far apart (a drifting input) with shifts of their own, one of them
    # empty: added, they must give NumPy's mean and variance of everything at once.
    rng = np.random.default_rng(7)
    parts = [
        rng.normal(0.0, 1.0, size=(50, 4, 3)),
        np.zeros((0, 4, 3)),
        rng.normal(1e4, 1e-2, size=(30, 4, 3)),
        rng.normal(-5.0, 3.0, size=(20, 4, 3)),
    ]
    parts = [p.astype(np.float32) for p in parts]
    shifts = [np.array([0.5, -2.0, 3.0]), np.zeros(3), np.full(3, 1e4 + 0.03), np.zeros(3)]
    total = numpy_sums(parts[0], shifts[0])
    for part, shift in zip(parts[1:], shifts[1:], strict=True):
        total = total.add(numpy_sums(part, shift))
    every = np.concatenate(parts).astype(np.float64).reshape(-1, 3)
    n, s1, s2 = total.rows[:3]
    np.testing.assert_array_equal(n, len(every))
    np.testing.assert_allclose(total.shift + s1 / n, every.mean(0), rtol=1e-13)
    np.testing.assert_allclose((s2 - s1 * s1 / n) / n, every.var(0), rtol=1e-10)
    np.testing.assert_array_equal(total.rows[3], every.min(0))
    np.testing.assert_array_equal(total.rows[4], every.max(0))
    np.testing.assert_array_equal(total.hist, numpy_hist(np.concatenate(parts)))
