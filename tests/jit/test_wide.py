"""Inputs of more than 65,536 columns: uint32 column indices (csr._index_dtype), the same kernels
compiled once more for them, and the same results as the reference.

The training tests compile that second kernel set (a minute or more on a cold cache), so they
are in the slow run; marked ``small`` too, so that CI also runs their bodies without the JIT.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from fastmlp import MLPClassifier, init_params, jit as J, reference as R
from fastmlp.jit import csr, sparse

N_COLS = 70_000


def _wide(n, dtype, seed=0):
    """n rows of N_COLS columns, about 30 non-zeros a row, with entries in the first and last
    columns and on both sides of 65,536 (where a uint16 index would wrap)."""
    rng = np.random.default_rng(seed)
    A = sp.random(n, N_COLS, density=30 / N_COLS, format="lil", dtype=dtype, random_state=rng)
    for i, j in enumerate((0, 65_535, 65_536, 65_537, N_COLS - 1)):
        A[i % n, j] = 1.0 + j / N_COLS
        A[(i + 3) % n, j] = -0.5
    return sp.csr_matrix(A)


def _epochs_as_reference(monkeypatch, params, C, X, y, perm, tol=dict(rtol=1e-9, atol=1e-12)):
    """An Adam epoch of the rows perm in the split step (batches of 16), then in the slot step
    (batches of 48, with SPLIT_MAX_BATCH patched to 8): the reference's weights."""
    for batch, split_max in ((16, 512), (48, 8)):
        monkeypatch.setattr(J._options, "SPLIT_MAX_BATCH", split_max)
        a, b = params.copy(), params.copy()
        sa, sb = R.init_state(a, "adam"), R.init_state(b, "adam")
        lrs = np.full(len(perm) // batch, 1e-3)
        J.sgd_epoch(a, sa, C, y, perm, batch, lrs, optimizer="adam")
        R.sgd_epoch(b, sb, X, y, perm, batch, lrs, optimizer="adam")
        for u, v in zip(a.weights + a.biases, b.weights + b.biases):
            np.testing.assert_allclose(u, v, **tol)


@pytest.mark.small
def test_index_dtype_follows_the_number_of_columns():
    """uint16 indices up to 65,536 columns, uint32 beyond, from to_csr (dense X, both layouts)
    and from_scipy alike, with the entries scipy finds."""
    assert csr._index_dtype(784) == np.uint16 and csr._index_dtype(65_536) == np.uint16
    assert csr._index_dtype(65_537) == np.uint32
    A = _wide(6, np.float32)
    X = A.toarray()
    for C in (J.to_csr(X), J.from_scipy(A, np.float32)):
        assert C.indices.dtype == np.uint32 and C.shape == (6, N_COLS)
        assert np.array_equal(C.indptr, A.indptr) and np.array_equal(C.indices, A.indices)
        assert np.array_equal(C.values, A.data)
    full = J.to_csr(X, keep_zeros=True)
    assert full.indices.dtype == np.uint32 and full.indices[-1] == N_COLS - 1
    assert np.array_equal(full.values, X.ravel())
    edge = J.to_csr(np.eye(3, 65_536, 65_533, dtype=np.float32))
    assert edge.indices.dtype == np.uint16 and list(edge.indices) == [65_533, 65_534, 65_535]


@pytest.mark.small
def test_hand_made_wide_csr_needs_uint32_indices():
    C = J.from_scipy(_wide(6, np.float32), np.float32)
    params = init_params((N_COLS, 4, 3), dtype=np.float32)
    narrow = C._replace(indices=(C.indices % 65_536).astype(np.uint16))
    with pytest.raises(TypeError, match=r"CSR indices must be a C-contiguous 1-D uint32 array "
                                        r"\(for 70000 columns\); got uint16 array"):
        J.predict(params, narrow)
    with pytest.raises(TypeError, match=r"uint16 array \(for 784 columns\); got uint32"):
        J.predict(init_params(dtype=np.float32),
                  J.to_csr(np.ones((2, 784), np.float32))._replace(
                      indices=np.tile(np.arange(784, dtype=np.uint32), 2)))
    with pytest.raises(ValueError, match=r"CSR n_cols must be an integer in 1..4294967296"):
        J.predict(params, C._replace(n_cols=1 << 33))


@pytest.mark.slow
@pytest.mark.small
def test_wide_input_trains_as_the_reference(monkeypatch):
    """Forward, loss_and_grads, the full-batch loop, the split step (small batches) and the
    slot step (large ones) on 70,000 columns give the reference's numbers; the weight rows past
    65,535 get their gradients (a wrapped index would put them on rows 0, 1, ...)."""
    dt = np.float64
    A = _wide(96, dt)
    X = A.toarray()
    C = J.from_scipy(A, dt)
    y = np.arange(96) % 5
    params = init_params((N_COLS, 12, 5), dtype=dt)
    tol = dict(rtol=1e-9, atol=1e-12)
    for a, b in zip(J.forward(params, C)[1:], R.forward(params, X)[1:]):
        np.testing.assert_allclose(a, b, **tol)
    (la, ga), (lb, gb) = J.loss_and_grads(params, C, y), R.loss_and_grads(params, X, y)
    np.testing.assert_allclose(la, lb, **tol)
    for a, b in zip(ga.weights + ga.biases, gb.weights + gb.biases):
        np.testing.assert_allclose(a, b, **tol)
    touched = np.flatnonzero(np.abs(ga.weights[0]).sum(axis=1))
    assert touched.max() >= 65_536 and set(touched) <= set(A.indices)
    np.testing.assert_array_equal(J.predict(params, C), R.predict(params, X))

    lrs = [0.05] * 3
    a, b = params.copy(), params.copy()
    J.gd_steps(a, [], C, y, lrs)
    R.gd_steps(b, [], X, y, lrs)
    for u, v in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_allclose(u, v, **tol)
    _epochs_as_reference(monkeypatch, params, C, X, y, np.random.default_rng(1).permutation(96))


@pytest.mark.slow
def test_wide_input_gradient_by_pixel_as_the_reference(monkeypatch):
    """The first layer's gradient by pixel (forced: PIXEL_MIN_ENTRIES 0, at width 14 float64,
    which ends in a partial vector) on 70,000 columns, uint32 indices: loss_and_grads, the
    full-batch loop, the split step and the slot step give the reference's numbers."""
    monkeypatch.setattr(J._options, "PIXEL_MIN_ENTRIES", 0)
    dt = np.float64
    A = _wide(96, dt, seed=2)
    X = A.toarray()
    C = J.from_scipy(A, dt)
    y = np.arange(96) % 5
    params = init_params((N_COLS, 14, 5), dtype=dt)
    assert sparse._by_pixel_pays(params, 16, C)
    tol = dict(rtol=1e-9, atol=1e-12)
    (la, ga), (lb, gb) = J.loss_and_grads(params, C, y), R.loss_and_grads(params, X, y)
    np.testing.assert_allclose(la, lb, **tol)
    for a, b in zip(ga.weights + ga.biases, gb.weights + gb.biases):
        np.testing.assert_allclose(a, b, **tol)
    a, b = params.copy(), params.copy()
    J.gd_steps(a, [], C, y, [0.05] * 2)
    R.gd_steps(b, [], X, y, [0.05] * 2)
    for u, v in zip(a.weights + a.biases, b.weights + b.biases):
        np.testing.assert_allclose(u, v, **tol)
    _epochs_as_reference(monkeypatch, params, C, X, y, np.random.default_rng(3).permutation(96))


@pytest.mark.slow
def test_estimator_takes_wide_sparse_input():
    """MLPClassifier on a scipy CSR of 70,000 features: the numba backend fits what the
    reference backend fits, and predicts on new rows."""
    A = _wide(120, np.float64)
    y = np.asarray(A[:, :40].sum(axis=1)).ravel() > 0
    kw = dict(hidden_layer_sizes=(8,), max_iter=3, batch_size=32, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(**kw).fit(A, y)
        b = MLPClassifier(backend="reference", **kw).fit(A, y)
    assert a.n_features_in_ == N_COLS and a.coefs_[0].shape == (N_COLS, 8)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-9)
    new = _wide(10, np.float64, seed=1)
    np.testing.assert_allclose(a.predict_proba(new), b.predict_proba(new), atol=1e-9)
