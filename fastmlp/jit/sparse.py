"""The sparse first layer: forward (``z = x @ W1 + b1`` over a row's non-zero pixels only) and the
weight gradient (``dW1[j] += x_j * dz``), and how a block finds its rows' entries.

Legend
------
    rng      (2, >= nb) int64: row t of a block has entries rng[0, t] <= p < rng[1, t]
    idx      the entries' columns (the CSR's own array, or a block-local copy of shifted images)
    pix, val their values, the same way: uint8 pixels (through lut) or floats, the other one
             empty; ``_value(pix, val, lut, p)`` is entry p's input value
    H        the first layer's width (W.shape[1])
    bands    (B - 1, n) int64: row i's entries of pixel band k (``_band_cuts``); (0, *) for none
    nb       rows in the block (<= BLOCK)

Nothing here runs in parallel itself: the callers (slots.py, split.py) own the threads.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit
from numba.extending import overload

from ..params import Params
from . import _options
from ._options import AHEAD, FAST, LEAF
from ._codegen import (VECTOR_BYTES, _dense_ir_forward, _dense_ir_outer, _prefetch,
                       _row_ir_forward, _row_ir_outer, _value)
from .csr import CSR, _cached_for_csr, _pixel_counts, _row_cuts


def _sparse_row(z, W, b, idx, pix, val, lut, p0, p1, H):
    """z = x @ W + b for one sparse row x: its non-zero inputs are idx[p] with the value
    _value(pix, val, lut, p) for p0 <= p < p1; H is W.shape[1].

    Compiled code runs _codegen._ir_row_loop instead (the accumulator in registers, at any
    width). This body runs without the JIT (and for arrays the IR does not take); it combines
    four rows of W per pass over z, which quarters the loads and stores of z."""
    for k in range(H):
        z[k] = b[k]
    p = p0
    while p + 4 <= p1:
        w0 = W[idx[p]]
        w1 = W[idx[p + 1]]
        w2 = W[idx[p + 2]]
        w3 = W[idx[p + 3]]
        v0, v1 = _value(pix, val, lut, p), _value(pix, val, lut, p + 1)
        v2, v3 = _value(pix, val, lut, p + 2), _value(pix, val, lut, p + 3)
        for k in range(H):
            z[k] += (v0 * w0[k] + v1 * w1[k]) + (v2 * w2[k] + v3 * w3[k])
        p += 4
    while p < p1:
        w0 = W[idx[p]]
        v0 = _value(pix, val, lut, p)
        for k in range(H):
            z[k] += v0 * w0[k]
        p += 1


def _sparse_row_outer(gW, d, idx, pix, val, lut, p0, p1, H):
    """gW[idx[p], :] += _value(pix, val, lut, p) * d for p0 <= p < p1: one sparse row's share of the
    first layer's weight gradient x.T @ d (H: d's size). Compiled: _ir_row_loop, as above."""
    for p in range(p0, p1):
        g = gW[idx[p]]
        v = _value(pix, val, lut, p)
        for k in range(H):
            g[k] += v * d[k]


def _ir_takes(W, pix, val, lut, *arrays):
    """Whether _ir_row_loop serves these arrays: C-contiguous, float weights, input values in
    their dtype or uint8 pixels through a lut in it."""
    dt = W.dtype
    return (isinstance(dt, numba.types.Float) and lut.dtype == val.dtype == dt
            and pix.dtype == numba.types.uint8
            and all(isinstance(a, numba.types.Array) and a.layout == "C"
                    for a in (W, pix, val, lut) + arrays))


@overload(_sparse_row, inline="always", jit_options=FAST)
def _sparse_row_impl(z, W, b, idx, pix, val, lut, p0, p1, H):
    if _ir_takes(W, pix, val, lut, z, b, idx) and z.dtype == b.dtype == W.dtype:
        return lambda z, W, b, idx, pix, val, lut, p0, p1, H: _row_ir_forward(
            z, W, b, idx, pix, val, lut, p0, p1, H)
    return _sparse_row


@overload(_sparse_row_outer, inline="always", jit_options=FAST)
def _sparse_row_outer_impl(gW, d, idx, pix, val, lut, p0, p1, H):
    if _ir_takes(gW, pix, val, lut, d, idx) and d.dtype == gW.dtype:
        return lambda gW, d, idx, pix, val, lut, p0, p1, H: _row_ir_outer(
            d, gW, d, idx, pix, val, lut, p0, p1, H)
    return _sparse_row_outer


@njit(inline="always", **FAST)
def _full_run(rng, idx, lut, nrows):
    """(c0, K) with K > 0 if every row t < nrows of a block (rows as in _sparse_matmul) holds
    float values at exactly the columns c0 .. c0 + K - 1: K entries from column c0 to column
    c0 + K - 1, whose columns increase, are all of them. (0, 0) otherwise. Such a block (dense
    data compressed with its zeros kept) runs dense tiles (_dense_rows, _dense_outer)."""
    none = (np.int64(0), np.int64(0))
    if lut.shape[0] != 0 or nrows == 0:
        return none
    K = rng[1, 0] - rng[0, 0]
    if K <= 0:
        return none
    c0 = np.int64(idx[rng[0, 0]])
    for t in range(nrows):
        p0 = rng[0, t]
        p1 = rng[1, t]
        if p1 - p0 != K or np.int64(idx[p0]) != c0 or np.int64(idx[p1 - 1]) != c0 + K - 1:
            return none
    return c0, K


def _dense_rows(Z, W, b, rng, idx, pix, val, lut, nrows):
    """Z[t] = x_t @ W + b for the rows t < nrows of a block of full rows (_full_run) in dense
    register tiles (_codegen._ir_dense: the same bits as the sparse row loop); returns whether
    it did. This body, which runs without the JIT and for arrays the IR does not take, does
    nothing and returns False: the caller's sparse rows then compute the same sums."""
    return False


def _dense_outer(gW, D, rng, idx, pix, val, lut, nrows):
    """gW += X.T @ D for a block of full rows in dense tiles, as _dense_rows: returns whether
    it did (never without the JIT)."""
    return False


@overload(_dense_rows, inline="always", jit_options=FAST)
def _dense_rows_impl(Z, W, b, rng, idx, pix, val, lut, nrows):
    if not (_ir_takes(W, pix, val, lut, Z, b, idx, rng) and Z.dtype == b.dtype == W.dtype):
        return _dense_rows

    def impl(Z, W, b, rng, idx, pix, val, lut, nrows):
        c0, K = _full_run(rng, idx, lut, nrows)
        if K > 0:
            _dense_ir_forward(Z, W, b, rng, val, nrows, c0, K)
        return K > 0
    return impl


@overload(_dense_outer, inline="always", jit_options=FAST)
def _dense_outer_impl(gW, D, rng, idx, pix, val, lut, nrows):
    if not (_ir_takes(gW, pix, val, lut, D, idx, rng) and D.dtype == gW.dtype):
        return _dense_outer

    def impl(gW, D, rng, idx, pix, val, lut, nrows):
        c0, K = _full_run(rng, idx, lut, nrows)
        if K > 0:
            _dense_ir_outer(gW, D, rng, val, nrows, c0, K)
        return K > 0
    return impl


@njit(**LEAF)
def _sparse_matmul(Z, W, b, rng, idx, pix, val, lut, nrows):
    """Z[t] = x_t @ W + b for the rows t < nrows of a sparse block: row t's non-zero inputs are
    (idx[p], _value(pix, val, lut, p)) for p in rng[0, t]..rng[1, t]-1 (see _block_entries). The
    first layer's forward. One call covers many rows, because a call of a Numba function passes
    every array as seven values. A block of full rows runs dense tiles (_dense_rows)."""
    if _dense_rows(Z, W, b, rng, idx, pix, val, lut, nrows):
        return
    for t in range(nrows):
        _sparse_row(Z[t], W, b, idx, pix, val, lut, rng[0, t], rng[1, t], W.shape[1])


@njit(**LEAF)
def _sparse_matmul_bands(Z, W, b, rng, cuts, rows, r0, idx, pix, val, lut, nrows):
    """_sparse_matmul for the rows t < nrows of a block whose row t is the CSR's row rows[r0 + t],
    band by band (cuts from _band_cuts): first every row's entries in the first pixel band, from the
    bias, then every row's in the next, from the row's partial sum, and so on. One band's weight
    rows are a fraction of W, and they stay closer to the core while the block's rows go by:
    2.2 instead of 2.9 ns per non-zero pixel on one core. Same bits as _sparse_matmul in
    compiled code: each row's entries are added in the same order, and its partial sum is
    stored and reloaded exactly between bands. A block of full rows runs dense tiles, through
    _sparse_matmul (one copy of their code)."""
    if _full_run(rng, idx, lut, nrows)[1] > 0:
        _sparse_matmul(Z, W, b, rng, idx, pix, val, lut, nrows)
        return
    E = cuts.shape[0]
    for k in range(E + 1):          # (one call site: the row loop's code is inlined there)
        for t in range(nrows):
            i = rows[r0 + t]
            p0 = rng[0, t] if k == 0 else cuts[k - 1, i]
            p1 = rng[1, t] if k == E else cuts[k, i]
            _sparse_row(Z[t], W, b if k == 0 else Z[t], idx, pix, val, lut, p0, p1, W.shape[1])


@njit(**LEAF)
def _sparse_matmul_add(Z, W, rng, idx, pix, val, lut, nrows):
    """Z[t] += x_t @ W for the rows t < nrows of a sparse block (as _sparse_matmul, each row's
    sum starting from its own Z[t] instead of a bias): the weight gradient by pixel of a slot
    that sums many blocks (slots._block_backward), the same chain of multiply-adds as the
    scatter of _sparse_outer."""
    for t in range(nrows):
        _sparse_row(Z[t], W, Z[t], idx, pix, val, lut, rng[0, t], rng[1, t], W.shape[1])


@njit(inline="always", **FAST)
def _first_layer(Z, W, b, rng, bands, rows, b0, idx, pix, val, lut, nrows):
    """The block's sparse first layer: in pixel bands if there are any (_band_cuts gives them
    only to compiled code), else row by row."""
    if bands.shape[0] > 0:
        _sparse_matmul_bands(Z, W, b, rng, bands, rows, b0, idx, pix, val, lut, nrows)
    else:
        _sparse_matmul(Z, W, b, rng, idx, pix, val, lut, nrows)


@njit(**LEAF)
def _sparse_outer(gW, rng, idx, pix, val, lut, nrows, D):
    """gW += X.T @ D for the rows t < nrows of a sparse block X (as in _sparse_matmul), only
    where X != 0. The first layer's weight gradient. A block of full rows runs dense tiles."""
    if _dense_outer(gW, D, rng, idx, pix, val, lut, nrows):
        return
    for t in range(nrows):
        _sparse_row_outer(gW, D[t], idx, pix, val, lut, rng[0, t], rng[1, t], gW.shape[1])


@njit(**FAST)
def _by_pixel(crng, cidx, cpix, cval, rng, idx, pix, val, pixels, n, j0, j1):
    """Regroup the entries of a block's rows t < n (rows as in _sparse_matmul: rng, idx, and
    pix or val), which all lie in the pixels j0 <= j < j1 (a half's range in the split step,
    every pixel in the slot step), by pixel, in a stable counting sort: pixel j's entries are
    then the rows cidx[q] with the values cpix[q] or cval[q], for crng[0, j - j0] <= q <
    crng[1, j - j0], rows in increasing order. (The block transposed: rows become pixels.)"""
    start, end = crng[0], crng[1]
    for j in range(j1 - j0):
        start[j] = 0
    for t in range(n):
        for p in range(rng[0, t], rng[1, t]):
            start[np.int64(idx[p]) - j0] += 1
    s = 0
    for j in range(j1 - j0):
        c = start[j]
        start[j] = s
        end[j] = s
        s += c
    for t in range(n):
        for p in range(rng[0, t], rng[1, t]):
            j = np.int64(idx[p]) - j0
            q = end[j]
            end[j] = q + 1
            cidx[q] = t
            if pixels:
                cpix[q] = pix[p]
            else:
                cval[q] = val[p]


@njit(**FAST)
def _block_entries(rng, bidx, bpix, bval, X, starts, ends, rows, shifts, b0, nb, j0, j1):
    """Find the non-zero inputs of the block rows rows[b0:b0+nb] of the CSR X (a KernelCSR) in
    the columns j0 <= j < j1 (all of them with 0, n_cols; a pixel range in the split step).
    Returns arrays (idx, pix, val) and fills rng (2, >= nb): row t's entries are idx[p] and
    _value(pix, val, X.lut, p) for rng[0, t] <= p < rng[1, t].

    Without shifts nothing is copied: (idx, pix, val) are the CSR's own arrays, and row i's entries
    in the column range are starts[i]:ends[i] (indptr[:-1] and indptr[1:] for all columns; for a
    pixel range, the ends of one run, since a row's columns are sorted: see _row_cuts). With
    shifts (an (n, 2) int8 array aligned with rows; empty for none), the image of row
    rows[b0 + t] is moved by shifts[b0 + t] = (dy, dx) pixels, filling with zeros: pixel (r, c)
    goes to (r + dy, c + dx) and pixels that leave the 28x28 frame are dropped (augmentation).
    The moved entries are written to the block-local bidx and bpix or bval (columns still
    sorted), which are returned.
    """
    indptr, indices, pixels, values = X.indptr, X.indices, X.pixels, X.values
    has_pixels = X.lut.shape[0] != 0
    has_shift = shifts.shape[0] > 0
    q = 0
    for t in range(nb):
        if t + AHEAD < nb:            # rows lie anywhere in the dataset: ask for the memory of
            ahead = rows[b0 + t + AHEAD]                   # a later row early, so that cache
            for p in range(starts[ahead], ends[ahead], 32):  # misses overlap
                _prefetch(indices, p)
            for p in range(starts[ahead], ends[ahead], 64):
                if has_pixels:
                    _prefetch(pixels, p)
                else:
                    _prefetch(values, p)
        i = rows[b0 + t]
        if not has_shift:
            rng[0, t] = starts[i]
            rng[1, t] = ends[i]
            continue
        dy = np.int64(shifts[b0 + t, 0])
        dx = np.int64(shifts[b0 + t, 1])
        rng[0, t] = q
        for p in range(indptr[i], indptr[i + 1]):
            j = np.int64(indices[p])
            r = j // 28 + dy
            c = j % 28 + dx
            j = r * 28 + c
            if 0 <= r < 28 and 0 <= c < 28 and j0 <= j < j1:
                bidx[q] = j
                if has_pixels:
                    bpix[q] = pixels[p]
                else:
                    bval[q] = values[p]
                q += 1
        rng[1, t] = q
    if has_shift:
        return bidx, bpix, bval
    return indices, pixels, values


def _band_cuts(params: Params, csr: CSR) -> np.ndarray:
    """The pixel bands of this CSR for the kernels that read its rows in order (the forward ones,
    and the slot step of full batches; see _NO_BANDS): (B - 1, n) int64, row i's entries of band k
    are cuts[k - 1, i]:cuts[k, i] (with indptr[i] and indptr[i + 1] at the ends). B bands of
    pixels whose first-layer weight rows total about BAND_BYTES, cut at equal shares of the
    entries (counted on the first 2,000 rows): 3 for the default float32 network. None if the
    rows hold fewer than MIN_BAND_ENTRIES entries a band on average: then each band's share of
    a row is too short to pay for its pass, and the weight rows a block's rows touch are
    scattered anyway (a bag of words of 50,000 columns and 98 entries a row: 244 bands made
    predict 5.6x slower than none). Only in
    compiled code, where the IR row loop adds a row's entries one by one to its sum, so that
    adding them band by band changes no bit; (0, n) without the JIT (the Python loops add four
    entries at a time). Cached per CSR, and made on a CSR's second pass, not its first: finding
    them costs about what they save in one pass, and a CSR made for one call (MLPClassifier's
    predict and score compress X at every call) would pay for them at every call (on 2,048
    rows 1.3 ms against 0.8 ms without; on 1 row 95 against 69 us)."""
    n_in, H = params.sizes[0], params.sizes[1]
    B = max(1, round(n_in * H * params.dtype.itemsize / _options.BAND_BYTES))
    if csr.indptr[-1] < _options.MIN_BAND_ENTRIES * B * len(csr):
        B = 1
    if B == 1 or numba.config.DISABLE_JIT:
        return np.zeros((0, len(csr)), dtype=np.int64)
    passes = _cached_for_csr(csr, ("passes", H * params.dtype.itemsize), lambda: [0])
    passes[0] += 1
    if passes[0] < 2:
        return np.zeros((0, len(csr)), dtype=np.int64)

    def make():
        counts = _pixel_counts(csr, n_in)
        edges = np.searchsorted(counts, counts[-1] * np.arange(1, B) / B, side="right")
        return _row_cuts(csr.indptr, csr.indices, edges.astype(np.int64))
    return _cached_for_csr(csr, ("bands", H * params.dtype.itemsize), make)


def _by_pixel_pays(params: Params, rows: int, csr: CSR) -> bool:
    """Whether the first layer's weight gradient of blocks of `rows` rows goes by pixel
    (_by_pixel, then the forward's row loop) rather than row by row (_sparse_outer): where
    the width ends in a partial vector, and a block holds on average at least
    PIXEL_MIN_ENTRIES entries a pixel. Row by row, every entry reads and writes a row of the
    gradient; at a width of whole vectors that is the faster way (72 float32: an MNIST epoch
    in 67 against 75 ms by pixel, Zen 4). Otherwise those read-modify-writes cost about twice
    as much: every other row's vectors straddle cache lines, and the partial last vector goes
    lane by lane (_codegen._ir_row_loop): width 100, 101 ms of single-core gradient time for
    an MNIST epoch row by row, 64 ms by pixel regrouping included (Zen 4). Both ways give
    the same bits in compiled code (the Python twins that run without the JIT sum four entries
    at a time by pixel: the same values to rounding)."""
    H, n_in = params.sizes[1], params.sizes[0]
    per_pixel = rows * csr.indptr[-1] / max(1, len(csr)) / n_in
    return (H % (VECTOR_BYTES // params.dtype.itemsize) != 0
            and per_pixel >= _options.PIXEL_MIN_ENTRIES)
