"""Shared fixtures. The real MNIST files come from $FASTMLP_DATA (CI: ../shared/data/mnist)."""

import os

# scikit-learn's check_array_api_input (test_estimator.py) needs SciPy's array API mode, which
# SciPy reads once, when it is first imported
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402

import fastmlp  # noqa: E402


@pytest.fixture(scope="session")
def mnist_train():
    if not os.environ.get("FASTMLP_DATA"):
        pytest.fail("set FASTMLP_DATA to the directory with the MNIST files (see README)")
    return fastmlp.load_mnist("train", download=False)


@pytest.fixture(scope="session")
def mnist_test():
    return fastmlp.load_mnist("test", download=False)


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """No FASTMLP_DATA and an empty user cache: only what a test puts in place is found."""
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    monkeypatch.delenv("FASTMLP_FASHION_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels():
    """Before the first test: the kernels the tests use, compiled in child processes on every
    core at once (fastmlp.jit.warmup) instead of one after another in this process as the tests
    first call them. With the kernels already in Numba's cache this only loads them."""
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return
    from fastmlp.jit.warmup import DEFAULT_SIZES, warmup
    warmup([("float64", DEFAULT_SIZES), ("float32", DEFAULT_SIZES)], progress=False)
