"""The public functions of the numba backend: the same names, signatures and meanings as
``fastmlp.reference``. Each checks its arguments at the boundary (``_validate``, shared with the
reference), converts X once to a CSR, and calls one compiled kernel or loop.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings

import numba
import numpy as np

from ..params import Params, zeros_aligned
from .._validate import check_params, check_perm, check_shifts, check_update, check_y
from ..common import accuracy_of, init_state
from . import _options
from ._fork import _check_not_forked
from .csr import CSR, _as_csr, _numpy_csr, _row_cuts, _writable, prepare
from ._options import BLOCK
from .sparse import _band_cuts, _by_pixel_pays
from .slots import _alloc_scratch, _forward_kernel, _slots_loop
from .split import _split_epoch, _split_scratch
from ._types import Grads, Net, padded
from .optim import _opt_args, _update_all


_NO_SHIFTS = np.zeros((0, 2), dtype=np.int8)
# Pixel bands pay where a kernel reads the CSR's rows in order (full batches, the forward), not
# where mini-batches visit rows at random: there each row's entries would be fetched once per
# band (an epoch 7-12% slower, the same bits either way). So mini-batches get none.
_NO_BANDS = np.zeros((0, 0), dtype=np.int64)


def _check_shifts(shifts, n, n_cols):
    """Validated augmentation shifts as int8 (n, 2), or the empty array for none."""
    shifts = check_shifts(shifts, n, n_cols)
    return _NO_SHIFTS if shifts is None else shifts


def _nslots(n: int) -> int:
    return int(max(1, min(_options.NSLOTS, n // _options.MIN_SLOT_ROWS)))


def _offsets(params: Params) -> np.ndarray:
    """Where each layer's output starts in the per-row scratch vector."""
    return np.concatenate([[0], np.cumsum(params.sizes[1:])]).astype(np.int64)


def _net(params: Params) -> Net:
    """The network as the kernels take it (the arrays themselves: updates change params; a
    read-only array, as unpickling from a memory map gives, is read through a writable copy:
    the kernels compile for writable arrays only, and the updates refuse read-only ones)."""
    return Net(padded(_writable(W) for W in params.weights),
               padded(_writable(b) for b in params.biases), _offsets(params))


def _grads(grads: Params) -> Grads:
    return Grads(padded(grads.weights), padded(grads.biases))


def _partials(params: Params, nslots: int) -> Grads:
    """Zeroed per-slot partial gradients, nslots of each parameter array."""
    return Grads(padded(zeros_aligned((nslots,) + W.shape, W.dtype) for W in params.weights),
                 padded(zeros_aligned((nslots,) + b.shape, b.dtype) for b in params.biases))


def forward(params: Params, X):
    """Run the network up to the logits: [A0 = X, A1, ..., A(L-1), Z(L-1)], as the reference.

    X: dense float (n, 784) in the params' dtype, or a CSR. A0 is returned as given.
    """
    _check_not_forked()
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    outs = tuple(np.empty((n, m), params.dtype) for m in params.sizes[1:])
    _forward_kernel(padded(outs), _NO_LABELS, _net(params), csr, _bands_for(params, X, csr), False)
    return [X] + list(outs)


def loss_and_grads(params: Params, X, y):
    """Mean cross-entropy of the batch and its gradients (a Params), as the reference.

    X: dense float (n, 784) in the params' dtype (compressed on the way in), or a CSR from
    ``prepare``/``to_csr`` (the fast path for repeated calls on the same data).
    """
    _check_not_forked()
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    y = check_y(y, n, params.sizes[-1])
    grads = params.zeros_like()
    opt, steps = _no_update(params)
    loss = np.empty(1)
    _slots_loop(loss, _grads(grads), _net(params), _partials(params, _nslots(n)), opt, steps,
                csr, y, np.arange(n), _NO_SHIFTS, _bands_for(params, X, csr),
                np.full(1, 1.0 / n, params.dtype), n, False, _by_pixel_pays(params, BLOCK, csr))
    return loss[0], grads


# per (dtype, padded depth): what _slots_loop takes for the arguments a call does not use
_UNUSED: dict = {}


def _no_update(params: Params):
    """An Opt and one step's Steps for a _slots_loop that updates nothing (loss_and_grads)."""
    key = ("opt", params.dtype, len(padded(params.weights)))
    if key not in _UNUSED:
        _UNUSED[key] = _opt_args(params, init_state(params, "gd"), "gd", [0.0], 0)
    return _UNUSED[key]


def _no_grads(params: Params) -> Grads:
    """Empty gradients for a _slots_loop that updates (the training loops)."""
    key = ("grads", params.dtype, len(padded(params.weights)))
    if key not in _UNUSED:
        L = len(params.weights)
        _UNUSED[key] = Grads(padded((np.zeros((0, 0), params.dtype),) * L),
                             padded((np.zeros(0, params.dtype),) * L))
    return _UNUSED[key]


_NO_LABELS = np.zeros(0, dtype=np.int64)


def _bands_for(params: Params, X, csr: CSR) -> np.ndarray:
    """Pixel bands for a CSR the caller made (cached with it); none for dense X, compressed for
    this call only (finding them would cost about what they save in one pass)."""
    return _band_cuts(params, csr) if isinstance(X, CSR) else _NO_BANDS


def _probabilities(params: Params, X, labels: bool):
    """Class probabilities (n, 10); or, if labels, the predicted class per row (and the
    probabilities of only some rows: not for the caller)."""
    _check_not_forked()
    check_params(params)
    csr = _as_csr(X, params, need_finite=True)     # (for dense X found while compressing it)
    n = len(csr)
    P = np.empty((n, params.sizes[-1]), params.dtype)
    out = np.empty(n, dtype=np.int64) if labels else _NO_LABELS
    outs = tuple(np.empty((0, m), params.dtype) for m in params.sizes[1:-1]) + (P,)
    _forward_kernel(padded(outs), out, _net(params), csr, _bands_for(params, X, csr), True)
    return P, out


def predict_proba(params: Params, X):
    """Class probabilities, shape (n, 10), each row summing to 1. X must be finite."""
    return _probabilities(params, X, False)[0]


def predict(params: Params, X):
    """Predicted class per row, shape (n,), int64: the most probable class, exactly this
    backend's ``predict_proba(params, X).argmax(axis=1)`` (the first on ties), as the reference's
    predict is its own. Read from the logits wherever that is provably the same (_clear_argmax)."""
    return _probabilities(params, X, True)[1]


def accuracy(params: Params, X, y) -> float:
    """Fraction of rows whose prediction equals the label."""
    return accuracy_of(predict, params, X, y)


def update(params: Params, grads: Params, state, lr, t=1, optimizer="sgd", **hyper):
    """One optimizer step in place, the same rules as ``reference.update``."""
    _check_not_forked()
    t = check_update(params, grads, t)
    opt, steps = _opt_args(params, state, optimizer, [lr], t - 1, **hyper)
    _update_all(_net(params), _grads(grads), opt,
                steps.lr[0], steps.c1[0], steps.c2[0])


def gd_steps(params, state, X, y, lrs, t0=0, optimizer="gd", **hyper):
    """len(lrs) full-batch steps in compiled code (the twin of reference.gd_steps).
    X is a CSR (from ``prepare``) or dense float. Returns each step's loss, float64."""
    _check_not_forked()
    check_params(params)
    csr = _as_csr(X, params)
    n = len(csr)
    y = check_y(y, n, params.sizes[-1])
    opt, steps = _opt_args(params, state, optimizer, lrs, t0, **hyper)
    losses = np.empty(len(steps.lr))
    rows = np.arange(n, dtype=np.int64)
    _slots_loop(losses, _no_grads(params), _net(params), _partials(params, _nslots(n)), opt,
                steps, csr, y, rows, _NO_SHIFTS, _bands_for(params, X, csr),
                np.full(len(losses), 1.0 / n, params.dtype), n, True,
                _by_pixel_pays(params, BLOCK, csr))
    return losses


def sgd_epoch(params, state, X, y, perm, batch_size, lrs, t0=0, optimizer="sgd", shifts=None,
              **hyper):
    """One epoch of mini-batch steps in compiled code (the twin of reference.sgd_epoch): the
    rows in the order ``perm``, batches of ``batch_size``; step i uses lrs[i]. ``shifts``
    (len(perm), 2) moves the image perm[k] by shifts[k] = (dy, dx) pixels (augmentation)."""
    _check_not_forked()
    check_params(params)
    csr = _as_csr(X, params)
    y = check_y(y, len(csr), params.sizes[-1])
    perm = check_perm(perm, len(csr), batch_size)
    shifts = _check_shifts(shifts, len(perm), csr.n_cols)
    n = len(perm)
    steps = -(-n // batch_size)
    opt, lrs = _opt_args(params, state, optimizer, lrs, t0, steps, **hyper)
    sizes = np.minimum(batch_size, n - batch_size * np.arange(steps))
    inv_ns = (1.0 / sizes).astype(params.dtype)
    losses = np.empty(steps)
    if batch_size <= _options.SPLIT_MAX_BATCH:
        _split_epoch(losses, _net(params), _partials(params, 2), opt,
                     _split_scratch(params, batch_size, csr), lrs, csr, y, perm, shifts, inv_ns,
                     batch_size)
        return losses
    _slots_loop(losses, _no_grads(params), _net(params), _partials(params, _nslots(batch_size)),
                opt, lrs, csr, y, perm, shifts, _NO_BANDS, inv_ns, batch_size, True,
                _by_pixel_pays(params, BLOCK, csr))
    return losses


def warm_up(params, X, y, optimizer, batch_size=None, progress=False, **hyper):
    """Compile (or load from Numba's cache) the kernels a training run uses, on two of its rows:
    the full-batch loop (batch_size None) or the epoch of that batch size, the forward kernel,
    and the compression of X; only these, since compiling costs time and memory. X uint8 or
    float (n, n_in), y its labels. ``params`` is not changed (a copy is trained).

    If any of them is not in the cache, they are compiled in child processes, two at once (the
    training loop in one, the rest in the other: _options.COMPILE_IN_CHILDREN), and then loaded
    here: the wait is the longer of the two, and this process never holds the compiler's
    memory. With ``progress``, if this takes more than COMPILE_NOTICE_S seconds, one line on
    stderr says what is happening, with the seconds so far."""
    with _compile_notice(progress):
        if _options.COMPILE_IN_CHILDREN and not numba.config.DISABLE_JIT:
            try:
                with _refuse_compiling():
                    _warm_up(params, X, y, optimizer, batch_size, **hyper)
                return
            except _WouldCompile:
                pass
            from . import warmup
            try:
                warmup.compile_run_in_children(params.dtype, np.asarray(X[:0]).dtype,
                                               params.sizes, batch_size)
            except (OSError, RuntimeError) as exc:
                # compiled below instead, where an error of the run's own shows as itself
                warnings.warn(f"{exc}; compiling in this process", RuntimeWarning)
        _warm_up(params, X, y, optimizer, batch_size, **hyper)


class _WouldCompile(Exception):
    """Raised inside _refuse_compiling where Numba would start compiling."""


@contextlib.contextmanager
def _refuse_compiling():
    """Numba loads a kernel from its cache or compiles it; in this block, where it would compile
    (the "numba:compile" event, sent before any compiling starts), _WouldCompile is raised."""
    from numba.core import event

    class Refuse(event.Listener):
        def on_start(self, ev):
            raise _WouldCompile()

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Refuse()):
        yield


COMPILE_NOTICE_S = 2.0   # seconds before saying that the kernels are being compiled


@contextlib.contextmanager
def _compile_notice(enabled: bool):
    if not enabled:
        yield
        return
    done = threading.Event()
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()

    def tell():
        if done.wait(COMPILE_NOTICE_S):
            return
        msg = ("compiling the numba kernels for this kind of network: once per machine (Numba "
               "caches them; `fastmlp warmup` compiles ahead)")
        print(msg + ("" if tty else " ..."), end="" if tty else "\n", file=sys.stderr, flush=True)
        while not done.wait(1.0 if tty else 15.0):
            elapsed = f"{time.perf_counter() - t0:.0f} s"
            print(f"\r{msg} {elapsed}" if tty else f"  still compiling, {elapsed}",
                  end="" if tty else "\n", file=sys.stderr, flush=True)
        print(("\n" if tty else "") + f"  compiled in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)

    thread = threading.Thread(target=tell, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _warm_up(params, X, y, optimizer, batch_size, **hyper):
    _warm_up_rest(params, X)
    _warm_up_train(params, X, y, optimizer, batch_size, **hyper)


def _warm_up_train(params, X, y, optimizer, batch_size, **hyper):
    """The training loop a run uses: full-batch (batch_size None) or the epoch of batch_size.
    (Every optimizer runs the same compiled loop: its rule is a run-time code.)"""
    warm = params.copy()
    C = _numpy_csr(X[:2], params.dtype)   # (the compression is _warm_up_rest's to compile)
    if batch_size is None:
        gd_steps(warm, init_state(warm, optimizer), C, y[:2], np.zeros(1),
                 optimizer=optimizer, **hyper)
    else:     # two rows: the same step kernel as batch_size; the split step's in two steps of
        # one row, so that it runs on both threads as epochs do (through a one-step epoch, which
        # runs on one, the first run's training child compiled 3-4 s longer: 10 rounds)
        b = 1 if batch_size <= _options.SPLIT_MAX_BATCH else batch_size
        sgd_epoch(warm, init_state(warm, optimizer), C, y[:2], np.arange(2),
                  b, np.zeros(-(-2 // b)), optimizer=optimizer, **hyper)


def _warm_up_rest(params, X):
    """The compression of X, the forward kernel (evaluation, predict) and the row cuts of the
    first layer's pixel bands, which a CSR gets on its second pass (sparse._band_cuts)."""
    csr = prepare(X[:1], params.dtype)
    predict_proba(params, csr)
    kernel_csr = _as_csr(csr, params)            # (the arrays the kernels and _band_cuts take)
    _row_cuts(kernel_csr.indptr, kernel_csr.indices, np.zeros(1, np.int64))


def _takes_split_step(batch_size) -> bool:
    """Whether a run of this batch size (None: the full-batch loop) takes the split step."""
    return batch_size is not None and batch_size <= _options.SPLIT_MAX_BATCH


def _warm_up_split_preparation(params, X, batch_size):
    """What the split step's preparation compiles (with _warm_up_rest's row cuts: the densest
    row, the scratch), if the run's batches take the split step. (warmup.compile_run: the first
    run's shorter child compiles it.)"""
    if _takes_split_step(batch_size):
        csr = _as_csr(_numpy_csr(X[:2], params.dtype), params)
        _split_scratch(params, 1, csr)
        _alloc_scratch(_net(params), csr, 2, False)
