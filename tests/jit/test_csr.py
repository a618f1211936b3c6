"""The CSR: compression against NumPy, and the checks of a CSR made by hand.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import numpy as np
import pytest

from fastmlp import init_params, jit as J
from fastmlp.jit import csr



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
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_to_csr_rows_in_groups(dtype):
    """Many rows, in several of _fill_csr's row groups (each on one thread, whose vector chunks
    may write past a row's own entries into the next row's): rows from empty to full, many of
    them with fewer entries than a chunk, so that a chunk's extra writes reach several rows on;
    every entry against NumPy's."""
    rng = np.random.default_rng(7)
    n = 3 * J.ROW_GROUP + 5
    density = rng.choice([0.0, 0.02, 0.1, 0.5, 1.0], size=(n, 1))
    X = (rng.random((n, 53)) < density) * rng.integers(1, 256, size=(n, 53))
    X = X.astype(dtype)
    C = J.to_csr(X)
    rows, cols = np.nonzero(X)
    assert np.array_equal(C.indptr, np.r_[0, np.cumsum(np.bincount(rows, minlength=n))])
    assert np.array_equal(C.indices, cols)
    assert np.array_equal(C.values, X[rows, cols])


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
     r"CSR indices must be a C-contiguous 1-D uint16 array \(for 784 columns\); got int32 array"),
    (lambda C: dict(indices=np.repeat(C.indices, 2)[::2]), TypeError,
     "got non-contiguous uint16 array"),
    (lambda C: dict(indptr=C.indptr.astype(np.int32)), TypeError, "CSR indptr must be a"),
    (lambda C: dict(values=C.values.astype(np.int16)), TypeError,
     "CSR values must be uint8 pixels or float32/float64 values; got int16"),
    (lambda C: dict(lut=C.lut[:10]), TypeError,
     r"CSR lut must be float32 or float64 of shape \(256,\) for uint8 values"),
    (lambda C: dict(lut=list(C.lut)), TypeError, "CSR lut must be a C-contiguous 1-D array; got list"),
    (lambda C: dict(n_cols=784.0), ValueError, r"CSR n_cols must be an integer in 1..4294967296; got 784.0"),
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
    # C's arrays are read-only: known after one check; again's values are writable: checked at
    # every call (a change after a one-time check would reach kernels without bounds checks)
    assert not any(a.flags.writeable for a in C[:4])
    assert csr._checked_entry(C) is not None and csr._checked_entry(again) is None
    again.values[:] = 255
    assert not np.array_equal(J.predict_proba(p, again), J.predict_proba(p, C))
    mutable = C._replace(indices=C.indices.copy())
    J.predict(p, mutable)
    mutable.indices[5] = 60000             # after a check: a segfault if it were not checked again
    with pytest.raises(ValueError, match="CSR indices must be below n_cols"):
        J.predict(p, mutable)
    frozen = C._replace(values=C.values.copy())
    frozen.values.setflags(write=False)
    assert np.array_equal(J.predict_proba(p, frozen), J.predict_proba(p, C))
    assert csr._checked_entry(frozen) is not None
    bad = C._replace(indices=np.where(C.indices == C.indices[0], 900, C.indices).astype(np.uint16))
    with pytest.raises(ValueError, match="CSR indices must be below n_cols"):   # shares indptr
        J.predict(p, bad)
    with pytest.raises(TypeError, match="a CSR has 5 fields"):
        J.CSR._make([C.indptr])
    import gc
    known = len(csr._CHECKED_CSRS)
    del C, again, bad, mine, frozen, mutable
    gc.collect()
    assert len(csr._CHECKED_CSRS) == known - 1      # forgotten with their (shared) row pointers


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
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil"])
def test_from_scipy_is_to_csr_of_the_dense_matrix(mnist_train, fmt):
    """Any scipy.sparse format (duplicates summed, unsorted columns sorted, int64 indices) gives
    the CSR that to_csr gives for the same dense numbers; the input is not changed."""
    import scipy.sparse as sp
    X = mnist_train[0][:30].astype(np.float32) / np.float32(255)
    A = sp.coo_matrix(X)
    # every entry twice, halves of it, in reverse order: to be summed and sorted
    dup = sp.coo_matrix((np.r_[A.data / 2, A.data / 2][::-1],
                         (np.r_[A.row, A.row][::-1], np.r_[A.col, A.col][::-1])), shape=X.shape)
    B = dup.asformat(fmt)
    before = B.copy()
    C = J.from_scipy(B, np.float32)
    D = J.to_csr(X)
    for a, b, name in zip(C[:4], D[:4], ("indptr", "indices", "values", "lut")):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert (B != before).nnz == 0
    csr64 = sp.csr_matrix(X)
    csr64.indices = csr64.indices.astype(np.int64)
    assert np.array_equal(J.from_scipy(csr64, np.float64).values, X[X != 0].astype(np.float64))
    with pytest.raises(TypeError, match="scipy.sparse matrix or array"):
        J.from_scipy(X, np.float32)


@pytest.mark.small
def test_uint8_values_as_they_are(mnist_train):
    """pixels=False: uint8 values keep their value (the table maps v to v, exactly)."""
    X8 = mnist_train[0][:20]
    C = J.to_csr(X8, np.float32, pixels=False)
    assert np.array_equal(C.lut, np.arange(256, dtype=np.float32))
    p = init_params((784, 16, 10), "he", 0, np.float32)
    assert np.array_equal(J.predict_proba(p, C), J.predict_proba(p, X8.astype(np.float32)))


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_zeros_stores_every_entry(dtype):
    rng = np.random.default_rng(3)
    X = (rng.random((7, 5)) * (rng.random((7, 5)) < 0.7)).astype(dtype)
    C = J.to_csr(X, keep_zeros=True)
    assert np.array_equal(C.indptr, np.arange(0, 36, 5))
    assert np.array_equal(C.indices, np.tile(np.arange(5, dtype=np.uint16), 7))
    assert C.values.dtype == dtype and np.array_equal(C.values, X.ravel())
    assert not C.values.flags.writeable
    assert len(J.to_csr(X).values) == np.count_nonzero(X)          # the default: non-zeros only


@pytest.mark.small
def test_keep_zeros_auto_follows_the_density(monkeypatch):
    from fastmlp.jit import _options
    X = np.zeros((4, 10), np.float32)
    X[:, :6] = 1                                                     # 60% non-zero
    monkeypatch.setattr(_options, "DENSE_FROM", 0.6)
    assert len(J.to_csr(X, keep_zeros="auto").values) == 40
    monkeypatch.setattr(_options, "DENSE_FROM", 0.61)
    assert len(J.to_csr(X, keep_zeros="auto").values) == 24


@pytest.mark.small
def test_keep_zeros_rejects_bad_values():
    with pytest.raises(ValueError, match="keep_zeros must be False, True or 'auto'; got 'yes'"):
        J.to_csr(np.ones((2, 3)), keep_zeros="yes")
    with pytest.raises(TypeError, match="keep_zeros=True needs float X"):
        J.to_csr(np.ones((2, 3), np.uint8), keep_zeros=True)


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_csr_is_prepare(mnist_train, dtype):
    """The warm-up's CSR made by NumPy alone (csr._numpy_csr) holds the arrays prepare makes,
    of the same dtypes, so the kernels it compiles are the ones the run uses."""
    from fastmlp.jit.csr import _numpy_csr
    X = mnist_train[0][:7]
    for given in (X, X.astype(dtype) / dtype(255), np.zeros((2, 784), dtype)):
        a, b = _numpy_csr(given, dtype), J.prepare(given, dtype)
        for u, v, name in zip(a, b, ("indptr", "indices", "values", "lut", "n_cols")):
            assert np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(u, v), name
