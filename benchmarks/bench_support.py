"""Helpers shared by the benchmark suites (conftest.py, test_bench.py) and the scripts that
report benchmarks (scripts/bench_numba.py imports this file): FLOP counts, the machine's matmul
rate, the settle pause, and what machine and software a figure was measured with."""

import os
import platform
import time

import numpy as np

from fastmlp import jit as J, reference as R
from fastmlp.machine import cpu_model, l2_bytes, numba_target

# dense-equivalent floating-point operations per sample (DESIGN.md): what the dense algorithm
# would do; the sparse kernels do less, so their GFLOP/s is an "effective" rate
def flops_forward(sizes=(784, 72, 36, 10)) -> int:
    """Dense-equivalent FLOP per image of a forward pass: a multiply and an add per weight."""
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_train(sizes=(784, 72, 36, 10)) -> int:
    """The same for a training pass: the forward, every weight gradient, and dA of every layer
    but the input (which is never formed)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return flops_forward(sizes) + 2 * (pairs[0][0] * pairs[0][1]
                                       + 2 * sum(a * b for a, b in pairs[1:]))


FLOPS_FORWARD = flops_forward()                                               # 118,800
FLOPS_TRAIN = flops_train()                                                   # 243,504

BACKENDS = {"reference": R, "numba": J}

# A pause before each measurement: after a BLAS call OpenBLAS's worker threads keep spinning for
# about 0.1 s, and on two cores they take half the machine from whatever runs next (numba's
# predict on 10,000 images took 5.7 ms after a pause and 9.8-13.7 ms right after the reference's).
SETTLE_S = 0.3


def settle():
    time.sleep(SETTLE_S)


def rounds_for(seconds_per_call, budget=1.0, lo=3, hi=100):
    """How many timed rounds fit the time budget (at least lo)."""
    return int(min(hi, max(lo, budget / max(seconds_per_call, 1e-9))))


def matmul_gflops(repeats=7, n=2048):
    """This machine's float32 matrix-product rate: the median of `repeats` products of two
    n x n float32 matrices (NumPy's BLAS, all its threads), after one untimed product."""
    rng = np.random.default_rng(0)
    A = rng.random((n, n), dtype=np.float32)
    B = rng.random((n, n), dtype=np.float32)
    settle()
    A @ B
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        A @ B
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def environment():
    """The machine and software of a run: CPU model, the ISA Numba compiles for, L2 size, cores,
    thread counts, BLAS and versions."""
    import numba
    import scipy
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    l2 = l2_bytes()
    return {
        "numba_threads": numba.get_num_threads(),
        "blas_threads": blas[0]["num_threads"] if blas else None,
        "blas": f"{blas[0]['internal_api']} {blas[0]['version']}" if blas else None,
        "numpy": np.__version__, "numba": numba.__version__, "scipy": scipy.__version__,
        "python": platform.python_version(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "numba_target": numba_target(), "l2_kib": l2 // 1024 if l2 else None,
    }


def header_line(env) -> str:
    """One line naming the machine, for the top of a report."""
    l2 = f"{env['l2_kib']} KiB L2 per core" if env.get("l2_kib") else "L2 size unknown"
    return (f"{env['cpu']}, {env['cores']} cores, Numba compiling for {env['numba_target']}, {l2}; "
            f"numba threads {env['numba_threads']}, BLAS threads {env['blas_threads']} "
            f"({env['blas']}); numpy {env['numpy']}, numba {env['numba']}")
