"""Fixtures for the benchmark suites: the data, the machine's matmul rate, and extra_info."""

import os
import platform
import time

import numpy as np
import pytest

import fastmlp



@pytest.fixture(scope="session")
def mnist():
    X, y = fastmlp.load_mnist("train", download=False)
    Xt, yt = fastmlp.load_mnist("test", download=False)
    return X, y.astype(np.int64), Xt, yt.astype(np.int64)


@pytest.fixture(scope="session")
def matmul_gflops():
    """This machine's float32 matrix-product rate, measured once per run: the median of 7
    products of two 2048x2048 float32 matrices (NumPy's BLAS, all its threads)."""
    rng = np.random.default_rng(0)
    A = rng.random((2048, 2048), dtype=np.float32)
    B = rng.random((2048, 2048), dtype=np.float32)
    A @ B
    times = []
    for _ in range(7):
        t = time.perf_counter()
        A @ B
        times.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / np.median(times) / 1e9


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@pytest.fixture(scope="session")
def environment():
    import numba
    import scipy
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return {
        "numba_threads": numba.get_num_threads(),
        "blas_threads": blas[0]["num_threads"] if blas else None,
        "blas": f"{blas[0]['internal_api']} {blas[0]['version']}" if blas else None,
        "numpy": np.__version__, "numba": numba.__version__, "scipy": scipy.__version__,
        "python": platform.python_version(), "cpu": _cpu_model(), "cores": os.cpu_count(),
    }


@pytest.fixture
def record(benchmark, matmul_gflops, environment):
    """Call after timing: fills extra_info from the measured mean time."""
    def fill(backend, dtype, batch, samples_per_call, flops_per_sample, **more):
        mean = benchmark.stats.stats.mean
        ops = 1.0 / mean
        gflops = samples_per_call * flops_per_sample * ops / 1e9
        benchmark.extra_info.update({
            "backend": backend, "dtype": np.dtype(dtype).name, "batch_size": batch,
            "iterations_per_second": ops, "samples_per_second": samples_per_call * ops,
            "gflops_dense_equivalent": gflops, "matmul_gflops_float32": matmul_gflops,
            "fraction_of_matmul_rate": gflops / matmul_gflops, **environment, **more})
    return fill
