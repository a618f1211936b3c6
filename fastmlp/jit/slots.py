"""Whole batches through the network in parallel *slots*: the forward kernel (forward, predict),
loss_and_grads, and the full-batch and large-mini-batch training loops.

Legend (the named tuples are in _types.py)
------
    net      Net: the weights and biases and the layer offsets (L = len(net.offs) - 1 layers)
    part     Grads of per-slot partials: part.W[l] is (nslots, fan_in, fan_out)
    scr      Scratch: per-slot block scratch; scr.AT[s] is slot s's activations
    X        the CSR as the kernels take it (csr.KernelCSR: indptr, indices, pixels, values, lut,
             n_cols)
    rows     the batch's row numbers into the CSR; shifts (len(rows), 2) int8 or empty
    bands    the first layer's pixel bands (sparse._band_cuts), or none

A batch's rows are cut into a fixed number of contiguous slots (NSLOTS, independent of the
thread count); ``_slots_loop`` pranges over slots, each slot owns its partials, and the
partials are summed in slot order afterwards: no races, the same bits for any thread count.
``_forward_kernel`` pranges over row ranges (each owns its output rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._options import BLOCK, FAST, NSLOTS_FWD, STRICT
from .csr import _densest_row
from .sparse import (_block_entries, _by_pixel, _first_layer, _full_run, _sparse_matmul_add,
                     _sparse_outer)
from .dense import (_argmax_rows, _block_backward_dense, _block_forward_dense, _block_softmax,
                    _block_softmax_xent, _clear_argmax, _to_features, _to_rows)
from .optim import _update_from_slots
from ._types import Grads, Net, Scratch


@njit(inline="always", **FAST)
def _block_forward(AT, zrow, net, X, rng, idx, pix, val, bands, rows, b0, nb):
    """Forward one block (its inputs found by _block_entries, the CSR's rows rows[b0:b0+nb])
    through the network. With bands (_band_cuts; none if it has no rows, and none for shifted
    images, whose entries are block-local copies) the first layer runs band by band.

    zrow (BLOCK, sizes[1]) is scratch for the sparse first layer, computed row by row. After it,
    the block is kept *feature-major*: AT[offs[l]:offs[l+1], :nb] holds layer l's output for the
    block, one row per unit (ReLU applied for hidden layers; the last layer's rows are logits).
    Then every dense layer is a sum of long vector updates along the block
    (ZT[m, :] += W[k, m] * AT[k, :]), which vectorizes fully whatever the layer widths, and a
    unit that is inactive for the whole block is skipped.
    """
    offs = net.offs
    _first_layer(zrow, net.W[0], net.b[0], rng, bands, rows, b0, idx, pix, val, X.lut, nb)
    _to_features(AT[offs[0]:offs[1]], zrow, 0, nb)
    _block_forward_dense(net.W, net.b, nb, offs, AT)


@njit(inline="always", **FAST)
def _block_backward(part, scr, dzrow, net, X, rng, idx, pix, val, AT, dZT, s, nb):
    """Add the block's gradients into slot s of the partials, from dZT (the output layer's
    dL/dZ, feature-major) down to the first layer. Layers in reverse order of the forward pass:

        dW[l][k, m] += sum_t A[k, t] dZ[m, t]      db[l][m] += sum_t dZ[m, t]
        dA[k, t]     = sum_m W[k, m] dZ[m, t]      dZ_below = dA where A > 0 (the ReLU mask)

    The first layer's gradient is the sparse x.T @ dz per row (dzrow: the block's dZ row-major),
    or by pixel where scr has the arrays for it (see sparse._by_pixel_pays). The input layer's
    dA is never formed.
    """
    _block_backward_dense(net.W, nb, net.offs, AT, dZT, part.W, part.b, s, dzrow)
    if scr.crng.shape[2] > 0 and _full_run(rng, idx, X.lut, nb)[1] == 0:
        n_in = net.W[0].shape[0]      # by pixel (sparse._by_pixel_pays): the same bits
        crng, cidx, cpix, cval = scr.crng[s], scr.cidx[s], scr.cpix[s], scr.cval[s]
        _by_pixel(crng, cidx, cpix, cval, rng, idx, pix, val, X.lut.shape[0] != 0, nb, 0, n_in)
        _sparse_matmul_add(part.W[0][s], dzrow, crng, cidx, cpix, cval, X.lut, n_in)
    else:
        _sparse_outer(part.W[0][s], rng, idx, pix, val, X.lut, nb, dzrow)


@njit(**STRICT)
def _alloc_scratch(net, X, nslots, by_pixel):
    """Per-slot scratch for the block kernels (a Scratch), in the working dtype (the CSR's).
    Allocated once per call of a kernel or a training loop, not once per step; room for BLOCK of
    the densest row's entries (a shifted image never has more non-zero pixels than the
    original); the by-pixel arrays only with by_pixel (else empty). Allocated in compiled code:
    a tuple of arrays passed from Python costs a few microseconds per array at every call,
    which small batches feel."""
    cap = BLOCK * _densest_row(X.indptr)
    dt = X.values.dtype
    pixels = X.lut.shape[0] != 0
    units = net.offs[-1]
    bycap = cap if by_pixel else 0
    return Scratch(np.empty((nslots, BLOCK, net.W[0].shape[1]), dtype=dt),
                   np.empty((nslots, units, BLOCK), dtype=dt),
                   np.empty((nslots, units, BLOCK), dtype=dt),
                   np.empty((nslots, 2, BLOCK), dtype=dt), np.empty((nslots, 2, BLOCK), dtype=np.int64),
                   np.empty((nslots, cap), dtype=X.indices.dtype),
                   np.empty((nslots, cap if pixels else 0), dtype=np.uint8),
                   np.empty((nslots, 0 if pixels else cap), dtype=dt),
                   np.empty((nslots, 2, net.W[0].shape[0] if by_pixel else 0), dtype=np.int64),
                   np.empty((nslots, bycap), dtype=X.indices.dtype),
                   np.empty((nslots, bycap if pixels else 0), dtype=np.uint8),
                   np.empty((nslots, 0 if pixels else bycap), dtype=dt))


@njit(inline="always", **FAST)
def _slot_grads(part, scr, net, X, y, rows, shifts, bands, inv_n, s, r0, r1):
    """Forward and backward rows[r0:r1], block by block, into slot s of the partials.
    Returns the slot's summed cross-entropy (float64).

    The slot first zeroes its own partials and reads the weights once in order. Both are cache
    work, not arithmetic: after an update on the other core, the weights and partials live in
    that core's cache, and fetching them in one sequential sweep (which the prefetcher streams)
    is far cheaper than the random row accesses of the sparse products fetching them line by line.
    """
    touched = _warm_slot(part, net, s)
    zrow, AT, dZT, colmax, colsum = scr.zrow[s], scr.AT[s], scr.dZT[s], scr.col[s, 0], scr.col[s, 1]
    rng, bidx, bpix, bval = scr.rng[s], scr.idx[s], scr.pix[s], scr.val[s]
    offs = net.offs
    L = net.offs.shape[0] - 1
    loss = 0.0 * touched
    for b0 in range(r0, r1, BLOCK):
        nb = min(BLOCK, r1 - b0)
        idx, pix, val = _block_entries(rng, bidx, bpix, bval, X, X.indptr[:-1], X.indptr[1:],
                                       rows, shifts, b0, nb, 0, net.W[0].shape[0])
        _block_forward(AT, zrow, net, X, rng, idx, pix, val,
                       bands if shifts.shape[0] == 0 else bands[:0], rows, b0, nb)
        loss += _block_softmax_xent(AT[offs[L - 1]:offs[L]], y, rows, b0, nb, inv_n,
                                    dZT[offs[L - 1]:offs[L]], colmax, colsum)
        _block_backward(part, scr, zrow, net, X, rng, idx, pix, val, AT, dZT, s, nb)
    return loss


@njit(**STRICT)
def _warm_slot(part, net, s):
    """Zero slot s's partials and read every cache line of the weights once, in order.
    Returns a number derived from the reads (0.0 unless a weight is not finite), so that the
    reads are not optimised away."""
    L = net.offs.shape[0] - 1
    for l in range(L):
        part.W[l][s][:] = 0
        part.b[l][s][:] = 0
    acc = 0.0
    for l in range(L):
        w = net.W[l].reshape(-1)
        for q in range(0, w.shape[0], 8):
            acc += w[q] * 0.0
    return acc


@njit(**STRICT)
def _sum_slots(grads, part):
    """grads.W[l] = sum over s of part.W[l][s], in slot order (deterministic); the same for the
    biases. Serial: it moves at most a few hundred KB, less than starting a parallel region costs."""
    nslots = part.W[0].shape[0]
    for l in range(len(grads.W)):       # (the padding's empty arrays cost nothing)
        gW = grads.W[l]
        pW = part.W[l]
        for k in range(gW.shape[0]):
            for m in range(gW.shape[1]):
                gW[k, m] = pW[0, k, m]
            for s in range(1, nslots):
                for m in range(gW.shape[1]):
                    gW[k, m] += pW[s, k, m]
        gb = grads.b[l]
        pb = part.b[l]
        for m in range(gb.shape[0]):
            acc = pb[0, m]
            for s in range(1, nslots):
                acc += pb[s, m]
            gb[m] = acc


@njit(parallel=True, **FAST)
def _forward_kernel(outs, labels, net, X, bands, proba):
    """Forward every row. With proba False: outs[l] (n, sizes[l+1]) receives layer l's output
    (logits for the last). With proba True: outs[-1] (n, 10) receives the softmax probabilities
    and the hidden layers are not stored (their outs are empty (0, sizes[l+1]) arrays: one tuple
    type for both uses, so forward and predict_proba share one compiled kernel). If labels has
    n entries (else it is empty), it receives each row's most probable class instead, found by
    the thread that owns the row: read from the logits where the largest is clear of the others
    (_clear_argmax; no exp, no division, no probabilities written), else the first maximum of
    the row's probabilities, which are then computed and written to outs[-1] for that block
    only. The first layer runs in pixel bands (bands: _band_cuts; none if it has no rows).
    The rows are cut into up to NSLOTS_FWD ranges, run in parallel (each owns its output rows).

    The scratch is unpacked before the prange and its tuple built again inside: a prange body
    takes a named tuple made outside it only as an argument of its function (see _types). (It
    was a second kernel: one more level of compiling, 5 s per dtype, for the same code.)"""
    n = X.indptr.shape[0] - 1
    nslots = min(NSLOTS_FWD, (n + BLOCK - 1) // BLOCK)
    zrow, AT, dZT, col, rng, idx, pix, val, crng, cidx, cpix, cval = _alloc_scratch(net, X, nslots,
                                                                                  False)
    rows = np.empty(n, dtype=np.int64)     # the identity: row numbers for _block_entries (a
    for i in range(n):                     # loop: np.arange would be a parallel region of its own)
        rows[i] = i
    W, b, offs = net          # (see _slots_loop)
    for i in prange(nslots):
        s = np.int64(i)
        _forward_range(outs, labels, Scratch(zrow, AT, dZT, col, rng, idx, pix, val, crng, cidx,
                                             cpix, cval),
                       Net(W, b, offs), X, rows, bands, proba, s,
                       (n * s) // nslots, (n * (s + 1)) // nslots)


@njit(inline="always", **FAST)
def _forward_range(outs, labels, scr, net, X, rows, bands, proba, s, r0, r1):
    """_forward_kernel's work on rows r0:r1, with slot s's scratch."""
    offs = net.offs
    L = net.offs.shape[0] - 1
    zrow, AT, colmax, colsum = scr.zrow[s], scr.AT[s], scr.col[s, 0], scr.col[s, 1]
    rng, bidx, bpix, bval = scr.rng[s], scr.idx[s], scr.pix[s], scr.val[s]
    no_shifts = np.zeros((0, 2), dtype=np.int8)
    for b0 in range(r0, r1, BLOCK):
        nb = min(BLOCK, r1 - b0)
        idx, pix, val = _block_entries(rng, bidx, bpix, bval, X, X.indptr[:-1], X.indptr[1:],
                                       rows, no_shifts, b0, nb, 0, net.W[0].shape[0])
        _block_forward(AT, zrow, net, X, rng, idx, pix, val, bands, rows, b0, nb)
        if proba:
            Z = AT[offs[L - 1]:offs[L]]
            if labels.shape[0] > 0 and _clear_argmax(Z, nb, colmax, labels[b0:b0 + nb]):
                continue                # the block's classes, read from the logits
            _block_softmax(Z, nb, Z, colmax, colsum)
            for m in range(Z.shape[0]):
                z = Z[m]
                for t in range(nb):
                    z[t] = z[t] / colsum[t]
            P = outs[L - 1]
            _to_rows(P, b0, Z, nb)
            if labels.shape[0] > 0:
                _argmax_rows(P, b0, b0 + nb, labels)
        else:
            for l in range(L):
                o = outs[l]
                Z = AT[offs[l]:offs[l + 1]]
                _to_rows(o, b0, Z, nb)


@njit(parallel=True, **FAST)
def _slots_loop(losses, grads, net, part, opt, steps, X, y, perm, shifts, bands, inv_ns, batch,
                update, by_pixel):
    """len(steps.lr) steps over the rows perm (row numbers into the CSR), batch rows each: step
    i takes perm[r0:r0 + batch] with r0 = i * batch modulo len(perm), so batch = len(perm)
    takes every row at every step (the full-batch loop); losses[i] is its mean loss. With
    update, each step's gradient updates net (opt's rule, steps' rates); without it (one step:
    loss_and_grads) the gradient is summed into grads and nothing is updated. One kernel for
    the three uses: each compiled kernel holds the whole slot step (blocks, sparse first layer)
    again, 10-20 s of compiling per dtype. (shifts: an empty array when none, passed in rather
    than taken from a global, whose type would be a read-only array, and would compile the
    whole chain of kernels a second time for it.) by_pixel: the first layer's weight gradient
    by pixel (sparse._by_pixel_pays for blocks of BLOCK rows).

    Each step's gradients are left as per-slot partials: part.W[l] has shape (nslots, fan_in,
    fan_out); a prange over slots, slot s taking a contiguous share of the step's rows and
    owning part.W[l][s] (each zeroes its own first): nothing is shared, so there are no races,
    and the split does not depend on the number of threads. The prange is in this kernel
    itself, not in one it calls: each level of compiled kernels optimizes and emits the slot
    step's code again. The scratch and the named tuples are unpacked before it and built
    again inside (a prange body takes a named tuple made outside it only as an argument of its
    function: see _types)."""
    nslots = part.W[0].shape[0]
    zrow, AT, dZT, col, rng, idx, pix, val, crng, cidx, cpix, cval = _alloc_scratch(net, X, nslots,
                                                                                  by_pixel)
    W, b, offs = net
    pW, pb = part
    slot_loss = np.zeros(nslots)
    n = perm.shape[0]
    for it in range(steps.lr.shape[0]):
        r0 = (it * batch) % n
        r1 = min(n, r0 + batch)
        rows = perm[r0:r1]
        sh = shifts[r0:r1] if shifts.shape[0] else shifts
        m = r1 - r0
        inv_n = inv_ns[it]
        for i in prange(nslots):
            s = np.int64(i)      # (a prange index is uint64 in the parallel code and int64 when typed
            a = (m * s) // nslots                 # as a plain loop: without the cast every callee
            c = (m * (s + 1)) // nslots           # is compiled twice, once for each)
            scr = Scratch(zrow, AT, dZT, col, rng, idx, pix, val, crng, cidx, cpix, cval)
            slot_loss[s] = _slot_grads(Grads(pW, pb), scr, Net(W, b, offs), X, y, rows, sh, bands,
                                       inv_n, s, a, c)
        total = 0.0
        for s in range(nslots):
            total += slot_loss[s]
        losses[it] = total / m
        if update:
            _update_from_slots(net, part, opt, steps.lr[it], steps.c1[it], steps.c2[it])
        else:
            _sum_slots(grads, part)
