"""The dense layers on feature-major blocks, the softmax and cross-entropy, and the transposes
between row-major and feature-major blocks.

Legend
------
    AT, ZT   feature-major activations / pre-activations: one row per unit, one column per sample
             of the block (units, BLOCK); AT[offs[l]:offs[l + 1]] is layer l's output
    dZT      dL/dZ, feature-major, the same layout
    offs     where each layer's units start in AT (cumulative layer widths)
    nb       samples in the block (the first nb columns are used)
    d*       dL/d* throughout (dA, dZ, gW for dL/dW)

Every dense product is a sum of long vector updates along the block, whatever the layer widths.
Nothing here runs in parallel itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload

from ._options import FAST, LEAF, LOGIT_GAP, STRICT
from ._codegen import _tile_arrays_ok, _tile_ir, _tile_sum_ir, _zero_of


# Transposes between row-major blocks (one row per sample: the sparse layer's output, dL/dZ for
# its gradient) and feature-major ones (one row per unit: the dense layers). An element loop
# strides through memory on one side, a few cycles per element; an 8 x 8 tile transposed in
# registers (eight vector loads, 24 shuffles, eight vector stores) moves a block several times
# faster. Compiled code runs the IR tiles below; without the JIT the Python bodies run.


def _transpose_tile(dst, dr, dc, src, sr, sc):
    """dst[dr + c, dc + r] = src[sr + r, sc + c] for r, c < 8."""
    for r in range(8):
        for c in range(8):
            dst[dr + c, dc + r] = src[sr + r, sc + c]


def _transpose_tile_sum(dst, dr, dc, src, src2, bias, sr, sc):
    """dst[dr + c, dc + r] = (src[sr + r, sc + c] + src2[sr + r, sc + c]) + bias[sc + c]."""
    for r in range(8):
        for c in range(8):
            dst[dr + c, dc + r] = (src[sr + r, sc + c] + src2[sr + r, sc + c]) + bias[sc + c]


@overload(_transpose_tile, inline="always", jit_options=FAST)
def _transpose_tile_impl(dst, dr, dc, src, sr, sc):
    if _tile_arrays_ok(dst, src):
        return lambda dst, dr, dc, src, sr, sc: _tile_ir(dst, dr, dc, src, sr, sc)
    return _transpose_tile


@overload(_transpose_tile_sum, inline="always", jit_options=STRICT)
def _transpose_tile_sum_impl(dst, dr, dc, src, src2, bias, sr, sc):
    if _tile_arrays_ok(dst, src, src2, bias):
        return lambda dst, dr, dc, src, src2, bias, sr, sc: _tile_sum_ir(
            dst, dr, dc, src, src2, bias, sr, sc)
    return _transpose_tile_sum


@njit(**FAST)
def _to_features(Z, src, s0, n):
    """Z[k, t] = src[s0 + t, k] for t < n, k < Z.shape[0]: n rows of src, feature-major."""
    H = Z.shape[0]
    n8, H8 = n - n % 8, H - H % 8
    for t0 in range(0, n8, 8):
        for k0 in range(0, H8, 8):
            _transpose_tile(Z, k0, t0, src, s0 + t0, k0)
    for k in range(H8, H):
        for t in range(n8):
            Z[k, t] = src[s0 + t, k]
    for k in range(H):
        for t in range(n8, n):
            Z[k, t] = src[s0 + t, k]


@njit(**STRICT)
def _to_features_sum(Z, src, src2, bias, s0, n):
    """Z[k, t] = (src[s0 + t, k] + src2[s0 + t, k]) + bias[k], as _to_features. Strict: with
    fast-math flags (which Numba sets on every instruction of a kernel, the IR tile's included)
    the compiler may add the bias first."""
    H = Z.shape[0]
    n8, H8 = n - n % 8, H - H % 8
    for t0 in range(0, n8, 8):
        for k0 in range(0, H8, 8):
            _transpose_tile_sum(Z, k0, t0, src, src2, bias, s0 + t0, k0)
    for k in range(H8, H):
        for t in range(n8):
            Z[k, t] = (src[s0 + t, k] + src2[s0 + t, k]) + bias[k]
    for k in range(H):
        for t in range(n8, n):
            Z[k, t] = (src[s0 + t, k] + src2[s0 + t, k]) + bias[k]


@njit(**FAST)
def _to_rows(dst, d0, Z, n):
    """dst[d0 + t, k] = Z[k, t] for t < n, k < Z.shape[0]: a feature-major block back to rows."""
    H = Z.shape[0]
    n8, H8 = n - n % 8, H - H % 8
    for t0 in range(0, n8, 8):
        for k0 in range(0, H8, 8):
            _transpose_tile(dst, d0 + t0, k0, Z, k0, t0)
    for t in range(n8):
        for k in range(H8, H):
            dst[d0 + t, k] = Z[k, t]
    for t in range(n8, n):
        for k in range(H):
            dst[d0 + t, k] = Z[k, t]


@njit(**FAST)
def _block_forward_dense(Ws, bs, nb, offs, AT):
    """The block's layers after the first, given the first layer's pre-activations (feature-
    major) in AT[offs[0]:offs[1], :nb]: ReLU, then each dense layer (ReLU on all but the last)."""
    L = offs.shape[0] - 1
    if L > 1:
        _relu_rows(AT[offs[0]:offs[1]], nb)
    for l in range(1, L):
        _dense_forward(Ws[l], bs[l], AT[offs[l - 1]:offs[l]], AT[offs[l]:offs[l + 1]], nb)
        if l < L - 1:
            _relu_rows(AT[offs[l]:offs[l + 1]], nb)


@njit(**LEAF)
def _dense_forward(W, b, A, Z, nb):
    """Z[:, :nb] = W.T @ A[:, :nb] + b for feature-major A (fan_in, BLOCK), Z (fan_out, BLOCK).

    Each output row is a sum of long vector updates along the block. One pass along the block
    reads four input rows and updates two output rows: eight multiply-adds per six loads and
    two stores (one input row per pass would be bound by loads and stores, not arithmetic). The
    eight weights are read into scalars before the pass, where the compiler can keep them in
    registers (it cannot prove that writing z leaves W unchanged, so W[k, m] inside the loop
    would be re-read at every t)."""
    fan_in, fan_out = W.shape
    for m in range(0, fan_out - 1, 2):
        z0 = Z[m]
        z1 = Z[m + 1]
        b0 = b[m]
        b1 = b[m + 1]
        for t in range(nb):
            z0[t] = b0
            z1[t] = b1
        k = 0
        while k + 4 <= fan_in:
            a0, a1, a2, a3 = A[k], A[k + 1], A[k + 2], A[k + 3]
            u0, u1, u2, u3 = W[k, m], W[k + 1, m], W[k + 2, m], W[k + 3, m]
            v0, v1, v2, v3 = W[k, m + 1], W[k + 1, m + 1], W[k + 2, m + 1], W[k + 3, m + 1]
            for t in range(nb):
                x0 = a0[t]
                x1 = a1[t]
                x2 = a2[t]
                x3 = a3[t]
                z0[t] += (u0 * x0 + u1 * x1) + (u2 * x2 + u3 * x3)
                z1[t] += (v0 * x0 + v1 * x1) + (v2 * x2 + v3 * x3)
            k += 4
        for k in range(k, fan_in):
            a0 = A[k]
            u0 = W[k, m]
            v0 = W[k, m + 1]
            for t in range(nb):
                z0[t] += u0 * a0[t]
                z1[t] += v0 * a0[t]
    if fan_out % 2:                           # an odd last output row, on its own
        m = fan_out - 1
        z0 = Z[m]
        b0 = b[m]
        for t in range(nb):
            z0[t] = b0
        for k in range(fan_in):
            a0 = A[k]
            u0 = W[k, m]
            for t in range(nb):
                z0[t] += u0 * a0[t]


@njit(**FAST)
def _relu_rows(Z, nb):
    """In place on Z[:, :nb]: negative entries become 0 (NaN stays NaN, as with np.maximum)."""
    for k in range(Z.shape[0]):
        z = Z[k]
        for t in range(nb):
            if z[t] < 0:
                z[t] = 0


@njit(**FAST)
def _any_nonzero(a, nb):
    for t in range(nb):
        if a[t] != 0:
            return True
    return False


@njit(inline="always", **FAST)
def _block_softmax(Z, nb, E, colmax, colsum):
    """Column-wise softmax numerators of the logits Z[:, :nb]: E = exp(Z - column max) (E may be
    Z itself); colmax and colsum receive each column's maximum and sum of E."""
    K = Z.shape[0]
    for t in range(nb):
        colmax[t] = Z[0, t]
        colsum[t] = 0
    for m in range(1, K):
        z = Z[m]
        for t in range(nb):
            if z[t] > colmax[t]:
                colmax[t] = z[t]
    for m in range(K):
        z = Z[m]
        e = E[m]
        for t in range(nb):
            v = np.exp(z[t] - colmax[t])
            e[t] = v
            colsum[t] += v


@njit(**FAST)
def _block_softmax_xent(ZT, y, rows, b0, nb, inv_n, dZT, colmax, colsum):
    """Softmax over each column of the logits ZT[:, :nb]. Returns the summed cross-entropy of
    the block (float64) and writes dZT[:, :nb] = (softmax - onehot(y)) * inv_n."""
    K = ZT.shape[0]
    _block_softmax(ZT, nb, dZT, colmax, colsum)
    loss = 0.0
    for t in range(nb):
        yi = y[rows[b0 + t]]
        loss += float(np.log(colsum[t])) + float(colmax[t]) - float(ZT[yi, t])
        colsum[t] = inv_n / colsum[t]
    for m in range(K):
        d = dZT[m]
        for t in range(nb):
            d[t] *= colsum[t]
    for t in range(nb):
        dZT[y[rows[b0 + t]], t] -= inv_n
    return loss


@njit(inline="always", **FAST)
def _add_row_sums(gb, dZ, nb):
    """gb[m] += sum of dZ[m, :nb] (a bias gradient from a feature-major block)."""
    for m in range(dZ.shape[0]):
        d = dZ[m]
        acc = _zero_of(d)
        for t in range(nb):
            acc += d[t]
        gb[m] += acc


@njit(**FAST)
def _block_backward_dense(Ws, nb, offs, AT, dZT, pWs, pbs, s, dZrow):
    """The backward of every layer but the first's weights: layers L-1..1 into slot s of the
    partials, the first layer's bias gradient, and the first layer's dL/dZ for the block
    written row-major into dZrow[:nb] (what the sparse weight gradient reads)."""
    L = offs.shape[0] - 1
    for l in range(L - 1, 0, -1):
        dZ = dZT[offs[l]:offs[l + 1]]
        _add_row_sums(pbs[l][s], dZ, nb)
        _dense_backward(Ws[l], AT[offs[l - 1]:offs[l]], dZ, dZT[offs[l - 1]:offs[l]], pWs[l][s], nb)
    dZ0 = dZT[offs[0]:offs[1]]
    _add_row_sums(pbs[0][s], dZ0, nb)
    _to_rows(dZrow, 0, dZ0, nb)


@njit(**LEAF)
def _dense_backward(W, A, dZ, dA, gW, nb):
    """One dense layer backward on a feature-major block: gW[k, m] += A[k, :nb] . dZ[m, :nb] and
    dA[k, :nb] = (W[k, :] @ dZ[:, :nb]) masked by A[k, :nb] > 0 (the ReLU below).

    Four output rows are taken per pass along the block: the pass reads a[t] and dA[t] once for
    four gradient dot products and four multiply-adds into dA. A unit k inactive for the whole
    block gets no gradient and dA = 0 without any arithmetic."""
    fan_in, fan_out = W.shape
    for k in range(fan_in):
        a = A[k]
        da = dA[k]
        for t in range(nb):
            da[t] = 0
        if not _any_nonzero(a, nb):
            continue
        m = 0
        while m + 4 <= fan_out:
            d0, d1, d2, d3 = dZ[m], dZ[m + 1], dZ[m + 2], dZ[m + 3]
            w0, w1, w2, w3 = W[k, m], W[k, m + 1], W[k, m + 2], W[k, m + 3]
            s0 = _zero_of(a)
            s1, s2, s3 = s0, s0, s0
            for t in range(nb):
                at = a[t]
                s0 += at * d0[t]
                s1 += at * d1[t]
                s2 += at * d2[t]
                s3 += at * d3[t]
                da[t] += (w0 * d0[t] + w1 * d1[t]) + (w2 * d2[t] + w3 * d3[t])
            gW[k, m] += s0
            gW[k, m + 1] += s1
            gW[k, m + 2] += s2
            gW[k, m + 3] += s3
            m += 4
        while m < fan_out:
            d0 = dZ[m]
            w0 = W[k, m]
            s0 = _zero_of(a)
            for t in range(nb):
                s0 += a[t] * d0[t]
                da[t] += w0 * d0[t]
            gW[k, m] += s0
            m += 1
        for t in range(nb):            # the ReLU mask from the forward output
            if not a[t] > 0:
                da[t] = 0


@njit(**FAST)
def _clear_argmax(Z, nb, colmax, out):
    """out[t] = the first row m with the largest Z[m, t] (t < nb), for feature-major logits Z.
    Returns True when that is provably predict_proba's argmax in every column: the largest logit
    is finite and every other one is at least LOGIT_GAP below it, so its probability is strictly
    the largest, bit for bit. Otherwise (near-ties, equal logits, inf or NaN) False: the caller
    computes the probabilities and takes their first maximum, as NumPy's argmax does."""
    K = Z.shape[0]
    gap = Z.dtype.type(LOGIT_GAP)
    z = Z[0]
    for t in range(nb):
        colmax[t] = z[t]
        out[t] = 0
    for m in range(1, K):
        z = Z[m]
        for t in range(nb):
            if z[t] > colmax[t]:
                colmax[t] = z[t]
                out[t] = m
    unclear = 0
    for m in range(K):
        z = Z[m]
        for t in range(nb):
            d = colmax[t] - z[t]                # 0 for the largest itself, NaN if it is inf
            ok = d == 0 if out[t] == m else d >= gap
            unclear += not ok
    return unclear == 0


@njit(**STRICT)
def _argmax_rows(P, r0, r1, out):
    """out[i] = P[i].argmax() for r0 <= i < r1 (the first maximum; NaN counts as a maximum, as in
    NumPy), without NumPy's per-row overhead."""
    for i in range(r0, r1):
        best = 0
        for m in range(1, P.shape[1]):
            if P[i, m] > P[i, best] or (np.isnan(P[i, m]) and not np.isnan(P[i, best])):
                best = m
        out[i] = best
