"""Shared fixtures. The real MNIST files come from $FASTMLP_DATA (CI: ../shared/data/mnist)."""

import os

import pytest

import fastmlp


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
