"""Fork and the threading layer: what happens to the numba backend in a forked child process."""

from __future__ import annotations

import os

import numba


# Numba runs parallel kernels on GNU OpenMP's threads here, which do not survive fork(): a
# child forked after a parallel kernel ran would die ("fork() called from a process already
# using GNU OpenMP") and a multiprocessing.Pool would hang. OpenMP stays the default (the
# fork-safe TBB layer made predict up to 1.6x slower on this project's machines); a child
# forked that way gets a clear error instead, at the first call.
_FORKED_AFTER_OPENMP = False


def _after_fork_in_child():
    global _FORKED_AFTER_OPENMP
    try:
        from numba.np.ufunc import parallel
        _FORKED_AFTER_OPENMP = bool(parallel._is_initialized) and \
            numba.threading_layer() == "omp" and _openmp_vendor() == "GNU"
    except Exception:       # (Numba's internals changed: nothing known, nothing refused)
        _FORKED_AFTER_OPENMP = False


def _openmp_vendor() -> str:
    from numba.np.ufunc import omppool
    return getattr(omppool, "openmp_vendor", "")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_not_forked() -> None:
    if _FORKED_AFTER_OPENMP:
        raise RuntimeError(
            "the numba backend cannot run in a process forked after it ran (GNU OpenMP's threads "
            "do not survive fork()): start worker processes with the 'spawn' or 'forkserver' "
            "method (multiprocessing.get_context('spawn'); joblib's default loky backend does), "
            "or choose a fork-safe threading layer before importing fastmlp "
            "(NUMBA_THREADING_LAYER=tbb after pip install tbb, or workqueue)")
