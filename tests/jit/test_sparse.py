"""The sparse first layer: pixel bands change no bit.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import numpy as np
import pytest

from fastmlp import init_params, jit as J
from fastmlp.jit import csr, sparse

from support import JIT_DISABLED


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_bands_change_no_bit(mnist_train, dtype):
    """On a CSR the forward kernels add each row's first-layer terms band by band (_band_cuts,
    made on the CSR's second pass and cached with it); on dense X, and on a CSR's first pass,
    in one run. Every output is the same bits either way. (The uint8 CSR of prepare, with the
    training kernels: test_csr_input_equals_dense_input.)"""
    import gc
    X = mnist_train[0][:300]
    params = init_params(dtype=dtype)
    Xf = X.astype(dtype) / dtype(255)
    once = J.predict_proba(params, J.to_csr(Xf))                     # a first pass: no bands
    C = J.to_csr(Xf)     # float values: the kernels the dense input compiles (uint8: see above)
    before = len(csr._CSR_CACHE)
    assert sparse._band_cuts(params, C).shape == (0, len(C))         # its first pass
    cuts = sparse._band_cuts(params, C)
    if JIT_DISABLED:                  # no IR row loop without the JIT: no bands
        assert cuts.shape == (0, len(C))
        return
    assert cuts.shape == (2 if dtype == np.float32 else 5, len(C))    # 3 or 6 bands
    assert sparse._band_cuts(params, C) is cuts and len(csr._CSR_CACHE) == before + 2
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
    assert np.array_equal(J.predict_proba(params, C), once)
    assert np.array_equal(J.predict(params, C), J.predict(params, Xf))
    del C, cuts
    gc.collect()
    assert len(csr._CSR_CACHE) == before


@pytest.mark.small
def test_no_bands_for_rows_of_few_entries():
    """Bands only where rows hold at least MIN_BAND_ENTRIES entries a band on average (MNIST:
    about 150 a row, 3 bands for float32); a row of 20 entries would be cut into passes of a
    few entries each, which cost more than they save."""
    from fastmlp.jit import _options
    rng = np.random.default_rng(0)
    X = np.zeros((200, 784), np.float32)
    for i in range(200):
        X[i, rng.choice(784, 20, replace=False)] = rng.random(20) + 0.1
    params = init_params(dtype=np.float32)
    C = J.to_csr(X)
    assert sparse._band_cuts(params, C).shape == (0, 200)
    if not JIT_DISABLED:                         # the same rows, denser: bands again
        dense = J.to_csr(np.where(rng.random((200, 784)) < 0.25, 1.0, X).astype(np.float32))
        assert len(dense.values) >= _options.MIN_BAND_ENTRIES * 3 * 200
        sparse._band_cuts(params, dense)                             # (its first pass)
        assert sparse._band_cuts(params, dense).shape == (2, 200)
    assert np.array_equal(J.predict_proba(params, C), J.predict_proba(params, X))


def _full_and_sparse(dtype, n, n_in, seed):
    """Dense float data with 10% zeros, as a full CSR (zeros kept: the dense tiles) and as the
    usual one (non-zeros only: the sparse row loop)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(dtype)
    X[rng.random((n, n_in)) < 0.1] = 0
    return X, J.to_csr(X, keep_zeros=True), J.to_csr(X)


def _same(a, b):
    """Equal arrays (a zero's sign aside: a zero entry adds +0 or -0)."""
    return all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.skipif(JIT_DISABLED, reason="the dense tiles are compiled code (the plain loops "
                    "add four entries at a time, zeros included)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,n_in,H", [(37, 50, 72), (130, 63, 100), (9, 30, 5), (5, 3, 13)])
def test_dense_tiles_are_the_sparse_loops_bits(dtype, n, n_in, H, monkeypatch):
    """Blocks whose rows hold every column run dense register tiles (_codegen._ir_dense), which
    add each output's terms in the sparse row loop's order: forward, loss_and_grads, full-batch
    and slot-step training give the same bits on the full CSR as on the sparse one. Shapes
    with rows and columns that are not whole tiles (of 4) and widths with partial vectors."""
    from fastmlp.common import init_state
    from fastmlp.jit import _options
    X, A, B = _full_and_sparse(dtype, n, n_in, n)
    sizes = (n_in, H, 20, 7)
    y = np.random.default_rng(0).integers(0, 7, n)
    p = init_params(sizes, "he", 0, dtype)
    assert _same(J.forward(p, A)[1:], J.forward(p, B)[1:])
    (la, ga), (lb, gb) = J.loss_and_grads(p, A, y), J.loss_and_grads(p, B, y)
    assert la == lb and _same(ga.weights + ga.biases, gb.weights + gb.biases)
    monkeypatch.setattr(_options, "SPLIT_MAX_BATCH", 0)       # every batch size: the slot step
    trained = []
    for C in (A, B):
        q = init_params(sizes, "he", 1, dtype)
        state = init_state(q, "adam")
        J.gd_steps(q, state, C, y, [1e-3] * 2, optimizer="adam")
        J.sgd_epoch(q, state, C, y, np.arange(n), 16, np.full(-(-n // 16), 1e-3),
                    optimizer="adam")
        trained.append(q.weights + q.biases)
    assert _same(*trained)


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_tiles_in_the_split_step(dtype):
    """The pixel-split step on a full CSR: the same bits as on the sparse one (its split pixel
    is chosen from the non-zero values per pixel, not the entries, so the halves are cut at
    the same pixel) in compiled code, and as the reference's epoch."""
    from fastmlp.common import init_state
    from fastmlp import reference as R
    from support import assert_close
    n = 60
    X, A, B = _full_and_sparse(dtype, n, 120, 1)
    y = np.random.default_rng(0).integers(0, 7, n)
    out = []
    for backend, Xin in ((J, A), (J, B), (R, X)):
        q = init_params((120, 72, 20, 7), "he", 1, dtype)
        state = init_state(q, "adam")
        backend.sgd_epoch(q, state, Xin, y, np.arange(n), 16, np.full(-(-n // 16), 1e-3),
                          optimizer="adam")
        out.append(q.weights + q.biases)
    for a, b, r in zip(*out):
        assert np.array_equal(a, b) or JIT_DISABLED      # (plain loops: four entries at a time)
        assert_close(a, b, dtype, "full against sparse CSR")
        assert_close(a, r, dtype, "full CSR against the reference")
