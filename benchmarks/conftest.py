"""Fixtures for the benchmark suites: the data, the machine's matmul rate, and extra_info."""

import numpy as np
import pytest

import bench_support
import fastmlp


@pytest.fixture(scope="session")
def mnist():
    X, y = fastmlp.load_mnist("train", download=False)
    Xt, yt = fastmlp.load_mnist("test", download=False)
    return X, y.astype(np.int64), Xt, yt.astype(np.int64)


@pytest.fixture(scope="session")
def matmul_gflops():
    """This machine's float32 matrix-product rate, measured once per run (bench_support)."""
    return bench_support.matmul_gflops()


@pytest.fixture(scope="session")
def environment():
    return bench_support.environment()


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
