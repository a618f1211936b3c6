"""Params: initialisation schemes, dtypes, save/load."""

import numpy as np
import pytest

from fastmlp import Params, init_params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_scheme_matches_the_original(dtype):
    p = init_params((784, 72, 36, 10), "uniform", seed=3, dtype=dtype)
    assert p.sizes == (784, 72, 36, 10) and p.dtype == dtype
    for W, b in zip(p.weights, p.biases):
        assert W.flags.c_contiguous and W.dtype == dtype and b.dtype == dtype
        for a in (W, b):
            assert a.min() >= -0.5 and a.max() < 0.5
    assert abs(p.weights[0].mean()) < 0.01 and abs(p.weights[0].std() - np.sqrt(1 / 12)) < 0.01


def test_he_scheme_statistics():
    p = init_params((784, 72, 36, 10), "he", seed=0, dtype=np.float64)
    for W, b in zip(p.weights, p.biases):
        assert abs(W.std() - np.sqrt(2 / W.shape[0])) < 0.1 * np.sqrt(2 / W.shape[0])
        assert not b.any()


def test_same_seed_same_numbers_across_dtypes():
    a = init_params(seed=5, dtype=np.float64)
    b = init_params(seed=5, dtype=np.float32)
    c = init_params(seed=6, dtype=np.float64)
    assert np.array_equal(a.weights[0].astype(np.float32), b.weights[0])
    assert not np.array_equal(a.weights[0], c.weights[0])


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(scheme="xavier"), ValueError, "scheme must be one of uniform, he; got 'xavier'"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (dict(seed=-1), ValueError, "seed must be an integer >= 0; got -1"),
    (dict(sizes=(784,)), ValueError, "sizes must list 2 to 65 layer widths"),
    (dict(sizes=(784, 0, 10)), ValueError, r"each in 1..65536 \(the inputs in 1..16777216\); got \(784, 0, 10\)"),
    (dict(sizes="784"), TypeError, "sizes must be a sequence of integers"),     # not (7, 8, 4)
    (dict(sizes=(784.0, 10)), TypeError, r"sizes must be integers .*; got 784.0"),
    (dict(sizes=(784, True, 10)), TypeError, "got True"),
    (dict(sizes=(65536, 65536, 10)), ValueError, "parameters; at most 100000000"),
    (dict(sizes=(2,) * 70), ValueError, "sizes must list 2 to 65 layer widths"),
])
def test_init_rejects_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        init_params(**kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_roundtrip(tmp_path, dtype):
    p = init_params((784, 20, 10), "he", seed=1, dtype=dtype)
    path = p.save(tmp_path / "m.npz")
    q = Params.load(path)
    assert q.sizes == p.sizes and q.dtype == dtype
    for a, b in zip(p.arrays(), q.arrays()):
        assert np.array_equal(a, b)
    assert [f.name for f in tmp_path.iterdir()] == ["m.npz"]   # no temporary left behind


def test_load_rejects_foreign_files(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    for path in (other, text):
        with pytest.raises(ValueError, match=f"{path}: not a fastmlp model file"):
            Params.load(path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        Params.load(tmp_path / "missing.npz")


def test_params_checks_shapes():
    with pytest.raises(ValueError, match="layer 1: W has 5 inputs but layer 0 has 4 outputs"):
        Params([np.zeros((3, 4)), np.zeros((5, 2))], [np.zeros(4), np.zeros(2)])
    with pytest.raises(TypeError, match="share one dtype"):
        Params([np.zeros((3, 4)), np.zeros((4, 2), np.float32)], [np.zeros(4), np.zeros(2)])


def test_every_params_array_starts_on_a_cache_line():
    """The kernels' vector loads and stores of a weight row never straddle two cache lines."""
    from fastmlp.params import ALIGN, empty_aligned
    p = init_params((784, 72, 36, 10), "he", seed=0, dtype=np.float32)
    buf = np.zeros(784 * 72 + 8, np.float32)
    off = 1 if buf.ctypes.data % ALIGN == 0 else 0
    W = buf[off:off + 784 * 72].reshape(784, 72)          # deliberately off a cache line
    assert W.ctypes.data % ALIGN != 0
    q = Params([W] + p.weights[1:], p.biases)
    assert np.array_equal(q.weights[0], W)
    for r in (p, p.copy(), p.zeros_like(), p.astype(np.float64), q):
        for a in r.arrays():
            assert a.ctypes.data % ALIGN == 0 and a.flags.c_contiguous
    for shape, dt in (((3, 5), np.float64), ((0, 4), np.float32), (7, np.int64)):
        e = empty_aligned(shape, dt)
        assert e.shape == np.empty(shape).shape and e.dtype == dt
        assert e.size == 0 or e.ctypes.data % ALIGN == 0
