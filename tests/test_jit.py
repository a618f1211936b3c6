"""The jitted kernels against their reference twins, tensor by tensor.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import os

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from fastmlp import init_params, jit as J, reference as R

from support import real_batch

JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT") == "1"

# |jit - ref| <= atol * max|ref| + rtol * |ref|, per tensor (float32 measured: see README)
TOL = {np.float64: (1e-12, 1e-10), np.float32: (2e-5, 2e-4)}


def assert_close(jit_value, ref_value, dtype, name):
    atol, rtol = TOL[dtype]
    ref_value = np.asarray(ref_value, dtype=np.float64)
    scale = max(1.0, float(np.abs(ref_value).max(initial=0)))
    np.testing.assert_allclose(np.asarray(jit_value, dtype=np.float64), ref_value, rtol=rtol,
                               atol=atol * scale, err_msg=name)


def compare_all(params, X, y, label):
    dtype = params.dtype.type
    ra, ja = R.forward(params, X), J.forward(params, X)
    assert len(ra) == len(ja)
    for l in range(1, len(ra)):
        assert ja[l].dtype == params.dtype
        assert_close(ja[l], ra[l], dtype, f"jit.forward A{l} {label}")
    rl, rg = R.loss_and_grads(params, X, y)
    jl, jg = J.loss_and_grads(params, X, y)
    assert_close(jl, rl, dtype, f"jit.loss_and_grads loss {label}")
    for l in range(len(rg.weights)):
        assert jg.weights[l].dtype == params.dtype
        assert_close(jg.weights[l], rg.weights[l], dtype, f"jit.loss_and_grads dW{l + 1} {label}")
        assert_close(jg.biases[l], rg.biases[l], dtype, f"jit.loss_and_grads db{l + 1} {label}")
    rp, jp = R.predict_proba(params, X), J.predict_proba(params, X)
    assert_close(jp, rp, dtype, f"jit.predict_proba {label}")
    # predictions agree except where the two best probabilities tie within rounding
    top2 = np.sort(rp, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5
    assert np.array_equal(J.predict(params, X)[clear], R.predict(params, X)[clear]), label


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 7])
def test_twins_small_real_batches(mnist_train, dtype, n):
    X, y = real_batch(mnist_train, n, dtype, start=100)
    params = init_params((784, 72, 36, 10), "he", 0, dtype)
    compare_all(params, X, y, f"{np.dtype(dtype).name} n={n}")


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [64, 60000])
@pytest.mark.parametrize("scheme", ["he", "uniform"])
def test_twins_real_batches(mnist_train, dtype, n, scheme):
    X, y = real_batch(mnist_train, n, dtype)
    params = init_params((784, 72, 36, 10), scheme, 2, dtype)
    compare_all(params, X, y, f"{np.dtype(dtype).name} n={n} {scheme}")


@pytest.mark.small
@pytest.mark.parametrize("sizes", [(784, 32, 16, 8, 10), (784, 48, 24, 12, 10), (784, 72, 25, 10)])
def test_twins_other_architectures(mnist_train, sizes):
    """Other depths and widths: a first-layer width other than 72 runs the kernels with a
    run-time width (jit.CONST_WIDTHS); (784, 72, 25, 10) keeps the compile-time width 72 with
    another, odd, dense width. The deeper networks all have three hidden layers, like the
    random architectures of test_twins_random_inputs: every depth compiles its own kernels,
    and the cold test run must stay under five minutes."""
    X, y = real_batch(mnist_train, 5, np.float64)
    params = init_params(sizes, "he", 4, np.float64)
    compare_all(params, X, y, f"sizes={sizes}")


@pytest.mark.small
def test_twins_non_mnist_input_width():
    rng = np.random.default_rng(0)
    X = rng.random((6, 20))
    params = init_params((20, 8, 6, 4, 10), "uniform", 0, np.float64)
    compare_all(params, X, rng.integers(0, 10, 6), "20-8-6-4-10")


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_edge_cases(mnist_train, dtype):
    X, y = real_batch(mnist_train, 6, dtype)
    X[0] = 0                                                     # an all-zero image
    X[1] = np.random.default_rng(0).uniform(0.01, 1, 784)        # dense: no zeros at all
    params = init_params((784, 72, 36, 10), "he", 0, dtype)
    params.weights[0][:, 5] = -1                                 # hidden unit 5 dead for every sample
    params.biases[0][5] = -1
    compare_all(params, X, y, "edge cases")
    _, g = J.loss_and_grads(params, X, y)
    assert not g.weights[0][:, 5].any() and not g.weights[1][5].any()


@pytest.mark.small
def test_all_zero_batch_gives_bias_only_gradients():
    params = init_params((784, 72, 36, 10), "he", 0, np.float64)
    X = np.zeros((3, 784))
    y = np.array([1, 2, 3])
    compare_all(params, X, y, "all zero")
    _, g = J.loss_and_grads(params, X, y)
    assert not g.weights[0].any()


@pytest.mark.skipif(JIT_DISABLED, reason="many examples: too slow as plain Python")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), h1=st.integers(1, 40), h2=st.integers(1, 20), h3=st.integers(1, 12),
       density=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       scheme=st.sampled_from(["he", "uniform"]))
def test_twins_random_inputs(n, h1, h2, h3, density, seed, scheme):
    """Random widths, three hidden layers (the depth of test_twins_other_architectures' first two
    cases, so they share compiled kernels: each depth compiles its own)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 50)) * (rng.random((n, 50)) < density)
    params = init_params((50, h1, h2, h3, 10), scheme, seed % 1000, np.float64)
    compare_all(params, X, rng.integers(0, 10, n),
                f"random n={n} h=({h1},{h2},{h3}) d={density:.2f}")


@pytest.mark.small
def test_csr_input_equals_dense_input(mnist_train):
    X, y = mnist_train
    params = init_params(dtype=np.float32)
    Xf = R.prepare(X[:50], np.float32)
    C = J.prepare(X[:50], np.float32)
    assert C.values.dtype == np.uint8 and C.dtype == np.float32
    assert J._band_cuts(params, C).shape[0] == (0 if JIT_DISABLED else 2)   # CSR: in 3 bands
    ld, gd = J.loss_and_grads(params, Xf, y[:50])
    lc, gc = J.loss_and_grads(params, C, y[:50])
    assert ld == lc
    for a, b in zip(gd.arrays(), gc.arrays()):
        assert np.array_equal(a, b)
    assert np.array_equal(J.predict_proba(params, Xf), J.predict_proba(params, C))


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [784, 37, 5])
def test_to_csr_is_numpys_nonzero(mnist_train, dtype, n_cols):
    """to_csr against a compression built with NumPy, entry by entry: real images, an all-zero
    row, a row with no zeros, NaN and inf (kept), -0.0 (dropped, as 0.0), a row's last column;
    widths that are (784 = 49 * 16) and are not (37, 5) a multiple of the 16 columns that
    _fill_csr compresses per step."""
    X = mnist_train[0][:40, :n_cols].astype(dtype)
    if dtype != np.uint8:
        X /= dtype(255)
        X[2, 1], X[2, 3], X[2, -1], X[3, 2] = np.nan, np.inf, -np.inf, -0.0
    X[0] = 0
    X[1] = np.arange(1, n_cols + 1) % 250 + 1
    X[4, -1] = 7
    C = J.to_csr(X)
    rows, cols = np.nonzero(X)                      # row-major order: a row's columns sorted
    assert C.indices.dtype == np.uint16 and C.values.dtype == X.dtype and C.n_cols == n_cols
    assert np.array_equal(C.indptr, np.r_[0, np.cumsum(np.bincount(rows, minlength=len(X)))])
    assert np.array_equal(C.indices, cols)
    assert np.array_equal(C.values, X[rows, cols], equal_nan=dtype != np.uint8)


@pytest.mark.small
@pytest.mark.parametrize("X, dtype, msg", [
    (np.ones((2, 3), np.int32), None, "X must hold uint8 pixels or float32/float64 values; got int32"),
    (np.ones((2, 3), bool), None, "got bool"),
    (np.ones((2, 3), np.float16), None, "got float16"),
    (np.ones((2, 3), np.uint8), np.int64, "dtype must be float32 or float64; got int64"),
])
def test_to_csr_rejects_other_dtypes(X, dtype, msg):
    with pytest.raises(TypeError, match=msg):
        J.to_csr(X, dtype)


def _hand_made(C, **change):
    """A CSR built field by field from C's (copies, so that it is not the one to_csr made),
    with some fields changed."""
    fields = dict(indptr=C.indptr.copy(), indices=C.indices.copy(), values=C.values.copy(),
                  lut=C.lut.copy(), n_cols=C.n_cols)
    fields.update(change)
    return J.CSR(**fields)


def _swapped(a, i, j):
    a = a.copy()
    a[i], a[j] = a[j], a[i]
    return a


@pytest.mark.small
@pytest.mark.parametrize("change, error, msg", [
    # each of these read or wrote outside the arrays before (a column past n_cols crashed Python)
    (lambda C: dict(indices=np.where(np.arange(C.indices.size) == 5, 60000, C.indices)
                    .astype(np.uint16)), ValueError,
     r"CSR indices must be below n_cols \(784\); got 60000 at entry 5 \(row 0\)"),
    (lambda C: dict(indptr=np.r_[C.indptr[:-1], C.indptr[-1] + 1]), ValueError,
     r"CSR indptr must end at the number of entries \(\d+\); got \d+"),
    (lambda C: dict(indptr=_swapped(C.indptr, 3, 4)), ValueError,
     r"CSR indptr must not decrease; got indptr\[4\] = \d+ after indptr\[3\] = \d+"),
    (lambda C: dict(indptr=C.indptr + 1), ValueError, "CSR indptr must start at 0; got 1"),
    (lambda C: dict(indices=_swapped(C.indices, 5, 6)), ValueError,
     r"CSR columns must increase within each row; row 0 has column \d+ after \d+ \(entry 6\)"),
    (lambda C: dict(indices=np.r_[C.indices[:6], C.indices[5], C.indices[7:]].astype(np.uint16)),
     ValueError, r"CSR columns must increase within each row; row 0"),     # a repeated column
    (lambda C: dict(values=C.values[:-1]), ValueError, "CSR values must hold one value per entry"),
    (lambda C: dict(indices=C.indices.astype(np.int32)), TypeError,
     r"CSR indices must be a C-contiguous 1-D uint16 array; got int32 array"),
    (lambda C: dict(indices=np.repeat(C.indices, 2)[::2]), TypeError,
     "got non-contiguous uint16 array"),
    (lambda C: dict(indptr=C.indptr.astype(np.int32)), TypeError, "CSR indptr must be a"),
    (lambda C: dict(values=C.values.astype(np.int16)), TypeError,
     "CSR values must be uint8 pixels or float32/float64 values; got int16"),
    (lambda C: dict(lut=C.lut[:10]), TypeError,
     r"CSR lut must be float32 or float64 of shape \(256,\) for uint8 values"),
    (lambda C: dict(lut=list(C.lut)), TypeError, "CSR lut must be a C-contiguous 1-D array; got list"),
    (lambda C: dict(n_cols=784.0), ValueError, r"CSR n_cols must be an integer in 1..65535; got 784.0"),
    (lambda C: dict(n_cols=True), ValueError, "got True"),
])
def test_hand_made_csr_is_checked_at_the_boundary(mnist_train, change, error, msg):
    """The kernels do no bounds checks, so a CSR that to_csr did not make is checked when a
    function first receives it: every public function that takes X, before any kernel runs."""
    p = init_params(dtype=np.float32)
    C = J.prepare(mnist_train[0][:20], np.float32)
    bad = _hand_made(C, **change(C))
    y = mnist_train[1][:20]
    for call in (lambda: J.predict(p, bad), lambda: J.forward(p, bad),
                 lambda: J.loss_and_grads(p, bad, y),
                 lambda: J.gd_steps(p.copy(), [], bad, y, [0.1]),
                 lambda: J.sgd_epoch(p.copy(), [], bad, y, np.arange(20), 8, [0.1] * 3)):
        with pytest.raises(error, match=msg):
            call()


@pytest.mark.small
def test_hand_made_csr_that_is_well_formed_works(mnist_train):
    """A correct CSR built by hand (here with NumPy, from the images) gives what to_csr's gives,
    and so does one from CSR._replace (a NamedTuple method that len(), the row count, broke)."""
    X = mnist_train[0][:20]
    p = init_params(dtype=np.float32)
    rows, cols = np.nonzero(X)
    mine = J.CSR(np.r_[0, np.cumsum(np.bincount(rows, minlength=len(X)))].astype(np.int64),
                 cols.astype(np.uint16), X[rows, cols], np.arange(256, dtype=np.float32) / 255, 784)
    C = J.prepare(X, np.float32)
    assert np.array_equal(J.predict_proba(p, mine), J.predict_proba(p, C))
    again = C._replace(values=C.values.copy())
    assert isinstance(again, J.CSR) and len(again) == 20 and again.indptr is C.indptr
    assert np.array_equal(J.predict_proba(p, again), J.predict_proba(p, C))
    assert J._checked_entry(again) is not None and J._checked_entry(C) is not None  # both known
    bad = C._replace(indices=np.where(C.indices == C.indices[0], 900, C.indices).astype(np.uint16))
    with pytest.raises(ValueError, match="CSR indices must be below n_cols"):   # shares indptr
        J.predict(p, bad)
    with pytest.raises(TypeError, match="a CSR has 5 fields"):
        J.CSR._make([C.indptr])
    import gc
    known = len(J._CHECKED_CSRS)
    del C, again, bad, mine
    gc.collect()
    assert len(J._CHECKED_CSRS) == known - 2      # forgotten with their row pointers


@pytest.mark.small
def test_predict_rejects_a_float_csr_with_nan(mnist_train):
    """predict needs finite inputs (as for dense X); a float CSR can hold NaN (to_csr keeps it)."""
    X = mnist_train[0][:20].astype(np.float32) / np.float32(255)
    X[3, 300] = np.nan
    C = J.to_csr(X)
    p = init_params(dtype=np.float32)
    for f in (J.predict, J.predict_proba):
        with pytest.raises(ValueError, match="X must be finite; got nan at row 3, column 300"):
            f(p, C)


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_bands_change_no_bit(mnist_train, dtype):
    """On a CSR the forward kernels add each row's first-layer terms band by band (_band_cuts,
    cached with the CSR); on dense X in one run. Every output is the same bits either way.
    (The uint8 CSR of prepare, with the training kernels: test_csr_input_equals_dense_input.)"""
    import gc
    X = mnist_train[0][:300]
    params = init_params(dtype=dtype)
    Xf = X.astype(dtype) / dtype(255)
    C = J.to_csr(Xf)     # float values: the kernels the dense input compiles (uint8: see above)
    before = len(J._CSR_CACHE)
    cuts = J._band_cuts(params, C)
    if JIT_DISABLED:                  # no IR row loop without the JIT: no bands
        assert cuts.shape == (0, len(C))
        return
    assert cuts.shape == (2 if dtype == np.float32 else 5, len(C))    # 3 or 6 bands
    assert J._band_cuts(params, C) is cuts and len(J._CSR_CACHE) == before + 1
    bounds = np.vstack([C.indptr[:-1], cuts, C.indptr[1:]])
    assert np.all(np.diff(bounds, axis=0) >= 0)                      # bands in order in each row
    assert np.all(np.diff(bounds, axis=0).max(axis=1) > 0)           # none empty everywhere
    for k in range(len(bounds) - 1):                                 # band k: pixels in one range
        band = np.concatenate([C.indices[a:b] for a, b in zip(bounds[k], bounds[k + 1])])
        later = np.concatenate([C.indices[a:b] for a, b in zip(bounds[k + 1], bounds[-1])])
        assert band.size == 0 or later.size == 0 or band.max() < later.min()
    for a, b in zip(J.forward(params, C)[1:], J.forward(params, Xf)[1:]):
        assert np.array_equal(a, b)
    assert np.array_equal(J.predict_proba(params, C), J.predict_proba(params, Xf))
    assert np.array_equal(J.predict(params, C), J.predict(params, Xf))
    del C, cuts
    gc.collect()
    assert len(J._CSR_CACHE) == before


# ----------------------------------------------------------------------------------------------
# training: the same trajectory on both backends


OPTS = {"gd": 0.1, "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 1e-3}


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", sorted(OPTS))
def test_training_trajectories_match(mnist_train, dtype, optimizer):
    X, y = mnist_train
    X, y = X[:3000], y[:3000].astype(np.int64)
    lr = OPTS[optimizer]
    hyper = dict(weight_decay=1e-4, momentum=0.9)
    p0 = init_params((784, 72, 36, 10), "he", 7, dtype)
    pr, pj = p0.copy(), p0.copy()
    sr, sj = R.init_state(pr, optimizer), R.init_state(pj, optimizer)
    lrs = np.full(4, lr)
    lr_ref = R.gd_steps(pr, sr, R.prepare(X, dtype), y, lrs, optimizer=optimizer, **hyper)
    lr_jit = J.gd_steps(pj, sj, J.prepare(X, dtype), y, lrs, optimizer=optimizer, **hyper)
    perm = np.random.default_rng(0).permutation(len(X))
    steps = -(-len(X) // 128)
    lrs = np.full(steps, lr)
    le_ref = R.sgd_epoch(pr, sr, R.prepare(X, dtype), y, perm, 128, lrs, t0=4, optimizer=optimizer, **hyper)
    le_jit = J.sgd_epoch(pj, sj, J.prepare(X, dtype), y, perm, 128, lrs, t0=4, optimizer=optimizer, **hyper)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(lr_jit, lr_ref, rtol=tol, err_msg=f"gd losses {optimizer}")
    np.testing.assert_allclose(le_jit, le_ref, rtol=tol * 10, err_msg=f"sgd losses {optimizer}")
    for k, (a, b) in enumerate(zip(pj.arrays(), pr.arrays())):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * 100 * scale,
                                   err_msg=f"params[{k}] after training, {optimizer}")


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
@pytest.mark.parametrize("batch", [1, 100, J.SPLIT_MAX_BATCH, J.SPLIT_MAX_BATCH + 1, 1000])
def test_sgd_epoch_both_step_kernels_with_shifts(mnist_train, batch):
    """Mini-batches up to SPLIT_MAX_BATCH rows take the pixel-split step, larger ones the slot
    step: both must follow the reference, augmentation shifts included (batch 1: one row, so
    one half of the split step gets no rows at all)."""
    X, y = mnist_train
    n = 40 if batch == 1 else 2000
    X, y = X[:n], y[:n].astype(np.int64)
    p0 = init_params((784, 72, 36, 10), "he", 11, np.float64)
    pr, pj = p0.copy(), p0.copy()
    sr, sj = R.init_state(pr, "nesterov"), R.init_state(pj, "nesterov")
    rng = np.random.default_rng(5)
    perm = rng.permutation(n)
    shifts = rng.integers(-3, 4, size=(n, 2))
    lrs = np.full(-(-n // batch), 0.05)
    le_ref = R.sgd_epoch(pr, sr, R.prepare(X, np.float64), y, perm, batch, lrs,
                         optimizer="nesterov", shifts=shifts, weight_decay=1e-4)
    le_jit = J.sgd_epoch(pj, sj, J.prepare(X, np.float64), y, perm, batch, lrs,
                         optimizer="nesterov", shifts=shifts, weight_decay=1e-4)
    np.testing.assert_allclose(le_jit, le_ref, rtol=1e-9)
    for a, b in zip(pj.arrays() + sj, pr.arrays() + sr):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())


@pytest.mark.small
@pytest.mark.parametrize("split", [True, False])
def test_small_training_loops_both_step_kernels(mnist_train, monkeypatch, split):
    """A few full-batch and mini-batch steps on 12 real images, small enough to run the kernel
    bodies as plain Python (the CI pass with NUMBA_DISABLE_JIT=1): the pixel-split mini-batch
    step, and the slot step (forced by setting SPLIT_MAX_BATCH to 0)."""
    if not split:
        monkeypatch.setattr(J, "SPLIT_MAX_BATCH", 0)
    X8, y = mnist_train[0][30:42], mnist_train[1][30:42]       # uint8, as training passes them
    Xr, Xj = R.prepare(X8, np.float64), J.prepare(X8, np.float64)
    p0 = init_params((784, 72, 36, 10), "he", 2, np.float64)
    pr, pj = p0.copy(), p0.copy()
    sr, sj = R.init_state(pr, "adam"), R.init_state(pj, "adam")
    hyper = dict(optimizer="adam", weight_decay=1e-3)
    lg_ref = R.gd_steps(pr, sr, Xr, y, [1e-3, 2e-3], **hyper)
    lg_jit = J.gd_steps(pj, sj, Xj, y, [1e-3, 2e-3], **hyper)
    perm = np.random.default_rng(2).permutation(12)
    shifts = np.random.default_rng(3).integers(-2, 3, size=(12, 2))
    le_ref = R.sgd_epoch(pr, sr, Xr, y, perm, 5, [1e-3] * 3, t0=2, shifts=shifts, **hyper)
    le_jit = J.sgd_epoch(pj, sj, Xj, y, perm, 5, [1e-3] * 3, t0=2, shifts=shifts, **hyper)
    np.testing.assert_allclose(lg_jit, lg_ref, rtol=1e-10)
    np.testing.assert_allclose(le_jit, le_ref, rtol=1e-10)
    for a, b in zip(pj.arrays() + sj, pr.arrays() + sr):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
def test_same_seed_bitwise_identical_and_thread_independent(mnist_train):
    X, y = mnist_train
    C = J.prepare(X[:20000], np.float32)
    yy = y[:20000].astype(np.int64)
    perm = np.random.default_rng(1).permutation(20000)
    runs = []
    threads = [numba.get_num_threads(), numba.get_num_threads(), 1]
    for t in threads:
        numba.set_num_threads(t)
        try:
            p = init_params(seed=3, dtype=np.float32)
            st_ = R.init_state(p, "nesterov")
            J.gd_steps(p, st_, C, yy, np.full(3, 0.1), optimizer="nesterov")
            J.sgd_epoch(p, st_, C, yy, perm, 128, np.full(157, 0.05), t0=3, optimizer="nesterov")
        finally:
            numba.set_num_threads(threads[0])
        runs.append(p)
    for other in runs[1:]:
        for a, b in zip(runs[0].arrays(), other.arrays()):
            assert np.array_equal(a, b)


@pytest.mark.skipif(JIT_DISABLED, reason="needs two compiled threads")
def test_split_epoch_same_bits_whichever_thread_runs_each_task(mnist_train, monkeypatch):
    """The split step's tasks go to whichever thread claims them. With no patience, each thread
    takes any free task at once, so a half's tasks change threads from step to step; the epoch
    must still give the bits of the usual schedule (each half on its own thread) and of one
    thread running every task."""
    X, y = mnist_train
    C = J.prepare(X[:6000], np.float32)
    yy = y[:6000].astype(np.int64)
    perm = np.random.default_rng(4).permutation(6000)
    p0 = init_params(seed=5, dtype=np.float32)
    runs = []
    threads = numba.get_num_threads()
    for patience, nthreads in ((J.PATIENCE, threads), (0, threads), (0, 1)):
        monkeypatch.setattr(J, "PATIENCE", patience)
        numba.set_num_threads(nthreads)
        try:
            p = p0.copy()
            s = J.init_state(p, "adam")
            losses = J.sgd_epoch(p, s, C, yy, perm, 100, np.full(60, 1e-3), optimizer="adam")
        finally:
            numba.set_num_threads(threads)
        runs.append((losses, p.arrays() + s))
    for losses, arrays in runs[1:]:
        assert np.array_equal(losses, runs[0][0])
        for a, b in zip(arrays, runs[0][1]):
            assert np.array_equal(a, b)


@pytest.mark.small
def test_update_twin():
    p = init_params((784, 16, 10), "he", 0, np.float64)
    g = p.copy()
    for opt in ("sgd", "momentum", "nesterov", "adam"):
        pr, pj = p.copy(), p.copy()
        sr, sj = R.init_state(pr, opt), R.init_state(pj, opt)
        for t in (1, 2, 3):
            R.update(pr, g, sr, 0.01, t, opt, weight_decay=0.01)
            J.update(pj, g, sj, 0.01, t, opt, weight_decay=0.01)
        for a, b in zip(pj.arrays(), pr.arrays()):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, err_msg=opt)


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_loop_steps_are_the_public_update_bitwise(mnist_train, dtype):
    """A full-batch step of the compiled loop is exactly loss_and_grads then update: the same
    gradient (slots summed in the same order) and the same rounding of the rule. This fails if
    the loop's update is compiled with fast-math (contracted multiply-adds), which Numba does
    silently to a kernel without an explicit fastmath option when a fast-math kernel calls it."""
    X8, y = mnist_train[0][:200], mnist_train[1][:200].astype(np.int64)   # 3 slots of rows
    C = J.prepare(X8, dtype)
    p0 = init_params((784, 72, 36, 10), "he", 4, dtype)
    for opt in ("sgd", "momentum", "nesterov", "adam"):
        pa, pb = p0.copy(), p0.copy()
        sa, sb = J.init_state(pa, opt), J.init_state(pb, opt)
        for t, lr in enumerate((0.05, 0.02), start=1):
            J.gd_steps(pa, sa, C, y, [lr], t0=t - 1, optimizer=opt, weight_decay=1e-3)
            _, g = J.loss_and_grads(pb, C, y)
            J.update(pb, g, sb, lr, t, opt, weight_decay=1e-3)
        for k, (a, b) in enumerate(zip(pa.arrays() + sa, pb.arrays() + sb)):
            assert np.array_equal(a, b), f"{opt}: array {k} differs by {np.abs(a - b).max()}"


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_transposes_are_exact(dtype):
    """The transposes between row-major and feature-major blocks (8 x 8 register tiles plus
    element loops for the edges) move every element, touch nothing else, and the summed one
    adds in the written order, (a + b) + bias, bit for bit as NumPy does."""
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 61, 64, 128):
        for H in (3, 10, 16, 36, 72):
            a, b = rng.standard_normal((2, 200, H)).astype(dtype)
            bias = rng.standard_normal(H).astype(dtype)
            Z = np.zeros((H, 128), dtype)
            J._to_features(Z, a, 5, n)
            assert np.array_equal(Z[:, :n], a[5:5 + n].T) and not Z[:, n:].any(), (n, H)
            J._to_features_sum(Z, a, b, bias, 5, n)
            assert np.array_equal(Z[:, :n], ((a[5:5 + n] + b[5:5 + n]) + bias).T), (n, H)
            D = np.zeros((300, H), dtype)
            J._to_rows(D, 9, Z, n)
            assert np.array_equal(D[9:9 + n], Z[:, :n].T), (n, H)
            assert not D[:9].any() and not D[9 + n:].any(), (n, H)


@pytest.mark.small
def test_split_index_is_made_once_per_csr_and_forgotten_with_it(mnist_train):
    """The split step's index of a dataset (split pixel, each row's cut) is cached per CSR: the
    same arrays on the next epoch, equal to a fresh computation, and dropped when the CSR dies."""
    import gc
    p = init_params(dtype=np.float32)
    before = len(J._CSR_CACHE)
    C = J.prepare(mnist_train[0][:300], np.float32)
    jsplit, cut = J._split_index(p, C)
    assert J._split_index(p, C)[1] is cut and len(J._CSR_CACHE) == before + 1
    assert jsplit == J._split_point(p, C)
    assert np.array_equal(cut, J._row_cuts(C.indptr, C.indices, np.array([jsplit]))[0])
    starts, ends = C.indptr[:-1], C.indptr[1:]
    assert np.all((starts <= cut) & (cut <= ends))
    for i in range(len(C)):
        row = C.indices[starts[i]:ends[i]]
        assert np.all(row[:cut[i] - starts[i]] < jsplit) and np.all(row[cut[i] - starts[i]:] >= jsplit)
    other = J.prepare(mnist_train[0][:300], np.float32)       # equal data, another CSR
    assert J._split_index(p, other)[1] is not cut
    del C, other, starts, ends, row       # (views keep the CSR's arrays alive)
    gc.collect()
    assert len(J._CSR_CACHE) == before


@pytest.mark.small
def test_argmax_rows_is_numpys_argmax():
    """predict's compiled argmax: NumPy's answer on ties (the first) and NaN (the first NaN)."""
    rng = np.random.default_rng(0)
    P = rng.random((64, 10)).astype(np.float32)
    P[1] = 0.5
    P[2, [3, 7]] = 2.0
    P[3, 4] = np.nan
    P[4, [0, 9]] = np.nan
    P[5, 9] = np.nan
    out = np.full(len(P), -1, dtype=np.int64)
    J._argmax_rows(P, 0, len(P), out)
    assert np.array_equal(out, P.argmax(axis=1))


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_predict_is_the_argmax_of_predict_proba_on_near_ties(mnist_train, dtype):
    """predict reads the class from the logits where the largest is clear of the rest, and from
    the probabilities elsewhere: the answer is always predict_proba's first maximum. Rows here
    have equal logits, logits apart by 1e-9 (whose exps are equal: the probabilities tie, so the
    first wins, not the largest logit), by one unit in the last place, by a little less and a little
    more than LOGIT_GAP, a mix of clear and near ones, and +inf logits (overflowing weights)."""
    X = mnist_train[0][:130].astype(dtype) / dtype(255)      # two blocks of rows
    dt = np.dtype(dtype).type
    base = init_params((784, 72, 36, 10), "he", 0, dtype)
    gap = dt(J.LOGIT_GAP)
    one = dt(1)
    cases = {"equal": np.zeros(10, dtype),
             "apart, equal probabilities": np.array([0, 1e-9, 0, 0, 0, 0, 0, 0, 0, 0], dtype),
             "one ulp": np.array([0, np.spacing(one), 0, 0, 0, 0, 0, 0, 0, 0], dtype) + one,
             "under gap": np.array([0, 0, 0, gap * dt(0.99), 0, 0, 0, 0, 0, 0], dtype),
             "over gap": np.array([0, 0, 0, 0, 0, gap * dt(1.01), 0, 0, 0, 0], dtype)}
    for name, b in cases.items():          # last layer weights 0: every row's logits are b
        p = base.copy()
        p.weights[-1][:] = 0
        p.biases[-1][:] = b
        want = J.predict_proba(p, X).argmax(axis=1)
        assert np.array_equal(J.predict(p, X), want), name
    p = base.copy()                          # mixed: the best two within the gap in ~1/4 of rows
    p.weights[-1][:] *= dt(1e-4)
    Z = J.forward(p, X)[-1]
    top2 = np.sort(Z, axis=1)[:, -2:]
    near = (top2[:, 1] - top2[:, 0]) < J.LOGIT_GAP
    assert 0.1 < near.mean() < 0.9
    got, want = J.predict(p, X), J.predict_proba(p, X).argmax(axis=1)
    assert np.array_equal(got, want) and len(np.unique(got)) > 1
    p = base.copy()                          # overflow: +inf logits, so NaN probabilities
    p.weights[-1][:] = dt(np.finfo(dtype).max / 2)
    p.weights[-1][:, 7] = dt(1)
    with np.errstate(over="ignore", invalid="ignore"):   # (as plain Python, without the JIT)
        P = J.predict_proba(p, X)
        assert np.isnan(P).any()
        assert np.array_equal(J.predict(p, X), P.argmax(axis=1))


@pytest.mark.small
@pytest.mark.parametrize("X, y, exc, msg", [
    (np.zeros((2, 28, 28), np.float32), [0, 1], ValueError, r"X must have shape \(n, 784\)"),
    (np.zeros((2, 784)), [0, 1], TypeError, "X must have the params' dtype float32; got float64"),
    (np.zeros((0, 784), np.float32), [], ValueError, "n >= 1"),
    (np.zeros((2, 784), np.float32), [0, 10], ValueError, "labels must be in 0..9; got 10 at row 1"),
    (np.zeros((2, 784), np.float32), [-1, 0], ValueError, "labels must be in 0..9; got -1 at row 0"),
])
def test_jit_rejects_bad_input(X, y, exc, msg):
    params = init_params(dtype=np.float32)
    with pytest.raises(exc, match=msg):
        J.loss_and_grads(params, X, np.asarray(y, dtype=np.int64))


@pytest.mark.small
def test_non_contiguous_input_is_accepted():
    rng = np.random.default_rng(0)
    base = rng.random((10, 1568))
    X = base[:, ::2]                       # a strided view
    assert not X.flags.c_contiguous
    params = init_params(dtype=np.float64)
    compare_all(params, X, rng.integers(0, 10, 10), "strided X")


@pytest.mark.small
@pytest.mark.parametrize("backend", [R, J])
def test_predict_rejects_non_finite_input(backend):
    params = init_params(dtype=np.float64)
    X = np.zeros((3, 784))
    X[2, 5] = np.nan
    with pytest.raises(ValueError, match="X must be finite; got nan at row 2, column 5"):
        backend.predict(params, X)


@pytest.mark.small
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_names_the_first_non_finite_value_like_the_reference(bad, dtype):
    """The numba backend finds non-finite values while compressing dense X (one pass); it must
    name the same first one, in row-major order, as the reference's separate check, and the
    same X made finite again must predict normally."""
    params = init_params(dtype=dtype)
    X = np.zeros((40, 784), dtype=dtype)
    X[:, 300:320] = 0.5
    X[31, 2] = bad
    X[17, 700] = bad
    X[17, 650] = 0.25
    messages = []
    for backend in (R, J):
        for f in (backend.predict, backend.predict_proba):
            with pytest.raises(ValueError) as err:
                f(params, X)
            messages.append(str(err.value))
    assert set(messages) == {f"X must be finite; got {dtype(bad)} at row 17, column 700"}
    X[31, 2] = X[17, 700] = 0
    np.testing.assert_array_equal(J.predict(params, X), R.predict(params, X))


@pytest.mark.small
@pytest.mark.parametrize("backend", [R, J])
def test_training_loops_reject_bad_rows_state_and_batch(backend):
    params = init_params(dtype=np.float64)
    X = backend.prepare(np.zeros((10, 784), np.uint8), np.float64)
    y = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match=r"perm must hold row numbers in 0..9; got 0..10"):
        backend.sgd_epoch(params, [], X, y, np.arange(11), 5, np.ones(3))
    with pytest.raises(ValueError, match="batch size must be an integer >= 1; got 0"):
        backend.sgd_epoch(params, [], X, y, np.arange(10), 0, np.ones(1))
    with pytest.raises(ValueError, match=r"lrs must hold one learning rate per step \(2\); got 3"):
        backend.sgd_epoch(params, [], X, y, np.arange(10), 5, np.ones(3))
    if backend is J:
        with pytest.raises(ValueError, match="optimizer state must hold 6 arrays"):
            J.gd_steps(params, [], X, y, [0.1], optimizer="momentum")
