"""Checks at the boundary of the public functions, shared by both backends.

Every failure is a ValueError or TypeError that says what was wrong, what was expected and what
arrived. Kernels never check anything: by the time they run, these checks have passed.
"""

from __future__ import annotations

import numpy as np

from .params import Params


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
    if n and (y.min() < 0 or y.max() >= k):
        bad = int(np.flatnonzero((y < 0) | (y >= k))[0])
        raise ValueError(f"labels must be in 0..{k - 1}; got {int(y[bad])} at row {bad}")
    return y.astype(np.int64, copy=False)


def check_finite(X, name: str = "X") -> None:
    """Where a NaN or inf input would silently give a wrong answer (predictions), reject it."""
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{name} must be finite; got {X[r, c]} at row {r}, column {c}")


def check_perm(perm, n: int, batch_size) -> np.ndarray:
    """An epoch's row order: integers in 0..n-1 (any order, any count >= 1); a batch size >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be an integer >= 1; got {batch_size!r}")
    perm = np.asarray(perm)
    if perm.ndim != 1 or perm.size == 0 or perm.dtype.kind not in "iu":
        raise ValueError(f"perm must be a non-empty 1-D array of row numbers; got {perm.dtype} "
                         f"{perm.shape}")
    if perm.min() < 0 or perm.max() >= n:
        raise ValueError(f"perm must hold row numbers in 0..{n - 1}; got {perm.min()}..{perm.max()}")
    return np.ascontiguousarray(perm, dtype=np.int64)


def check_state(state, params: Params, n_buffers: int) -> None:
    """Optimizer state as made by init_state: n_buffers arrays per parameter array."""
    arrays = params.arrays()
    if len(state) != n_buffers * len(arrays):
        raise ValueError(f"optimizer state must hold {n_buffers * len(arrays)} arrays (see "
                         f"init_state); got {len(state)}")
    for k, buf in enumerate(state):
        ref = arrays[k % len(arrays)]
        if not isinstance(buf, np.ndarray) or buf.shape != ref.shape or buf.dtype != ref.dtype \
                or not buf.flags.c_contiguous:
            raise ValueError(f"optimizer state array {k} must be C-contiguous {ref.dtype} "
                             f"{ref.shape}; got {getattr(buf, 'dtype', type(buf).__name__)} "
                             f"{getattr(buf, 'shape', '')}")
