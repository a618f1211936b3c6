"""warm_up: what a run uses is loaded from Numba's cache, or compiled in child processes first."""

import os

import numpy as np
import pytest
from numba import njit

from fastmlp import init_params, jit as J
from fastmlp.jit import api, split, warmup

from support import JIT_DISABLED, run_loaded

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


def test_the_training_childs_split_preparation_in_python_feeds_the_compiled_worker(mnist_train):
    """The training child runs the split step's preparation as Python (warmup.compile_run): the
    worker it compiles then must take the argument types of a run's compiled preparation, which
    the other child compiles; both are in the session's cache, so nothing here compiles."""
    X, y = mnist_train
    kernels = (split._row_cuts, split._densest_row, split._alloc_scratch)
    for dtype in (np.float32, np.float64):
        params = init_params(dtype=dtype)
        with api._refuse_compiling():
            with warmup._split_preparation_in_python():
                assert split._row_cuts is kernels[0].py_func
                api._warm_up_train(params, X[:2], y[:2], "gd", 128)
            api._warm_up_split_preparation(params, X[:2], 128)
        assert (split._row_cuts, split._densest_row, split._alloc_scratch) == kernels


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [128, None])
def test_a_first_runs_children_fill_an_empty_cache_with_what_the_run_loads(tmp_path, batch_size):
    """The two children of a first run, into an empty cache (compiling as _linkonly makes them:
    callees neither optimized nor made into machine code on their own; for the split step its
    preparation moved to the shorter child); then the run loads every kernel it calls, and
    trains and predicts, without compiling anything: the split step (batch 128) and the
    full-batch loop (None)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBA_DISABLE_JIT", None)
    script = (
        "import numpy as np\n"
        "from fastmlp import init_params\n"
        "from fastmlp.common import init_state\n"
        "from fastmlp.data import load_mnist\n"
        "from fastmlp.jit import api, warmup\n"
        "X, y = load_mnist('train')[:2]\n"
        "X, y = X[:3000], y[:3000].astype(np.int64)\n"
        "p = init_params((784, 72, 36, 10), 'he', 0, np.float32)\n"
        f"batch = {batch_size}\n"
        "warmup.compile_run_in_children(p.dtype, X.dtype, p.sizes, batch)\n"
        "with api._refuse_compiling():\n"
        "    api._warm_up(p, X, y, 'nesterov' if batch else 'gd', batch)\n"
        "    C = api.prepare(X, p.dtype)\n"
        "    if batch is None:                   # the original recipe's first 30 steps\n"
        "        losses = api.gd_steps(p, init_state(p, 'gd'), C, y, np.full(30, 0.2))\n"
        "    else:\n"
        "        losses = api.sgd_epoch(p, init_state(p, 'nesterov'), C, y, np.arange(len(y)),\n"
        "                               batch, np.full(24, 0.1), optimizer='nesterov')\n"
        "    acc = (api.predict(p, C) == y).mean()\n"
        "assert losses[-1] < losses[0] / 2 and acc > 0.5, (losses, acc)\n"
        "print('loaded')\n")
    run_loaded(script, env, timeout=600)
