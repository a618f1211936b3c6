"""Checks at the boundary of the public functions, shared by both backends.

Every failure is a ValueError or TypeError that says what was wrong, what was expected and what
arrived. Kernels never check anything: by the time they run, these checks have passed.
"""

from __future__ import annotations

import numpy as np

from .params import Params
from .hyper import HYPER_DEFAULTS, OPTIMIZER_TABLE, OPTIMIZERS, RANGES


def check_params(params) -> Params:
    if not isinstance(params, Params):
        raise TypeError(f"params must be a fastmlp.Params; got {type(params).__name__}")
    return params


def check_X(X, params: Params, name: str = "X") -> np.ndarray:
    """X must be a 2-D float array of the params' dtype with sizes[0] columns and >= 1 row."""
    if not isinstance(X, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape (n, {params.sizes[0]}); "
                        f"got {type(X).__name__}")
    if X.ndim != 2 or X.shape[1] != params.sizes[0] or X.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, {params.sizes[0]}) with n >= 1; got {X.shape}")
    if X.dtype != params.dtype:
        raise TypeError(f"{name} must have the params' dtype {params.dtype}; got {X.dtype} "
                        f"(convert with {name}.astype(np.{params.dtype}))")
    return X


def check_y(y, n: int, k: int = 10) -> np.ndarray:
    """y must be n integer labels in 0..k-1. Returns them as int64."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers; got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per row of X; got {y.shape}")
    return _in_range(y, k, "labels", "row")


def check_labels(y, k: int, name: str = "labels") -> np.ndarray:
    """A 1-D array of integer labels in 0..k-1, of any length. Returns them as int64."""
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise TypeError(f"{name} must be a 1-D array of integers; got {y.dtype} of shape {y.shape}")
    return _in_range(y, k, name, "position")


def _in_range(y, k: int, name: str, where: str) -> np.ndarray:
    """1-D integer labels y, checked to lie in 0..k-1, as int64."""
    if y.size and (y.min() < 0 or y.max() >= k):
        bad = int(np.flatnonzero((y < 0) | (y >= k))[0])
        raise ValueError(f"{name} must be in 0..{k - 1}; got {int(y[bad])} at {where} {bad}")
    return y.astype(np.int64, copy=False)


def check_finite(X, name: str = "X") -> None:
    """Where a NaN or inf input would silently give a wrong answer (predictions), reject it."""
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{name} must be finite; got {X[r, c]} at row {r}, column {c}")


MAX_BATCH_SIZE = 2**31 - 1   # rows in one batch: a batch size is a row count, kept within int32


def check_perm(perm, n: int, batch_size) -> np.ndarray:
    """An epoch's row order: integers in 0..n-1 (any order, any count >= 1); a batch size in
    1..MAX_BATCH_SIZE (larger than the epoch: one batch)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch size must be an integer in 1..{MAX_BATCH_SIZE}; got "
                         f"{batch_size!r}")
    perm = np.asarray(perm)
    if perm.ndim != 1 or perm.size == 0 or perm.dtype.kind not in "iu":
        raise ValueError(f"perm must be a non-empty 1-D array of row numbers; got {perm.dtype} "
                         f"{perm.shape}")
    if perm.min() < 0 or perm.max() >= n:
        raise ValueError(f"perm must hold row numbers in 0..{n - 1}; got {perm.min()}..{perm.max()}")
    return np.ascontiguousarray(perm, dtype=np.int64)


def check_writable(params: Params) -> None:
    """Parameters that an optimizer step changes in place must be writable."""
    for i, a in enumerate(params.arrays()):
        if not a.flags.writeable:
            raise ValueError(f"params must be writable (an optimizer step changes them in place); "
                             f"{'W' if i % 2 == 0 else 'b'}{i // 2} is read-only")


def check_state(state, params: Params, n_buffers: int) -> None:
    """Optimizer state as made by init_state: n_buffers arrays per parameter array."""
    arrays = params.arrays()
    if len(state) != n_buffers * len(arrays):
        raise ValueError(f"optimizer state must hold {n_buffers * len(arrays)} arrays (see "
                         f"init_state); got {len(state)}")
    for k, buf in enumerate(state):
        ref = arrays[k % len(arrays)]
        if not isinstance(buf, np.ndarray) or buf.shape != ref.shape or buf.dtype != ref.dtype \
                or not buf.flags.c_contiguous or not buf.flags.writeable:
            raise ValueError(f"optimizer state array {k} must be writable, C-contiguous {ref.dtype} "
                             f"{ref.shape}; got {getattr(buf, 'dtype', type(buf).__name__)} "
                             f"{getattr(buf, 'shape', '')}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_step_number(t, name: str, minimum: int) -> int:
    """An optimizer step counter (Adam's bias correction uses it): an integer >= minimum."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {t!r}")
    return int(t)


def check_grads(grads, params: Params) -> Params:
    """Gradients for an update: a Params of the params' sizes and dtype."""
    if not isinstance(grads, Params):
        raise TypeError(f"grads must be a fastmlp.Params; got {type(grads).__name__}")
    if grads.sizes != params.sizes or grads.dtype != params.dtype:
        raise ValueError(f"grads must have the params' sizes {params.sizes} and dtype "
                         f"{params.dtype}; got {grads.sizes} {grads.dtype}")
    return grads


def check_update(params: Params, grads, t) -> int:
    """An update's own arguments (both backends): params, grads of the same network, and t, the
    step number from 1. Returns t. check_optimizer checks the rest."""
    check_grads(grads, check_params(params))
    return check_step_number(t, "t (the step number, from 1)", 1)


def check_optimizer(params: Params, state, optimizer, lrs, t0, steps=None, **hyper):
    """Everything an optimizer step takes besides the gradients, checked once at the boundary of
    both backends' update and training loops: the optimizer's name and state, the learning rates
    (one per step: finite, >= 0; exactly ``steps`` of them if given), the steps taken before
    (t0 >= 0) and the hyperparameters (momentum, beta1, beta2 in [0, 1); eps > 0;
    weight_decay >= 0; all finite; the defaults in HYPER_DEFAULTS). Returns (learning rates as
    float64 (steps,), the hyperparameters)."""
    unknown = sorted(set(hyper) - set(HYPER_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown optimizer option {unknown[0]!r}; the options are "
                        f"{', '.join(HYPER_DEFAULTS)}")
    hyper = {**HYPER_DEFAULTS, **hyper}
    check_writable(params)
    if optimizer not in OPTIMIZER_TABLE:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    check_state(state, params, OPTIMIZER_TABLE[optimizer].buffers)
    raw = np.asarray(lrs) if not isinstance(lrs, (str, bytes)) else None
    if raw is None or raw.dtype.kind not in "biuf" or raw.dtype.kind == "b":
        raise TypeError(f"learning rates must be numbers, one per step; got {lrs!r}")
    try:
        lrs = np.asarray(lrs, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"learning rates must be numbers, one per step; got {lrs!r}") from None
    if lrs.ndim != 1:
        raise ValueError(f"learning rates must be a 1-D sequence, one per step; got shape {lrs.shape}")
    lo = RANGES["lrs"].lo
    bad = ~(np.isfinite(lrs) & (lrs >= lo))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"learning rates must be finite and {RANGES['lrs'].describe()}; got "
                         f"{lrs[k]} at step {k}")
    check_step_number(t0, "t0 (the steps taken before)", 0)
    if steps is not None and len(lrs) != steps:
        raise ValueError(f"lrs must hold one learning rate per step ({steps}); got {len(lrs)}")
    for name in HYPER_DEFAULTS:
        v = hyper[name]
        if not (_is_number(v) and RANGES[name].holds(v)):
            raise ValueError(f"{name} must be a finite number {RANGES[name].describe()}; got {v!r}")
    return lrs, hyper


def check_shifts(shifts, n: int, n_cols: int):
    """Augmentation shifts: integers (n, 2) of whole pixels within -27..27, for 28x28 images.
    Returns them as int8, or None for None."""
    if shifts is None:
        return None
    shifts = np.asarray(shifts)
    if n_cols != 784:
        raise ValueError(f"shifts need 28x28 images (784 columns); got {n_cols} columns")
    if shifts.shape != (n, 2) or shifts.dtype.kind not in "iu":
        raise ValueError(f"shifts must be integers of shape ({n}, 2); got {shifts.dtype} {shifts.shape}")
    if shifts.size and np.abs(shifts.astype(np.int64)).max() > 27:
        raise ValueError(f"shifts must be within -27..27 pixels; got "
                         f"{int(np.abs(shifts.astype(np.int64)).max())}")
    return np.ascontiguousarray(shifts, dtype=np.int8)
