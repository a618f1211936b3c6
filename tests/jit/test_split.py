"""The mini-batch epoch: the pixel-split and slot steps, bitwise determinism, the per-CSR index.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import numba
import numpy as np
import pytest

from fastmlp import init_params, jit as J, reference as R
from fastmlp.jit import _options, csr, sparse, split

from support import JIT_DISABLED


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
@pytest.mark.parametrize("batch", [1, 100, _options.SPLIT_MAX_BATCH, _options.SPLIT_MAX_BATCH + 1, 1000])
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
        monkeypatch.setattr(_options, "SPLIT_MAX_BATCH", 0)
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
    for patience, nthreads in ((_options.PATIENCE, threads), (0, threads), (0, 1)):
        monkeypatch.setattr(_options, "PATIENCE", patience)
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
def test_split_index_is_made_once_per_csr_and_forgotten_with_it(mnist_train):
    """The split step's index of a dataset (split pixel, each row's cut) is cached per CSR: the
    same arrays on the next epoch, equal to a fresh computation, and dropped when the CSR dies."""
    import gc
    p = init_params(dtype=np.float32)
    before = len(csr._CSR_CACHE)
    C = J.prepare(mnist_train[0][:300], np.float32)
    jsplit, cut = split._split_index(p, C)
    assert split._split_index(p, C)[1] is cut and len(csr._CSR_CACHE) == before + 1
    assert jsplit == split._split_point(p, C)
    assert np.array_equal(cut, csr._row_cuts(C.indptr, C.indices, np.array([jsplit]))[0])
    starts, ends = C.indptr[:-1], C.indptr[1:]
    assert np.all((starts <= cut) & (cut <= ends))
    for i in range(len(C)):
        row = C.indices[starts[i]:ends[i]]
        assert np.all(row[:cut[i] - starts[i]] < jsplit) and np.all(row[cut[i] - starts[i]:] >= jsplit)
    other = J.prepare(mnist_train[0][:300], np.float32)       # equal data, another CSR
    assert split._split_index(p, other)[1] is not cut
    del C, other, starts, ends, row       # (views keep the CSR's arrays alive)
    gc.collect()
    assert len(csr._CSR_CACHE) == before


def _epoch_arrays(p0, X, y, perm, batch, opt, shifts=None):
    p = p0.copy()
    s = J.init_state(p, opt)
    lr = 1e-3 if opt == "adam" else 0.05
    losses = J.sgd_epoch(p, s, X, y, perm, batch, np.full(-(-len(perm) // batch), lr),
                         optimizer=opt, shifts=shifts, weight_decay=1e-4)
    return [losses] + p.arrays() + s


@pytest.mark.skipif(JIT_DISABLED, reason="the same bits only in compiled code (the Python twins "
                                         "add four entries at a time)")
@pytest.mark.parametrize("dtype, width, kind, shifted", [
    (np.float32, 100, "pixels", False), (np.float32, 100, "floats", True),
    (np.float32, 36, "floats", False), (np.float64, 98, "pixels", True)])
def test_split_gradient_by_pixel_same_bits_as_row_by_row(mnist_train, monkeypatch, dtype, width,
                                                         kind, shifted):
    """Widths that end in a partial vector take the first layer's gradient by pixel in the split
    step (_by_pixel_pays): an epoch must give the same bits as row by row (forced by asking
    for more entries a pixel than any batch holds), with uint8 pixels and floats, shifted
    images and not."""
    X8, y = mnist_train[0][:3000], mnist_train[1][:3000].astype(np.int64)
    X = J.prepare(X8, dtype) if kind == "pixels" else J.to_csr(X8.astype(dtype) / dtype(255))
    p0 = init_params((784, width, 10), "he", 4, dtype)
    rng = np.random.default_rng(6)
    perm = rng.permutation(3000)
    shifts = rng.integers(-2, 3, size=(3000, 2)).astype(np.int8) if shifted else None
    assert sparse._by_pixel_pays(p0, 200, X)
    by_pixel = _epoch_arrays(p0, X, y, perm, 200, "adam", shifts)
    monkeypatch.setattr(_options, "PIXEL_MIN_ENTRIES", np.inf)
    assert not sparse._by_pixel_pays(p0, 200, X)
    by_row = _epoch_arrays(p0, X, y, perm, 200, "adam", shifts)
    for a, b in zip(by_pixel, by_row):
        assert np.array_equal(a, b)


@pytest.mark.skipif(JIT_DISABLED, reason="the same bits only in compiled code")
@pytest.mark.parametrize("dtype, width, kind", [(np.float32, 100, "pixels"),
                                                (np.float64, 98, "floats")])
def test_slot_step_gradient_by_pixel_same_bits_as_row_by_row(mnist_train, monkeypatch, dtype,
                                                             width, kind):
    """The slot step (full batches, loss_and_grads, mini-batches over SPLIT_MAX_BATCH rows)
    takes the same by-pixel gradient, block by block, each slot's sums continuing from its
    partial: the same bits as row by row."""
    X8, y = mnist_train[0][:2500], mnist_train[1][:2500].astype(np.int64)
    X = J.prepare(X8, dtype) if kind == "pixels" else J.to_csr(X8.astype(dtype) / dtype(255))
    p0 = init_params((784, width, 10), "he", 7, dtype)
    perm = np.random.default_rng(8).permutation(2500)
    shifts = np.random.default_rng(9).integers(-2, 3, size=(2500, 2)).astype(np.int8)

    def run():
        lg = J.loss_and_grads(p0, X, y)
        p = p0.copy()
        s = J.init_state(p, "nesterov")
        gd = J.gd_steps(p, s, X, y, [0.1, 0.05], optimizer="nesterov")
        ep = _epoch_arrays(p0, X, y, perm, 1000, "adam", shifts)
        return [np.asarray(lg[0])] + lg[1].arrays() + [gd] + p.arrays() + s + ep

    assert sparse._by_pixel_pays(p0, _options.BLOCK, X)
    by_pixel = run()
    monkeypatch.setattr(_options, "PIXEL_MIN_ENTRIES", np.inf)
    by_row = run()
    for a, b in zip(by_pixel, by_row):
        assert np.array_equal(a, b)


@pytest.mark.small
def test_by_pixel_only_for_partial_vectors_and_enough_entries(mnist_train):
    """The rule of _by_pixel_pays: the width must end in a partial 32-byte vector (72 float32
    and 72 float64 do not, 100 float32 and 98 float64 do) and a batch must hold at least
    PIXEL_MIN_ENTRIES entries a pixel on average (MNIST batches of 128: about 24)."""
    X = J.prepare(mnist_train[0][:500], np.float32)
    pays = lambda sizes, dt, batch: sparse._by_pixel_pays(init_params(sizes, "he", 0, dt), batch, X)
    assert not pays((784, 72, 10), np.float32, 128)
    assert not pays((784, 72, 10), np.float64, 128)
    assert pays((784, 100, 10), np.float32, 128)
    assert pays((784, 98, 10), np.float64, 128)
    assert pays((784, 36, 10), np.float32, 128)
    assert not pays((784, 100, 10), np.float32, 10)    # 10 rows: about 2 entries a pixel


@pytest.mark.small
def test_by_pixel_regroups_a_block_as_its_transpose(mnist_train):
    """_by_pixel on a block of CSR rows' entries in a pixel range (as the split step's halves
    give it: each row cut where its columns reach j0 and j1): pixel j's rows and values are the
    block's column j (scipy's CSC of the same rows: rows in increasing order), for uint8
    pixels and floats."""
    import scipy.sparse as sps
    X8 = mnist_train[0][100:140]
    rows = np.array([5, 0, 39, 12, 7, 7, 20], dtype=np.int64)
    j0, j1 = 200, 600
    for C in (J.prepare(X8, np.float32), J.to_csr(X8.astype(np.float32) / np.float32(255))):
        pixels = len(C.lut) != 0
        rng = np.array([[C.indptr[i] + np.searchsorted(C.indices[C.indptr[i]:C.indptr[i + 1]], j)
                         for i in rows] for j in (j0, j1)], dtype=np.int64)
        cap = int(np.sum(rng[1] - rng[0]))
        crng = np.empty((2, 784), np.int64)
        cidx = np.empty(cap, C.indices.dtype)
        cpix = np.empty(cap if pixels else 0, np.uint8)
        cval = np.empty(0 if pixels else cap, np.float32)
        pix = C.values if pixels else np.empty(0, np.uint8)
        val = np.empty(0, np.float32) if pixels else C.values
        sparse._by_pixel(crng, cidx, cpix, cval, rng, C.indices, pix, val, pixels, len(rows),
                         j0, j1)
        block = sps.csr_matrix((C.values, C.indices, C.indptr), shape=(40, 784))[rows][:, j0:j1]
        csc = block.tocsc()
        csc.sort_indices()
        assert np.array_equal(crng[0, :j1 - j0], csc.indptr[:-1])
        assert np.array_equal(crng[1, :j1 - j0], csc.indptr[1:])
        assert np.array_equal(cidx[:cap], csc.indices)
        assert np.array_equal(cpix if pixels else cval[:cap], csc.data)


@pytest.mark.small
def test_small_epoch_by_pixel_follows_the_reference(mnist_train, monkeypatch):
    """The split step with the gradient by pixel (forced: PIXEL_MIN_ENTRIES 0) on 12 real
    images at width 98 (float64: a partial last vector), small enough for the kernel bodies
    as plain Python: the reference."""
    monkeypatch.setattr(_options, "PIXEL_MIN_ENTRIES", 0)
    X8, y = mnist_train[0][30:42], mnist_train[1][30:42].astype(np.int64)
    p0 = init_params((784, 98, 10), "he", 2, np.float64)
    pr, pj = p0.copy(), p0.copy()
    sr, sj = R.init_state(pr, "adam"), R.init_state(pj, "adam")
    perm = np.random.default_rng(2).permutation(12)
    shifts = np.random.default_rng(3).integers(-2, 3, size=(12, 2))
    assert sparse._by_pixel_pays(pj, 5, J.prepare(X8, np.float64))
    le_ref = R.sgd_epoch(pr, sr, R.prepare(X8, np.float64), y, perm, 5, [1e-3] * 3,
                         optimizer="adam", shifts=shifts)
    le_jit = J.sgd_epoch(pj, sj, J.prepare(X8, np.float64), y, perm, 5, [1e-3] * 3,
                         optimizer="adam", shifts=shifts)
    np.testing.assert_allclose(le_jit, le_ref, rtol=1e-10)
    for a, b in zip(pj.arrays() + sj, pr.arrays() + sr):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(b).max())
