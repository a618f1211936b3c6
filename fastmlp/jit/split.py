"""The mini-batch epoch with the step split by pixels: each core keeps its half of the first
layer's weights (and their gradient and optimizer state) for the whole epoch.

Legend
------
    h, k      a half: 0 owns the first layer's weight rows (pixels) [0, jsplit), 1 [jsplit, n_in)
    sp        a Split (_types.py): the split pixel and each row's cut there, per half the
              batch's entry ranges and shifted copies and partial first-layer products; the
              batch's first-layer dL/dZ; the first layer's gradient
    net, part, opt, steps, scr, X: as in slots.py and optim.py
    state     the task cells of _atomics (FREE, TAKEN, DONE)

``_split_epoch`` runs ``_split_worker`` on two Python threads (it releases the GIL); the threads
hand tasks over through atomic flags (see the comment above ``_patience``).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import njit

from ..params import Params, empty_aligned, zeros_aligned
from . import _options
from ._options import BLOCK, FAST, STRICT
from ._atomics import DONE, _atomic_store, _take, _wait_done
from .csr import CSR, _cached_for_csr, _densest_row, _pixel_counts, _row_cuts
from .sparse import (_block_entries, _by_pixel, _by_pixel_pays, _full_run, _sparse_matmul,
                     _sparse_outer)
from .dense import _block_backward_dense, _block_forward_dense, _block_softmax_xent, _to_features_sum
from .optim import _update_bias, _update_rows
from .slots import _alloc_scratch
from ._types import Split


def _split_point(params: Params, csr: CSR) -> int:
    """Half 0 owns first-layer weight rows (pixels) [0, j), half 1 [j, n_in): j is where half of
    the non-zero pixels of the first (up to) 2,000 rows lie below (so both halves get about the
    same work), moved to the nearest row that starts on a 64-byte cache line (for a line-aligned
    array), so that the two halves never write to the same line. For MNIST, j = 406."""
    n_in, H = params.sizes[0], params.sizes[1]
    step = 64 // math.gcd(64, H * params.dtype.itemsize)
    counts = _pixel_counts(csr, n_in)
    j = int(np.searchsorted(counts, counts[-1] / 2)) if counts[-1] > 0 else n_in // 2
    return int(min(n_in, step * round(j / step)))


def _split_index(params: Params, csr: CSR):
    """(jsplit, cut) for this CSR and the params' first-layer row size; cached per CSR."""
    def make():
        jsplit = _split_point(params, csr)
        return jsplit, _row_cuts(csr.indptr, csr.indices, np.array([jsplit]))[0]
    return _cached_for_csr(csr, ("split", params.sizes[1] * params.dtype.itemsize), make)


def _split_scratch(params: Params, batch: int, csr: CSR) -> Split:
    """The split step's arrays (a Split), made once per epoch; the split pixel and the rows' cuts
    come from _split_index (cached per CSR)."""
    jsplit, cut = _split_index(params, csr)
    dt = params.dtype
    n_in, H = params.sizes[0], params.sizes[1]
    cap = batch * _densest_row(csr.indptr)
    pixels = len(csr.lut) != 0
    bycap = cap if _by_pixel_pays(params, batch, csr) else 0
    return Split(jsplit, cut, np.empty((2, 2, batch), np.int64), np.empty((2, cap), csr.indices.dtype),
                 np.empty((2, cap if pixels else 0), np.uint8),
                 np.empty((2, 0 if pixels else cap), dt), empty_aligned((2, batch, H), dt),
                 empty_aligned((batch, H), dt), empty_aligned((1, n_in, H), dt),
                 zeros_aligned(H, dt), np.empty((2, 2, n_in if bycap else 0), np.int64),
                 np.empty((2, bycap), csr.indices.dtype),
                 np.empty((2, bycap if pixels else 0), np.uint8),
                 np.empty((2, 0 if pixels else bycap), dt), np.zeros(2, np.bool_))


@njit(inline="always", **STRICT)
def _halves(h, jsplit, n_in):
    """Half h's range of first-layer weight rows (pixels)."""
    return (0, jsplit) if h == 0 else (jsplit, n_in)


@njit(inline="always", **FAST)
def _forward_half(sp, net, X, rows, shifts, h):
    """Phase 1 of the split step, half h's part: find, for every row of the batch, the non-zero
    pixels in h's own pixel range, and multiply them by h's own rows of W1: sp.zpart[h]
    receives the partial first-layer products (no bias). W1 rows never leave their core."""
    j0, j1 = _halves(h, sp.jsplit, net.W[0].shape[0])
    starts = X.indptr[:-1] if h == 0 else sp.cut
    ends = sp.cut if h == 0 else X.indptr[1:]
    n = rows.shape[0]
    idx, pix, val = _block_entries(sp.rng[h], sp.idx[h], sp.pix[h], sp.val[h], X, starts, ends,
                                   rows, shifts, 0, n, j0, j1)
    _sparse_matmul(sp.zpart[h], net.W[0], sp.zero_b, sp.rng[h], idx, pix, val, X.lut, n)
    # by pixel (see _update_half) where _by_pixel_pays gave sp the arrays, unless the rows are
    # full (dense data); regrouped now, while the entries are in cache
    sp.bypix[h] = sp.crng.shape[2] > 0 and _full_run(sp.rng[h], idx, X.lut, n)[1] == 0
    if sp.bypix[h]:
        _by_pixel(sp.crng[h], sp.cidx[h], sp.cpix[h], sp.cval[h], sp.rng[h], idx, pix, val,
                  X.lut.shape[0] != 0, n, j0, j1)


@njit(inline="always", **FAST)
def _dense_half(part, scr, sp, net, y, rows, inv_n, h):
    """Phase 2, half h: half h of the batch's rows, block by block: the first layer's output
    (the two halves' partial products plus the bias), the dense layers, the loss, their backward
    into slot h of the partials (layers after the first, and every bias), and the first layer's
    dL/dZ into sp.dz1. Returns the half's summed cross-entropy (float64)."""
    n = rows.shape[0]
    L = net.offs.shape[0] - 1
    for l in range(L):
        if l > 0:
            part.W[l][h][:] = 0
        part.b[l][h][:] = 0
    AT, dZT, colmax, colsum = scr.AT[h], scr.dZT[h], scr.col[h, 0], scr.col[h, 1]
    offs = net.offs
    Z0 = AT[offs[0]:offs[1]]
    r1 = (n * (h + 1)) // 2
    loss = 0.0
    for b0 in range((n * h) // 2, r1, BLOCK):
        nb = min(BLOCK, r1 - b0)
        _to_features_sum(Z0, sp.zpart[0], sp.zpart[1], net.b[0], b0, nb)
        _block_forward_dense(net.W, net.b, nb, offs, AT)
        loss += _block_softmax_xent(AT[offs[L - 1]:offs[L]], y, rows, b0, nb, inv_n,
                                    dZT[offs[L - 1]:offs[L]], colmax, colsum)
        _block_backward_dense(net.W, nb, offs, AT, dZT, part.W, part.b, h, sp.dz1[b0:b0 + nb])
    return loss


@njit(inline="always", **STRICT)
def _update_half(net, sp, opt, X, shifts, lr, c1, c2, h, n):
    """Phase 3, half h: the first layer's weight gradient for h's own pixel rows (the sparse
    x.T @ dz over the batch's n rows, in row order) and the optimizer step of those rows.
    Strict arithmetic in the update, as everywhere (see _options.STRICT).

    The gradient's row j is the sum over the batch rows t that hold pixel j of x_tj * dz_t,
    computed one of two ways, with the same bits (each element of row j is the same chain of
    multiply-adds from zero, in row order):

    - row by row (_sparse_outer): every entry adds x_tj * dz_t to weight row j in place;
    - by pixel: the batch's entries regrouped by pixel (_by_pixel), then the forward's row loop
      with dz1 for W (_sparse_matmul), each gradient row's sum in registers while its entries
      go by.

    By pixel where _by_pixel_pays (the width ends in a partial vector, and the pixels hold
    enough of the batch's entries to pay for regrouping), which gives sp its by-pixel arrays
    (else they are empty), unless the rows are full (dense data): a block of full rows runs
    the dense tiles of _sparse_outer."""
    W1 = net.W[0]
    g = sp.gW1[0]
    j0, j1 = _halves(h, sp.jsplit, W1.shape[0])
    if shifts.shape[0] > 0:
        idx, pix, val = sp.idx[h], sp.pix[h], sp.val[h]
    else:
        idx, pix, val = X.indices, X.pixels, X.values
    if sp.bypix[h]:                              # (regrouped by _forward_half)
        _sparse_matmul(g[j0:j1], sp.dz1, sp.zero_b, sp.crng[h], sp.cidx[h], sp.cpix[h],
                       sp.cval[h], X.lut, j1 - j0)
    else:
        g[j0:j1] = 0
        _sparse_outer(g, sp.rng[h], idx, pix, val, X.lut, n, sp.dz1)
    _update_rows(W1, sp.gW1, opt.mW[0], opt.vW[0], opt, lr, c1, c2, j0, j1)


@njit(inline="always", **STRICT)
def _update_small(net, part, opt, lr, c1, c2):
    """Phase 3's third task: the optimizer step of the layers after the first and of every
    bias, from the two slots' partials. Whichever thread is free first runs it."""
    for l in range(1, net.offs.shape[0] - 1):
        _update_rows(net.W[l], part.W[l], opt.mW[l], opt.vW[l], opt, lr, c1, c2, 0,
                     net.W[l].shape[0])
    for l in range(net.offs.shape[0] - 1):
        _update_bias(net.b[l], part.b[l], opt.mb[l], opt.vb[l], opt, lr, c1, c2)


# The split step's tasks and how the two cores share them.
#
# An epoch of S steps is a chain of 2S + 1 phases: phase 0 is the first step's forward
# (_forward_half), then for each step i: phase 2i + 1 its dense layers (_dense_half), phase
# 2i + 2 its first-layer gradient and update (_update_half) fused with the next step's forward.
# Each phase is two tasks, one per half (phase 2i + 2 has a third, the small layers' update,
# _update_small, which has no owner: whichever thread is done first runs it, which evens out
# the halves' step-to-step imbalance), and a phase starts only when all tasks of the one before
# are done. Two threads run the whole epoch, started once: starting a parallel region per phase
# cost a fork and join of the thread team and Numba's packing of ~40 array arguments, a few
# microseconds each time; with flags instead the epoch is 5% faster.
#
# Task t of half k has a state cell: FREE, TAKEN (claimed with an atomic compare-and-swap) or
# DONE. Each thread claims and runs its own half's task, then waits for the other's to be done;
# if the other stays FREE for ``patience`` spins (the other thread is late, descheduled, or the
# machine gives both threads one core), it claims
# that task and runs it itself. So no schedule can deadlock, and since a task's arithmetic and
# outputs do not depend on which thread runs it, the results are the same bits whoever runs
# what.

@njit(inline="always", **STRICT)
def _split_task(halfloss, net, part, opt, scr, sp, steps, X, y, perm, shifts, inv_ns, batch, t, k):
    """Run task t (phase t, see above) of half k."""
    n = perm.shape[0]
    i = (t - 1) // 2                     # the step of phases 2i + 1 and 2i + 2
    r0 = i * batch
    r1 = min(n, r0 + batch)
    r2 = min(n, r1 + batch)              # the next step's rows (none after the last step)
    has_shifts = shifts.shape[0] > 0
    if t % 2 == 1:
        halfloss[i, k] = _dense_half(part, scr, sp, net, y, perm[r0:r1], inv_ns[i], k)
        return
    if t > 0:
        _update_half(net, sp, opt, X, shifts[r0:r1] if has_shifts else shifts, steps.lr[i],
                     steps.c1[i], steps.c2[i], k, r1 - r0)
    if r2 > r1:                          # (one call site: every call site is compiled again)
        _forward_half(sp, net, X, perm[r1:r2], shifts[r1:r2] if has_shifts else shifts, k)


@njit(nogil=True, **STRICT)
def _split_worker(me, halfloss, state, net, part, opt, scr, sp, steps, X, y, perm, shifts, inv_ns,
                  batch, patience):
    """One thread's run through every task of an epoch's split steps (see above): first its own
    half's task of each phase (``me``), then the other's if that one stays FREE for
    ``patience`` spins. halfloss (steps, 2) receives each step's summed cross-entropy per half;
    state (3 * (2S + 1),) int64, FREE on entry: cells 3t and 3t + 1 are phase t's two halves,
    3t + 2 a phase's third task (_update_small), which has no owner. Releases the GIL: two
    Python threads run it at once (_split_epoch)."""
    ntasks = 2 * steps.lr.shape[0] + 1
    for t in range(ntasks):
        for j in range(2):
            k = (me + j) % 2             # first this thread's own half, then the other
            if _take(state, 3 * t + k, j == 0, patience):
                _split_task(halfloss, net, part, opt, scr, sp, steps, X, y, perm, shifts, inv_ns,
                            batch, t, k)
                _atomic_store(state, 3 * t + k, DONE)
        if t > 0 and t % 2 == 0:
            if _take(state, 3 * t + 2, True, patience):
                i = (t - 1) // 2
                _update_small(net, part, opt, steps.lr[i], steps.c1[i], steps.c2[i])
                _atomic_store(state, 3 * t + 2, DONE)
            _wait_done(state, 3 * t + 2)
        _wait_done(state, 3 * t)
        _wait_done(state, 3 * t + 1)


def _split_epoch(losses, net, part, opt, sp, steps, X, y, perm, shifts, inv_ns, batch):
    """The same epoch as slots._slots_loop with the split step: _split_worker on two Python
    threads (this one and one more), each releasing the GIL; on one thread where Numba is
    limited to one, or the epoch is one step (it then runs every task itself, in the same order
    of phases: the same bits). A one-step epoch (``partial_fit`` on up to a batch of rows) ran
    10-45% slower on two threads than on one: its few phases are short next to starting and
    handing over to a thread.

    Not a Numba parallel region: a prange here cost 15 s of compiling (a third of the epoch's),
    and the threads hand over through the task cells anyway; starting a thread costs ~0.1 ms
    per epoch."""
    scr = _alloc_scratch(net, X, 2, False)
    nsteps = steps.lr.shape[0]
    halfloss = np.zeros((nsteps, 2))
    state = np.zeros(3 * (2 * nsteps + 1), dtype=np.int64)
    args = (halfloss, state, net, part, opt, scr, sp, steps, X, y, perm, shifts, inv_ns, batch)
    if nsteps > 1 and numba.get_num_threads() > 1 and not numba.config.DISABLE_JIT:
        patience = _options.PATIENCE
        other = threading.Thread(target=_split_worker, args=(1, *args, patience), daemon=True)
        other.start()
        _split_worker(0, *args, patience)
        other.join()
    else:                            # no waiting for a thread that is not there
        _split_worker(0, *args, 0)
    n = perm.shape[0]
    rows = np.minimum(batch, n - batch * np.arange(nsteps))
    losses[:] = (halfloss[:, 0] + halfloss[:, 1]) / rows
