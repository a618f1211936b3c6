"""Compile the kernels ahead of their first use, in child processes, on every core at once.

    fastmlp warmup                                # float32 and float64
    fastmlp warmup --dtype float32
    fastmlp warmup --wide                         # and the kernels for more than 65,536 inputs

Numba compiles a kernel the first time it is called with a new kind of argument and keeps the
machine code in its cache (``cache=True``; the directory NUMBA_CACHE_DIR, or __pycache__ beside
the sources). Depth and widths are run-time values (_types.padded, _codegen._ir_row_loop), so a
kind is a dtype: one compiled set serves every network of up to KERNEL_LAYERS layers (a deeper
one compiles its own: ``--sizes``). Compiling is single-threaded and takes a minute or two per
kind, so this runs each kind in a child process of its own, as many at once as there are cores:
the children fill the cache, and every later process loads the kernels from it in about a
second. Data of more than 65,536 columns has uint32 column indices (csr._index_dtype), which is
a kind of its own: ``--wide`` compiles it too (else the first such fit compiles it). The
calling process never holds LLVM's memory. Images, CI and clusters run it once; the test suite
runs it first (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from .csr import UINT16_COLS

DEFAULT_SIZES = (784, 72, 36, 10)
WIDE_INPUTS = UINT16_COLS + 1    # the fewest inputs whose CSR has uint32 column indices


def compile_kinds(dtype: str, sizes: tuple, training: bool = True) -> None:
    """In this process: call every public function of the backend once on a few rows, so that
    each kernel they use is compiled (or found in the cache) for this dtype and network shape:
    forward, loss_and_grads and predict on dense float X and uint8 images (the compression of
    each; the kernels are the same for both kinds of CSR); with ``training`` also full-batch
    and mini-batch training (both step kernels, with and without augmentation shifts) and
    update."""
    import numpy as np
    from .. import init_params
    from . import api, csr, _options
    from ..common import init_state

    dt = np.dtype(dtype)
    rng = np.random.default_rng(0)
    n_in = sizes[0]
    n = _options.SPLIT_MAX_BATCH + 8                     # enough rows for the slot step
    k = max(1, min(n_in // 5, 64))                       # non-zero inputs a row (at most)
    X8 = np.zeros((n, n_in), np.uint8)
    cols = rng.integers(0, n_in, (n, k))
    X8[np.arange(n)[:, None], cols] = rng.integers(1, 256, (n, k), np.uint8)
    Xf = X8[:9].astype(dt) / dt.type(255)
    y = rng.integers(0, sizes[-1], n)
    p = init_params(sizes, "he", 0, dt)
    for X in (Xf[:9], csr.prepare(X8[:9], dt)):
        api.forward(p, X)
        api.loss_and_grads(p, X, y[:9])
        api.predict(p, X)
    if not training:
        return
    C = csr.prepare(X8, dt)
    state = init_state(p, "adam")
    api.gd_steps(p, state, C, y, [1e-3], optimizer="adam")
    _, g = api.loss_and_grads(p, C, y)
    api.update(p, g, state, 1e-3, 1, "adam")
    shifts = np.zeros((n, 2), np.int8) if n_in == 784 else None
    for batch in (8, n):                                 # the split step, the slot step
        for s in (None, shifts) if shifts is not None else (None,):
            api.sgd_epoch(p, state, C, y, np.arange(n), batch, np.full(-(-n // batch), 1e-3),
                          optimizer="adam", shifts=s)


def warmup(kinds=None, processes: int | None = None, progress: bool = True) -> float:
    """Compile the kernels for each (dtype, sizes) or (dtype, sizes, training) in ``kinds``
    (default: the default network in float32 and float64; training True), each kind in a child
    process, ``processes`` at once (default: the number of cores). Returns the seconds it took.
    A RuntimeError if a child failed."""
    kinds = list(kinds) if kinds is not None else [("float32", DEFAULT_SIZES),
                                                   ("float64", DEFAULT_SIZES)]
    processes = processes or os.cpu_count() or 1
    t0 = time.perf_counter()
    if progress:
        print(f"compiling the numba kernels for {len(kinds)} kind(s) of network, {processes} at "
              f"a time; once per machine (Numba caches them)", file=sys.stderr, flush=True)
    pending = list(kinds)
    running = []
    failures = []
    while pending or running:
        while pending and len(running) < processes:
            dtype, sizes, *training = pending.pop(0)
            cmd = [sys.executable, "-m", "fastmlp.jit.warmup", dtype, ",".join(map(str, sizes)),
                   "train" if not training or training[0] else "forward"]
            running.append(((dtype, sizes), subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                             stderr=subprocess.PIPE, text=True)))
        time.sleep(0.1)
        for item in list(running):
            kind, proc = item
            if proc.poll() is not None:
                running.remove(item)
                err = proc.stderr.read()
                if proc.returncode != 0:
                    failures.append(f"{kind}: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
                elif progress:
                    print(f"  compiled {kind[0]} {'-'.join(map(str, kind[1]))} "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    if failures:
        raise RuntimeError("compiling the kernels failed: " + "; ".join(failures))
    return time.perf_counter() - t0


def compile_run(dtype: str, xdtype: str, sizes: tuple, batch_size, part: str) -> None:
    """In this process: what ``api.warm_up`` loads for a run, on random rows of the same kinds
    (params dtype, X's dtype, sizes; batch_size None for the full-batch loop): part "train" the
    training loop, part "rest" the compression of X, the forward kernel and the split step's
    preparation. The training child is the longer of the two (a first run waits for it), so it
    runs that preparation (three small kernels, about a second of compiling) as plain Python,
    where the other child compiles it for the run."""
    import numpy as np
    from .. import init_params
    from . import api

    dt, xdt = np.dtype(dtype), np.dtype(xdtype)
    rng = np.random.default_rng(0)
    X = (rng.random((2, sizes[0])) < 0.2) * rng.integers(1, 256, (2, sizes[0]))
    X = X.astype(xdt) if xdt.kind == "u" else (X / 255).astype(xdt)
    y = rng.integers(0, sizes[-1], 2)
    p = init_params(sizes, "he", 0, dt)
    if part == "train":
        in_python = api._takes_split_step(batch_size)
        with _split_preparation_in_python() if in_python else contextlib.nullcontext():
            api._warm_up_train(p, X, y, "gd", batch_size)
    else:
        api._warm_up_rest(p, X)
        api._warm_up_split_preparation(p, X, batch_size)


@contextlib.contextmanager
def _split_preparation_in_python():
    """The split step's preparation (split.py's _row_cuts, _densest_row, _alloc_scratch) as the
    Python functions it is compiled from, where split.py calls them, for the split step's warm-up
    only (a kernel compiled meanwhile that calls one of them, as the slot step calls
    _alloc_scratch, would find a Python function). The split worker it feeds is compiled for the
    same argument types (the tests check that the other child's compiled preparation and this
    one's worker serve a run)."""
    from . import split
    names = [(split, "_row_cuts"), (split, "_densest_row"), (split, "_alloc_scratch")]
    saved = [getattr(module, name) for module, name in names]
    try:
        for (module, name), kernel in zip(names, saved):
            setattr(module, name, kernel.py_func)
        yield
    finally:
        for (module, name), kernel in zip(names, saved):
            setattr(module, name, kernel)


def compile_run_in_children(dtype, xdtype, sizes, batch_size) -> None:
    """compile_run's two parts in two child processes at once (the caller's Numba cache and
    target, from the environment); returns when both are done. A RuntimeError if one failed."""
    batch = "none" if batch_size is None else str(int(batch_size))
    procs = [subprocess.Popen([sys.executable, "-m", "fastmlp.jit.warmup", "--run", str(dtype),
                               str(xdtype), ",".join(map(str, sizes)), batch, part],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for part in ("train", "rest")]
    errors = [(proc.communicate()[1] or "").strip() for proc in procs]
    failed = [e.splitlines()[-1] if e else f"exit {p.returncode}"
              for p, e in zip(procs, errors) if p.returncode != 0]
    if failed:
        raise RuntimeError("compiling the kernels in a child process failed: " + "; ".join(failed))


if __name__ == "__main__":
    # a child that fills the cache: what is only linked is neither optimized nor made into
    # machine code on its own (_linkonly; FASTMLP_LINKONLY=0 compiles as Numba does)
    if os.environ.get("FASTMLP_LINKONLY", "1") == "1":
        from . import _linkonly
        _linkonly.install()
    if sys.argv[1] == "--run":
        dtype, xdtype, sizes, batch, part = sys.argv[2:7]
        compile_run(dtype, xdtype, tuple(int(s) for s in sizes.split(",")),
                    None if batch == "none" else int(batch), part)
    else:
        compile_kinds(sys.argv[1], tuple(int(s) for s in sys.argv[2].split(",")),
                      training=sys.argv[3:4] != ["forward"])
