"""warm_up: what a run uses is loaded from Numba's cache, or compiled in child processes first."""

import numpy as np
import pytest
from numba import njit

from fastmlp import init_params, jit as J
from fastmlp.jit import api, warmup

from support import JIT_DISABLED

pytestmark = pytest.mark.skipif(JIT_DISABLED, reason="about compiling")


def test_refusing_to_compile_raises_before_anything_is_compiled():
    @njit
    def fresh(x):                    # a new function: in no cache
        return x + 1

    with pytest.raises(api._WouldCompile):
        with api._refuse_compiling():
            fresh(1)
    assert not fresh.overloads
    assert fresh(1) == 2             # outside the block it compiles as usual


@pytest.mark.parametrize("batch_size", [None, 128, 1000])
def test_warm_up_of_cached_kernels_starts_no_child(monkeypatch, mnist_train, batch_size):
    """The session's warm-up compiled every kernel of the default network: a run's warm_up finds
    them all in the cache (none would compile) and starts no child process."""
    def no_children(*args):
        raise AssertionError("warm_up started child processes for cached kernels")
    monkeypatch.setattr(warmup, "compile_run_in_children", no_children)
    X, y = mnist_train
    for dtype in (np.float32, np.float64):
        for sizes in [(784, 72, 36, 10), (784, 128, 10), (784, 256, 128, 64, 10)]:
            J.warm_up(init_params(sizes, dtype=dtype), X[:10], y[:10], "nesterov", batch_size)


def test_warm_up_compiles_in_children_what_is_not_cached(monkeypatch, mnist_train):
    calls, runs = [], []

    @njit
    def fresh(x):
        return x * 2

    def kernels(params, X, y, optimizer, batch_size, **hyper):
        runs.append(batch_size)
        fresh(3)

    monkeypatch.setattr(api, "_warm_up", kernels)
    monkeypatch.setattr(warmup, "compile_run_in_children", lambda *args: calls.append(args))
    X, y = mnist_train
    params = init_params(dtype=np.float32)
    J.warm_up(params, X[:10], y[:10], "sgd", 128)
    assert calls == [(np.dtype(np.float32), np.dtype(np.uint8), (784, 72, 36, 10), 128)]
    assert runs == [128, 128]        # refused at the first compile, then run after the children


def test_warm_up_compiles_here_if_the_children_fail(monkeypatch, mnist_train):
    @njit
    def fresh(x):
        return x - 1

    def fail(*args):
        raise RuntimeError("compiling the kernels in a child process failed: no room")
    monkeypatch.setattr(api, "_warm_up", lambda *args, **kw: fresh(3))
    monkeypatch.setattr(warmup, "compile_run_in_children", fail)
    X, y = mnist_train
    with pytest.warns(RuntimeWarning, match="no room; compiling in this process"):
        J.warm_up(init_params(dtype=np.float32), X[:10], y[:10], "sgd", 128)
    assert fresh.overloads


def test_children_compile_or_load_a_run_and_report_failures():
    """The child processes themselves, on the kinds the session compiled (they load them)."""
    warmup.compile_run_in_children(np.dtype(np.float64), np.dtype(np.uint8), (784, 72, 36, 10),
                                   None)
    with pytest.raises(RuntimeError, match="compiling the kernels in a child process failed: "
                                           ".*float16"):
        warmup.compile_run_in_children("float16", "uint8", (784, 72, 36, 10), None)
