"""The jitted twin of ``fastmlp/reference.py``: the same functions, names and meanings, fast.

Read reference.py first; this file assumes its legend and conventions (row-major batches,
``Z = A @ W + b``, the 1/n factor only in the loss backward, backward overwrites gradients, the
ReLU mask taken from the forward output).

Where the time goes and what this file does about it
----------------------------------------------------
One training pass over the 60,000 training images is 14.6 GFLOP when done densely, almost all of it
in ``X @ W1`` and ``X.T @ dZ1``. Dense BLAS alone runs that at 10-14 passes per second here. Two
facts let the kernels do less arithmetic, exactly:

1. **The input is sparse.** MNIST images are 81% zeros (about 150 non-zero pixels of 784). The
   dataset is converted once into a compressed-sparse-row matrix (``CSR``: row pointers, uint16
   column indices, values already divided by 255 in the working dtype). The first layer then costs
   ``nnz * 72`` multiply-adds instead of ``784 * 72`` per image, forward (``z += x_j * W1[j, :]``)
   and backward (``dW1[j, :] += x_j * dz1``). Zero pixels contribute exactly nothing, so skipping
   them changes no result beyond summation order.
2. **ReLU makes zeros.** In the hidden layers, an inactive unit (a = 0) is skipped in the
   forward product and in the weight gradient, and its backward delta is zero.

Every step of one sample (sparse first layer, dense hidden layers, softmax, loss, backward) runs
fused in one pass over a few hundred floats of scratch that live in L1; there are no (n, 72)
temporaries at all. Weight gradients are accumulated per *slot*.

Parallelism (two cores): measured, BLAS threads are not used at all here, because after
sparsification no dense product remains that is worth a BLAS call (a (n, 72) @ (72, 36) product
with skipped zero activations runs faster as a fused loop than as a BLAS call plus the glue around
it). All parallelism is Numba ``prange`` over **slots**: the batch's rows are cut into a fixed
number of contiguous slots (``NSLOTS``, independent of the thread count), each slot accumulates
into its own partial gradient, and the partials are summed in slot order afterwards. Hence:
no races, and results that are bitwise identical run to run *and for any thread count*. Small
batches use fewer slots (a slot must have at least ``MIN_SLOT_ROWS`` rows), so a mini-batch step
of 128 rows runs in 2 slots. ``scripts/bench_numba.py`` measures these choices.

Numba options live in one place (``_FAST`` / ``_STRICT`` below): every kernel is ``cache=True``;
the hot kernels use ``fastmath`` *without* ``nnan``/``ninf`` so that non-finite values still
propagate and the training loop can detect divergence. Float32 kernels take all their constants
as float32 arrays or scalars prepared by the Python wrappers, so nothing promotes to float64.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange
from numba.extending import overload

from .params import Params
from ._validate import check_X, check_y, check_params
from .reference import OPTIMIZERS, init_state, one_hot, confusion_matrix  # noqa: F401  (same API)

__all__ = [
    "CSR", "prepare", "to_csr", "forward", "loss_and_grads", "update", "init_state",
    "predict_proba", "predict", "accuracy", "one_hot", "confusion_matrix", "gd_steps",
    "sgd_epoch", "OPTIMIZERS", "NSLOTS",
]

_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # not nnan/ninf: NaN must propagate
_FAST = dict(cache=True, fastmath=_FASTMATH, error_model="numpy", boundscheck=False)
_STRICT = dict(cache=True, error_model="numpy", boundscheck=False)

NSLOTS = 4           # partial-gradient slots for a large batch (fixed: results do not depend on threads)
MIN_SLOT_ROWS = 64   # a slot gets at least this many rows
NSLOTS_FWD = 16      # row ranges for forward-only kernels (no partials, so more is cheap)


class CSR(NamedTuple):
    """A batch of inputs in compressed-sparse-row form.

    indptr  int64 (n + 1,): row i's entries are indptr[i]:indptr[i + 1]
    indices uint16 (nnz,): column (pixel) of each entry
    values  uint8 pixels (nnz,), whose input value is lut[pixel] (= pixel / 255 in the working
            dtype, exactly as the reference computes it); or float32/float64 values as they are
    lut     float32 or float64 (256,) for uint8 values; empty, of the values' dtype, otherwise
    n_cols  number of columns (784)

    uint8 values make the training set 3 bytes per non-zero pixel (27 MB for MNIST's 9 million),
    small enough for the last-level cache, which matters when mini-batches visit rows at random.
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    lut: np.ndarray
    n_cols: int

    @property
    def shape(self):
        return (len(self.indptr) - 1, self.n_cols)

    @property
    def dtype(self):
        return self.lut.dtype

    def __len__(self):
        return len(self.indptr) - 1

    @property
    def density(self):
        n = len(self)
        return len(self.values) / max(1, n * self.n_cols)


# ----------------------------------------------------------------------------------------------
# building the sparse input (once per dataset)


@njit(parallel=True, **_STRICT)
def _count_nonzero_rows(X):
    n = X.shape[0]
    counts = np.empty(n, dtype=np.int64)
    for i in prange(n):
        c = 0
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                c += 1
        counts[i] = c
    return counts


@njit(parallel=True, **_STRICT)
def _fill_csr(X, indptr, indices, values):
    for i in prange(X.shape[0]):
        p = indptr[i]
        for j in range(X.shape[1]):
            v = X[i, j]
            if v != 0:
                indices[p] = j
                values[p] = v
                p += 1


def to_csr(X, dtype=None) -> CSR:
    """Compress a batch: uint8 pixels (divided by 255 in ``dtype``, exactly as the reference's
    ``prepare`` does) or float values (kept as they are). Columns must fit in uint16."""
    X = np.ascontiguousarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, features); got shape {X.shape}")
    if X.shape[1] > 65535:
        raise ValueError(f"at most 65535 columns fit the sparse index type; got {X.shape[1]}")
    counts = _count_nonzero_rows(X)
    indptr = np.zeros(len(X) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    indices = np.empty(nnz, dtype=np.uint16)
    values = np.empty(nnz, dtype=X.dtype)
    _fill_csr(X, indptr, indices, values)
    if X.dtype == np.uint8:
        dt = np.dtype(dtype or np.float32)
        lut = np.arange(256).astype(dt) / np.asarray(255, dtype=dt)
    else:
        lut = np.zeros(0, dtype=X.dtype)
    return CSR(indptr, indices, values, lut, X.shape[1])


def prepare(X, dtype) -> CSR:
    """The training data in the form this backend's loops take: a CSR matrix in ``dtype``."""
    X = np.asarray(X)
    if X.dtype != np.uint8:
        X = np.ascontiguousarray(X, dtype=dtype)
    return to_csr(X, dtype)


def _as_csr(X, params: Params) -> CSR:
    """Boundary conversion: a CSR in the params' dtype, or a checked dense float X compressed."""
    if isinstance(X, CSR):
        if X.n_cols != params.sizes[0]:
            raise ValueError(f"X must have shape (n, {params.sizes[0]}); got {X.shape}")
        if X.dtype != params.dtype:
            raise TypeError(f"X must have the params' dtype {params.dtype}; got {X.dtype}")
        if len(X) < 1:
            raise ValueError(f"X must have shape (n, {params.sizes[0]}) with n >= 1; got {X.shape}")
        return X
    check_X(X, params)
    return to_csr(X)


# ----------------------------------------------------------------------------------------------
# one sample through the network and back (the fused core every kernel uses)


def _value(val, lut, p):
    """The p-th input value: lut[val[p]] for uint8 pixels, val[p] for floats. Compiled code uses
    the overload below, which makes this choice at compile time; this body runs only under
    NUMBA_DISABLE_JIT=1."""
    return lut[val[p]] if val.dtype.kind == "u" else val[p]


@overload(_value, jit_options=dict(inline="always", **_FAST))
def _value_impl(val, lut, p):
    if isinstance(val.dtype, numba.types.Integer):
        return lambda val, lut, p: lut[val[p]]
    return lambda val, lut, p: val[p]


@njit(inline="always", **_FAST)
def _sparse_row_matmul(z, W, b, idx, val, lut, p0, p1):
    """z = x @ W + b for one sparse row x given as (idx[p], val[p]) for p in p0..p1-1.

    The same routine serves the input layer (x = a CSR row of pixels) and every hidden layer
    (x = the active ReLU outputs, compacted). Four rows of W are combined per pass over z: that
    quarters the loads and stores of z and breaks the store-to-load dependency from one entry
    to the next, which otherwise bounds this loop.
    """
    H = z.shape[0]
    for k in range(H):
        z[k] = b[k]
    p = p0
    while p + 4 <= p1:
        w0 = W[idx[p]]
        w1 = W[idx[p + 1]]
        w2 = W[idx[p + 2]]
        w3 = W[idx[p + 3]]
        v0 = _value(val, lut, p)
        v1 = _value(val, lut, p + 1)
        v2 = _value(val, lut, p + 2)
        v3 = _value(val, lut, p + 3)
        for k in range(H):
            z[k] += (v0 * w0[k] + v1 * w1[k]) + (v2 * w2[k] + v3 * w3[k])
        p += 4
    while p < p1:
        w0 = W[idx[p]]
        v0 = _value(val, lut, p)
        for k in range(H):
            z[k] += v0 * w0[k]
        p += 1


@njit(inline="always", **_FAST)
def _sparse_row_outer(gW, idx, val, lut, p0, p1, d):
    """gW[idx[p], :] += val[p] * d for p in p0..p1-1: this row's x.T @ d, only where x != 0."""
    H = d.shape[0]
    for p in range(p0, p1):
        g = gW[idx[p]]
        v = _value(val, lut, p)
        for k in range(H):
            g[k] += v * d[k]


@njit(inline="always", **_FAST)
def _relu_compact(z, idx, val, o):
    """ReLU of z, keeping only the active units as a sparse row: idx[o:o+c], val[o:o+c].
    Returns c. Inactive units (z <= 0) are dropped; NaN is kept so that it propagates.
    Branch-free: every unit is written, and the write position advances only for active ones
    (about half the units are active, in no predictable pattern)."""
    c = 0
    for k in range(z.shape[0]):
        zk = z[k]
        idx[o + c] = k
        val[o + c] = zk
        c += not zk <= 0
    return c


@njit(inline="always", **_FAST)
def _sparse_row_matvec_t(out, WT, idx, d, p0, p1):
    """out = sum over q in p0..p1-1 of d[idx[q]] * WT[idx[q], :]: the product d @ W.T restricted to
    the entries idx[p0:p1] of d (the others are zero), computed from the transposed weights so
    that the inner loop runs along a contiguous row. Four rows per pass, as in _sparse_row_matmul.
    """
    H = out.shape[0]
    for k in range(H):
        out[k] = 0
    q = p0
    while q + 4 <= p1:
        m0 = idx[q]
        m1 = idx[q + 1]
        m2 = idx[q + 2]
        m3 = idx[q + 3]
        w0 = WT[m0]
        w1 = WT[m1]
        w2 = WT[m2]
        w3 = WT[m3]
        d0 = d[m0]
        d1 = d[m1]
        d2 = d[m2]
        d3 = d[m3]
        for k in range(H):
            out[k] += (d0 * w0[k] + d1 * w1[k]) + (d2 * w2[k] + d3 * w3[k])
        q += 4
    while q < p1:
        m0 = idx[q]
        w0 = WT[m0]
        d0 = d[m0]
        for k in range(H):
            out[k] += d0 * w0[k]
        q += 1


@njit(**_FAST)
def _row_forward(Ws, bs, indices, values, lut, p0, p1, acts, offs, idx, val, cnt):
    """Forward one row. Layer l's pre-activation lands in acts[offs[l]:offs[l + 1]]; the active
    inputs of layer l >= 1 in idx/val[offs[l-1]:offs[l-1] + cnt[l]]. Returns the logits."""
    L = len(Ws)
    z = acts[offs[0]:offs[1]]
    _sparse_row_matmul(z, Ws[0], bs[0], indices, values, lut, p0, p1)
    for l in range(1, L):
        o = offs[l - 1]
        c = _relu_compact(z, idx, val, o)
        cnt[l] = c
        z = acts[offs[l]:offs[l + 1]]
        _sparse_row_matmul(z, Ws[l], bs[l], idx, val, val, o, o + c)
    return z


@njit(**_FAST)
def _softmax_xent_row(z, yi, inv_n, dz):
    """Softmax of one row of logits z. Returns the row's cross-entropy (float64) and writes
    dz[:k] = (softmax(z) - onehot(yi)) * inv_n."""
    k = z.shape[0]
    mx = z[0]
    for m in range(1, k):
        if z[m] > mx:
            mx = z[m]
    s = 0.0   # float64 sum of exponentials
    for m in range(k):
        e = np.exp(z[m] - mx)
        dz[m] = e
        s += e
    for m in range(k):
        dz[m] = dz[m] / s
    dz[yi] -= 1
    for m in range(k):
        dz[m] *= inv_n
    return float(np.log(s)) + float(mx) - float(z[yi])


@njit(**_FAST)
def _row_backward(Ws, WTs, indices, values, lut, p0, p1, offs, idx, val, cnt, dz, da, all_units,
                  pWs, pbs, s):
    """Add one row's gradients into slot s of the partials pWs/pbs, starting from dz = dL/dz of
    the output layer (all entries). Layers in reverse order; the input layer's dA is never formed.

    For layer l >= 1 the active inputs (idx/val at offs[l-1], cnt[l] of them) give both the
    weight gradient (x.T @ dz on active rows only) and the ReLU mask of the layer below: dA is
    formed on the active units only (dz @ W.T, from the transposed weights WTs[l]), the inactive
    ones get 0.
    """
    L = len(Ws)
    lst, q0, qc = all_units, 0, Ws[L - 1].shape[1]   # dz's non-zero entries: all at the output
    for l in range(L - 1, 0, -1):
        fan_in, fan_out = Ws[l].shape
        d = dz[:fan_out]
        gb = pbs[l][s]
        for m in range(fan_out):
            gb[m] += d[m]
        o = offs[l - 1]
        c = cnt[l]
        _sparse_row_outer(pWs[l][s], idx, val, val, o, o + c, d)
        # dA = dz @ W.T over dz's non-zero entries lst[q0:q0 + qc]
        _sparse_row_matvec_t(da[:fan_in], WTs[l], lst, d, q0, q0 + qc)
        # ReLU mask: dz of the layer below is da on the active units, 0 elsewhere
        for k in range(fan_in):
            dz[k] = 0
        for q in range(o, o + c):
            k = idx[q]
            dz[k] = da[k]
        lst, q0, qc = idx, o, c   # below the output, only the active units are non-zero
    H = Ws[0].shape[1]
    gb = pbs[0][s]
    for k in range(H):
        gb[k] += dz[k]
    _sparse_row_outer(pWs[0][s], indices, values, lut, p0, p1, dz[:H])


@njit(**_FAST)
def _slot_grads(Ws, WTs, bs, indptr, indices, values, lut, y, rows, r0, r1, inv_n, offs, pWs, pbs, s):
    """Forward and backward rows[r0:r1] into slot s of the partials. Returns the slot's summed
    cross-entropy (float64).

    The slot first zeroes its own partials and reads the weights once in order. Both are cache
    work, not arithmetic: after an update on the other core, the weights and partials live in
    that core's cache, and fetching them in one sequential sweep (which the prefetcher streams)
    is far cheaper than the random row accesses of the sparse products fetching them line by line.
    """
    touched = _warm_slot(Ws, pWs, pbs, s)
    width = 0
    for l in range(len(Ws)):
        width = max(width, Ws[l].shape[0], Ws[l].shape[1])
    acts = np.empty(offs[-1], dtype=lut.dtype)
    idx = np.empty(offs[-1], dtype=np.int32)
    val = np.empty(offs[-1], dtype=lut.dtype)
    cnt = np.zeros(len(Ws), dtype=np.int64)
    dz = np.empty(width, dtype=lut.dtype)
    da = np.empty(width, dtype=lut.dtype)
    all_units = np.arange(width).astype(np.int32)
    loss = 0.0 * touched
    for r in range(r0, r1):
        i = rows[r]
        p0, p1 = indptr[i], indptr[i + 1]
        z = _row_forward(Ws, bs, indices, values, lut, p0, p1, acts, offs, idx, val, cnt)
        loss += _softmax_xent_row(z, y[i], inv_n, dz)
        _row_backward(Ws, WTs, indices, values, lut, p0, p1, offs, idx, val, cnt, dz, da, all_units,
                      pWs, pbs, s)
    return loss


@njit(**_STRICT)
def _warm_slot(Ws, pWs, pbs, s):
    """Zero slot s's partials and read every cache line of the weights once, in order.
    Returns a number derived from the reads (0.0 unless a weight is not finite), so that the
    reads are not optimised away."""
    for l in range(len(pWs)):
        pWs[l][s][:] = 0
        pbs[l][s][:] = 0
    acc = 0.0
    for l in range(len(Ws)):
        w = Ws[l].reshape(-1)
        for q in range(0, w.shape[0], 8):
            acc += w[q] * 0.0
    return acc


@njit(parallel=True, **_FAST)
def _slots_kernel(Ws, WTs, bs, indptr, indices, values, lut, y, rows, inv_n, offs, pWs, pbs):
    """Gradients of the batch rows (row numbers into the CSR), left as per-slot partials.

    pWs[l] has shape (nslots, fan_in, fan_out); each slot zeroes its own first. prange over slots:
    slot s takes a contiguous share of the rows and owns pWs[l][s]; nothing is shared, so there
    are no races, and the split does not depend on the number of threads. WTs[l] (l >= 1) must
    hold Ws[l].T, C-contiguous. Returns the summed cross-entropy over the rows (float64).
    """
    nslots = pWs[0].shape[0]
    n = rows.shape[0]
    losses = np.zeros(nslots)
    for s in prange(nslots):
        r0 = (n * s) // nslots
        r1 = (n * (s + 1)) // nslots
        losses[s] = _slot_grads(Ws, WTs, bs, indptr, indices, values, lut, y, rows, r0, r1, inv_n, offs,
                                pWs, pbs, s)
    total = 0.0
    for s in range(nslots):
        total += losses[s]
    return total


@njit(**_STRICT)
def _transpose_into(WTs, Ws):
    """WTs[l][:] = Ws[l].T for the hidden and output layers (WTs[0] is unused and empty)."""
    for l in range(1, len(Ws)):
        W = Ws[l]
        WT = WTs[l]
        for k in range(W.shape[0]):
            for m in range(W.shape[1]):
                WT[m, k] = W[k, m]


def _transposes(params: Params):
    WTs = [np.zeros((0, 0), params.dtype)]
    WTs += [np.ascontiguousarray(W.T) for W in params.weights[1:]]
    return tuple(WTs)


@njit(parallel=True, **_STRICT)
def _sum_slots(pWs, pbs, gWs, gbs):
    """gWs[l] = sum over s of pWs[l][s], in slot order (deterministic); the same for biases."""
    nslots = pWs[0].shape[0]
    for l in range(len(gWs)):
        gW = gWs[l]
        pW = pWs[l]
        for k in prange(gW.shape[0]):
            for m in range(gW.shape[1]):
                gW[k, m] = pW[0, k, m]
            for s in range(1, nslots):
                for m in range(gW.shape[1]):
                    gW[k, m] += pW[s, k, m]
        gb = gbs[l]
        pb = pbs[l]
        for m in range(gb.shape[0]):
            acc = pb[0, m]
            for s in range(1, nslots):
                acc += pb[s, m]
            gb[m] = acc


@njit(parallel=True, **_FAST)
def _forward_kernel(Ws, bs, indptr, indices, values, lut, offs, outs):
    """Forward every row; outs[l] (n, sizes[l+1]) receives layer l's output (logits for the last)."""
    n = indptr.shape[0] - 1
    nslots = NSLOTS_FWD
    L = len(Ws)
    for s in prange(nslots):
        acts = np.empty(offs[-1], dtype=lut.dtype)
        idx = np.empty(offs[-1], dtype=np.int32)
        val = np.empty(offs[-1], dtype=lut.dtype)
        cnt = np.zeros(L, dtype=np.int64)
        for i in range((n * s) // nslots, (n * (s + 1)) // nslots):
            _row_forward(Ws, bs, indices, values, lut, indptr[i], indptr[i + 1], acts, offs, idx, val, cnt)
            for l in range(L):
                o = outs[l]
                for k in range(o.shape[1]):
                    zk = acts[offs[l] + k]
                    o[i, k] = max(zk, 0) if l < L - 1 and zk <= 0 else zk


@njit(parallel=True, **_FAST)
def _proba_kernel(Ws, bs, indptr, indices, values, lut, offs, P):
    """P[i] = softmax(logits of row i), without storing the hidden layers."""
    n = indptr.shape[0] - 1
    nslots = NSLOTS_FWD
    for s in prange(nslots):
        acts = np.empty(offs[-1], dtype=lut.dtype)
        idx = np.empty(offs[-1], dtype=np.int32)
        val = np.empty(offs[-1], dtype=lut.dtype)
        cnt = np.zeros(len(Ws), dtype=np.int64)
        for i in range((n * s) // nslots, (n * (s + 1)) // nslots):
            z = _row_forward(Ws, bs, indices, values, lut, indptr[i], indptr[i + 1], acts, offs, idx,
                             val, cnt)
            k = z.shape[0]
            mx = z[0]
            for m in range(1, k):
                if z[m] > mx:
                    mx = z[m]
            tot = 0.0
            for m in range(k):
                e = np.exp(z[m] - mx)
                P[i, m] = e
                tot += e
            for m in range(k):
                P[i, m] = P[i, m] / tot


# ----------------------------------------------------------------------------------------------
# the update: the same rules as reference.update, one fused pass per array

_OPT_CODE = {"gd": 0, "sgd": 0, "momentum": 1, "nesterov": 2, "adam": 3}


@njit(inline="always", **_STRICT)
def _opt_rule(w, g, m, v, code, lr, hp, c1, c2):
    """One optimizer step on the 1-D arrays w (in place), with gradient g and state m, v (used as
    the rule needs: v for momentum/nesterov, m and v for adam; otherwise untouched).
    hp = [momentum, beta1, 1 - beta1, beta2, 1 - beta2, eps] in w's dtype; c1, c2 are Adam's
    bias corrections 1 - beta^t. Each rule is its own loop, so each vectorizes."""
    n = w.shape[0]
    if code == 0:
        for j in range(n):
            w[j] -= lr * g[j]
    elif code == 1:
        mu = hp[0]
        for j in range(n):
            v[j] = v[j] * mu + g[j]
            w[j] -= lr * v[j]
    elif code == 2:
        mu = hp[0]
        for j in range(n):
            v[j] = v[j] * mu + g[j]
            w[j] -= lr * (g[j] + mu * v[j])
    else:
        b1, ob1, b2, ob2, eps = hp[1], hp[2], hp[3], hp[4], hp[5]
        for j in range(n):
            m[j] = m[j] * b1 + ob1 * g[j]
            v[j] = v[j] * b2 + ob2 * g[j] * g[j]
            w[j] -= lr * (m[j] / c1) / (np.sqrt(v[j] / c2) + eps)


@njit(parallel=True, **_STRICT)
def _update_from_slots(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lr, hp, wd, c1, c2):
    """The optimizer step fused with the sum of the slot partials, row by row: slot 0's row
    receives the other slots' rows (in slot order), then weight decay (weights only), then the
    rule. No separate gradient array is written; the next step's slots zero their partials.
    prange over weight rows: each thread owns its rows."""
    use_m = code == 3
    use_v = code != 0
    for l in range(len(Ws)):
        W = Ws[l]
        pW = pWs[l]
        nslots = pW.shape[0]
        for k in prange(W.shape[0]):
            w = W[k]
            g = pW[0, k]
            for s in range(1, nslots):
                gs = pW[s, k]
                for j in range(g.shape[0]):
                    g[j] += gs[j]
            if wd != 0:
                for j in range(g.shape[0]):
                    g[j] += wd * w[j]
            m = mWs[l][k] if use_m else w
            v = vWs[l][k] if use_v else w
            _opt_rule(w, g, m, v, code, lr, hp, c1, c2)
        pb = pbs[l]
        gb = pb[0]
        for s in range(1, nslots):
            for j in range(gb.shape[0]):
                gb[j] += pb[s, j]
        b = bs[l]
        _opt_rule(b, gb, mbs[l] if use_m else b, vbs[l] if use_v else b, code, lr, hp, c1, c2)


@njit(**_STRICT)
def _update_all(Ws, bs, gWs, gbs, mWs, mbs, vWs, vbs, code, lr, hp, wd, c1, c2):
    """The optimizer step from full gradients (the public ``update``): the same rule."""
    use_m = code == 3
    use_v = code != 0
    for l in range(len(Ws)):
        w = Ws[l].reshape(-1)
        g = gWs[l].reshape(-1) + wd * w
        m = mWs[l].reshape(-1) if use_m else w
        v = vWs[l].reshape(-1) if use_v else w
        _opt_rule(w, g, m, v, code, lr, hp, c1, c2)
        b = bs[l]
        _opt_rule(b, gbs[l], mbs[l] if use_m else b, vbs[l] if use_v else b, code, lr, hp, c1, c2)


# ----------------------------------------------------------------------------------------------
# whole training loops in compiled code


@njit(**_FAST)
def _gd_loop(Ws, WTs, bs, indptr, indices, values, lut, y, rows, inv_n, offs, pWs, pbs,
             mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, losses):
    """len(lrs) full-batch steps: gradients of all rows, then the update. losses[i] is step i's
    mean loss, before its update."""
    for it in range(lrs.shape[0]):
        total = _slots_kernel(Ws, WTs, bs, indptr, indices, values, lut, y, rows, inv_n, offs, pWs, pbs)
        losses[it] = total / rows.shape[0]
        _update_from_slots(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lrs[it], hp, wd, c1s[it],
                           c2s[it])
        _transpose_into(WTs, Ws)


@njit(**_FAST)
def _sgd_loop(Ws, WTs, bs, indptr, indices, values, lut, y, perm, batch, offs, inv_ns, pWs, pbs,
              mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s, losses):
    """One epoch of mini-batch steps over the rows in the order perm (the shuffle is the
    caller's). Step i takes perm[i*batch:(i+1)*batch]; losses[i] is its mean loss."""
    n = perm.shape[0]
    for it in range(lrs.shape[0]):
        r0 = it * batch
        r1 = min(n, r0 + batch)
        total = _slots_kernel(Ws, WTs, bs, indptr, indices, values, lut, y, perm[r0:r1], inv_ns[it],
                              offs, pWs, pbs)
        losses[it] = total / (r1 - r0)
        _update_from_slots(Ws, bs, pWs, pbs, mWs, mbs, vWs, vbs, code, lrs[it], hp, wd, c1s[it],
                           c2s[it])
        _transpose_into(WTs, Ws)


# ----------------------------------------------------------------------------------------------
# the public functions: same signatures and meanings as reference.py


def _nslots(n: int) -> int:
    return int(max(1, min(NSLOTS, n // MIN_SLOT_ROWS)))


def _offsets(params: Params) -> np.ndarray:
    """Where each layer's output starts in the per-row scratch vector."""
    return np.concatenate([[0], np.cumsum(params.sizes[1:])]).astype(np.int64)


class _Workspace:
    """Gradient outputs and per-slot partials for a given architecture, dtype and slot count."""

    def __init__(self, params: Params, nslots: int):
        self.grads = params.zeros_like()
        self.pWs = tuple(np.zeros((nslots,) + W.shape, W.dtype) for W in params.weights)
        self.pbs = tuple(np.zeros((nslots,) + b.shape, b.dtype) for b in params.biases)
        self.offs = _offsets(params)


def _tuples(params: Params):
    return tuple(params.weights), tuple(params.biases)


def forward(params: Params, X):
    """Run the network up to the logits: [A0 = X, A1, ..., A(L-1), Z(L-1)], as the reference.

    X: dense float (n, 784) in the params' dtype, or a CSR. A0 is returned as given.
    """
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    outs = tuple(np.empty((n, m), params.dtype) for m in params.sizes[1:])
    Ws, bs = _tuples(params)
    _forward_kernel(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, _offsets(params), outs)
    return [X] + list(outs)


def loss_and_grads(params: Params, X, y):
    """Mean cross-entropy of the batch and its gradients (a Params), as the reference.

    X: dense float (n, 784) in the params' dtype (compressed on the way in), or a CSR from
    ``prepare``/``to_csr`` (the fast path for repeated calls on the same data).
    """
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    y = check_y(y, n, params.sizes[-1])
    ws = _Workspace(params, _nslots(n))
    Ws, bs = _tuples(params)
    gWs, gbs = _tuples(ws.grads)
    inv_n = params.dtype.type(1.0 / n)
    rows = np.arange(n, dtype=np.int64)
    total = _slots_kernel(Ws, _transposes(params), bs, csr.indptr, csr.indices, csr.values, csr.lut, y,
                          rows, inv_n, ws.offs, ws.pWs, ws.pbs)
    _sum_slots(ws.pWs, ws.pbs, gWs, gbs)
    return total / n, ws.grads


def predict_proba(params: Params, X):
    """Class probabilities, shape (n, 10), each row summing to 1."""
    check_params(params)
    csr = _as_csr(X, params)
    P = np.empty((len(csr), params.sizes[-1]), params.dtype)
    Ws, bs = _tuples(params)
    _proba_kernel(Ws, bs, csr.indptr, csr.indices, csr.values, csr.lut, _offsets(params), P)
    return P


def predict(params: Params, X):
    """Predicted class per row, shape (n,), int64."""
    return predict_proba(params, X).argmax(axis=1)


def accuracy(params: Params, X, y) -> float:
    """Fraction of rows whose prediction equals the label."""
    y = check_y(y, len(X) if not isinstance(X, CSR) else len(X))
    return float((predict(params, X) == y).mean())


def _opt_args(params: Params, state, optimizer, lrs, t0, momentum=0.9, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0):
    """Everything the compiled update needs, as arrays in the params' dtype."""
    if optimizer not in _OPT_CODE:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    dt = params.dtype
    L = len(params.weights)
    k = 2 * L
    empty2, empty1 = np.zeros((0, 0), dt), np.zeros(0, dt)
    if optimizer == "adam":
        mWs, mbs = tuple(state[0:k:2]), tuple(state[1:k:2])
        vWs, vbs = tuple(state[k::2]), tuple(state[k + 1::2])
    elif optimizer in ("momentum", "nesterov"):
        mWs, mbs = (empty2,) * L, (empty1,) * L
        vWs, vbs = tuple(state[0:k:2]), tuple(state[1:k:2])
    else:
        mWs, mbs, vWs, vbs = (empty2,) * L, (empty1,) * L, (empty2,) * L, (empty1,) * L
    lrs = np.asarray(lrs, dtype=np.float64)
    t = t0 + 1 + np.arange(len(lrs))
    c1s = np.array([1 - beta1 ** ti for ti in t], dtype=dt)
    c2s = np.array([1 - beta2 ** ti for ti in t], dtype=dt)
    hp = np.array([momentum, beta1, 1 - beta1, beta2, 1 - beta2, eps], dtype=dt)
    return (mWs, mbs, vWs, vbs, _OPT_CODE[optimizer], lrs.astype(dt), hp, dt.type(weight_decay),
            c1s, c2s)


def update(params: Params, grads: Params, state, lr, t=1, optimizer="sgd", **hyper):
    """One optimizer step in place, the same rules as ``reference.update``."""
    opt = _opt_args(params, state, optimizer, [lr], t - 1, **hyper)
    mWs, mbs, vWs, vbs, code, lrs, hp, wd, c1s, c2s = opt
    Ws, bs = _tuples(params)
    gWs, gbs = _tuples(grads)
    _update_all(Ws, bs, gWs, gbs, mWs, mbs, vWs, vbs, code, lrs[0], hp, wd, c1s[0], c2s[0])


def gd_steps(params, state, X, y, lrs, t0=0, optimizer="gd", **hyper):
    """len(lrs) full-batch steps in compiled code (the twin of reference.gd_steps).
    X is a CSR (from ``prepare``) or dense float. Returns each step's loss, float64."""
    csr = _as_csr(X, params)
    n = len(csr)
    y = check_y(y, n, params.sizes[-1])
    ws = _Workspace(params, _nslots(n))
    Ws, bs = _tuples(params)
    losses = np.empty(len(lrs))
    rows = np.arange(n, dtype=np.int64)
    _gd_loop(Ws, _transposes(params), bs, csr.indptr, csr.indices, csr.values, csr.lut, y, rows, params.dtype.type(1.0 / n),
             ws.offs, ws.pWs, ws.pbs, *_opt_args(params, state, optimizer, lrs, t0, **hyper),
             losses)
    return losses


def sgd_epoch(params, state, X, y, perm, batch_size, lrs, t0=0, optimizer="sgd", **hyper):
    """One epoch of mini-batch steps in compiled code (the twin of reference.sgd_epoch): the
    rows in the order ``perm``, batches of ``batch_size``; step i uses lrs[i]."""
    csr = _as_csr(X, params)
    y = check_y(y, len(csr), params.sizes[-1])
    perm = np.ascontiguousarray(perm, dtype=np.int64)
    n = len(perm)
    steps = -(-n // batch_size)
    if len(lrs) != steps:
        raise ValueError(f"lrs must hold one learning rate per step ({steps}); got {len(lrs)}")
    sizes = np.minimum(batch_size, n - batch_size * np.arange(steps))
    inv_ns = (1.0 / sizes).astype(params.dtype)
    ws = _Workspace(params, _nslots(batch_size))
    Ws, bs = _tuples(params)
    losses = np.empty(steps)
    _sgd_loop(Ws, _transposes(params), bs, csr.indptr, csr.indices, csr.values, csr.lut, y, perm, batch_size, ws.offs, inv_ns,
              ws.pWs, ws.pbs, *_opt_args(params, state, optimizer, lrs, t0, **hyper),
              losses)
    return losses
