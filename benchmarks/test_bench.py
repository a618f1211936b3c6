"""Iterations per second of every step of training, reference (NumPy) against numba.

Each benchmark: warm up (compiles the kernels; not timed), time with pytest-benchmark
(``pedantic``: a fixed number of rounds sized to about a second), then check the result against
the reference (a fast wrong answer fails), then record extra_info.

Inputs: "reference" and "numba" both take the dense float batch X, as the public functions do
(numba compresses it on the way in, and that time is included). "numba-csr" takes the batch
already compressed once by ``jit.prepare`` (what the training loops use).
"""

import time

import numpy as np
import pytest

from fastmlp import init_params, jit as J, reference as R
from fastmlp.compare import tolerance

from bench_support import BACKENDS, FLOPS_FORWARD, FLOPS_TRAIN, flops_train, rounds_for, settle

DTYPES = [np.float32, np.float64]
_REF_CACHE = {}


def _inputs(mnist, n, dtype, kind):
    X, y, Xt, yt = mnist
    Xb = X[:n]
    if kind == "numba-csr":
        return J.prepare(Xb, dtype), y[:n]
    return R.prepare(Xb, dtype), y[:n]


def _module(kind):
    return BACKENDS["numba" if kind.startswith("numba") else "reference"]


def _time(benchmark, fn, setup=None, budget=1.0):
    """The settle pause (bench_support.SETTLE_S: every benchmark gets the same quiet start), a
    warm-up call (compiles), then pedantic rounds sized to the budget."""
    settle()
    t = time.perf_counter()
    args = setup()[0] if setup else ()
    fn(*args)
    per_call = time.perf_counter() - t
    if setup:
        return benchmark.pedantic(fn, setup=setup, rounds=rounds_for(per_call, budget),
                                  warmup_rounds=1)
    return benchmark.pedantic(fn, rounds=rounds_for(per_call, budget), warmup_rounds=1)


def _ref(key, compute):
    if key not in _REF_CACHE:
        _REF_CACHE[key] = compute()
    return _REF_CACHE[key]


def _close(a, b, dtype, what):
    """The same agreement the tests ask for (fastmlp.compare.TOLERANCES)."""
    atol, rtol = tolerance(dtype)
    b = np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol,
                               atol=atol * max(1.0, np.abs(b).max()), err_msg=what)


@pytest.mark.benchmark(group="forward")
@pytest.mark.parametrize("batch", [1, 128, 10000, 60000])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", ["reference", "numba", "numba-csr"])
def test_forward(benchmark, record, mnist, backend, dtype, batch):
    X, y = _inputs(mnist, batch, dtype, backend)
    params = init_params((784, 72, 36, 10), "he", 0, dtype)
    acts = _time(benchmark, lambda: _module(backend).forward(params, X))
    ref = _ref(("forward", dtype, batch), lambda: R.forward(params, _inputs(mnist, batch, dtype, "reference")[0]))
    _close(acts[-1], ref[-1], dtype, "logits")
    record(backend, dtype, batch, batch, FLOPS_FORWARD)


@pytest.mark.benchmark(group="loss_and_grads")
@pytest.mark.parametrize("batch", [1, 128, 10000, 60000])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", ["reference", "numba", "numba-csr"])
def test_loss_and_grads(benchmark, record, mnist, backend, dtype, batch):
    X, y = _inputs(mnist, batch, dtype, backend)
    params = init_params((784, 72, 36, 10), "he", 0, dtype)
    loss, grads = _time(benchmark, lambda: _module(backend).loss_and_grads(params, X, y))
    rl, rg = _ref(("lg", dtype, batch), lambda: R.loss_and_grads(
        params, _inputs(mnist, batch, dtype, "reference")[0], y))
    _close(loss, rl, dtype, "loss")
    for k, (a, b) in enumerate(zip(grads.arrays(), rg.arrays())):
        _close(a, b, dtype, f"gradient {k}")
    record(backend, dtype, batch, batch, FLOPS_TRAIN)


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_train_step(benchmark, record, mnist, backend, dtype):
    """One full-batch gradient-descent iteration on all 60,000 images (the original recipe's
    step), on data prepared once as the training loop does."""
    kind = "numba-csr" if backend == "numba" else "reference"
    X, y = _inputs(mnist, 60000, dtype, kind)
    mod = _module(kind)
    p0 = init_params((784, 72, 36, 10), "uniform", 0, dtype)
    setup = lambda: ((p0.copy(),), {})  # noqa: E731
    _time(benchmark, lambda p: mod.gd_steps(p, [], X, y, [0.2], optimizer="gd"), setup=setup)
    p = p0.copy()
    mod.gd_steps(p, [], X, y, [0.2], optimizer="gd")
    ref = _ref(("step", dtype), lambda: _one_step(p0, mnist, dtype))
    for k, (a, b) in enumerate(zip(p.arrays(), ref.arrays())):
        _close(a, b, dtype, f"params {k} after one step")
    record(backend, dtype, 60000, 60000, FLOPS_TRAIN)


def _one_step(p0, mnist, dtype):
    X, y = _inputs(mnist, 60000, dtype, "reference")
    p = p0.copy()
    R.gd_steps(p, [], X, y, [0.2], optimizer="gd")
    return p


@pytest.mark.benchmark(group="epoch")
@pytest.mark.parametrize("batch", [32, 128, 512])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_epoch(benchmark, record, mnist, backend, dtype, batch):
    """One mini-batch SGD epoch over all 60,000 images (shuffle given, then every step)."""
    kind = "numba-csr" if backend == "numba" else "reference"
    X, y = _inputs(mnist, 60000, dtype, kind)
    mod = _module(kind)
    p0 = init_params((784, 72, 36, 10), "he", 0, dtype)
    perm = np.random.default_rng(0).permutation(60000)
    lrs = np.full(-(-60000 // batch), 0.01)
    setup = lambda: ((p0.copy(),), {})  # noqa: E731
    _time(benchmark, lambda p: mod.sgd_epoch(p, [], X, y, perm, batch, lrs, optimizer="sgd"),
          setup=setup, budget=2.0)
    p = p0.copy()
    losses = mod.sgd_epoch(p, [], X, y, perm, batch, lrs, optimizer="sgd")

    def ref_epoch():
        q = p0.copy()
        return q, R.sgd_epoch(q, [], _inputs(mnist, 60000, dtype, "reference")[0], y, perm, batch,
                              lrs, optimizer="sgd")
    q, ref_losses = _ref(("epoch", dtype, batch), ref_epoch)
    # float32 trajectories drift apart by rounding over hundreds of steps (measured: ~1e-3 of the
    # loss after 255 steps at batch 32); a wrong kernel is off by far more than this
    rtol = 1e-8 if dtype == np.float64 else 1e-2
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol, err_msg="epoch losses")
    for k, (a, b) in enumerate(zip(p.arrays(), q.arrays())):
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max(), err_msg=f"params {k}")
    record(backend, dtype, batch, 60000, FLOPS_TRAIN)


@pytest.mark.benchmark(group="predict")
@pytest.mark.parametrize("batch", [1, 128, 10000])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", ["reference", "numba", "numba-csr"])
def test_predict(benchmark, record, mnist, backend, dtype, batch):
    """Class predictions for test images."""
    _, _, Xt, yt = mnist
    params = _ref(("trained", dtype), lambda: _trained(mnist, dtype))
    if backend == "numba-csr":
        X = J.prepare(Xt[:batch], dtype)
    else:
        X = R.prepare(Xt[:batch], dtype)
    pred = _time(benchmark, lambda: _module(backend).predict(params, X))
    ref = R.predict(params, R.prepare(Xt[:batch], dtype))
    assert np.mean(pred == ref) >= 0.999
    if batch == 10000:
        assert np.mean(pred == yt) > 0.95
    record(backend, dtype, batch, batch, FLOPS_FORWARD)


def _trained(mnist, dtype):
    X, y, _, _ = mnist
    p = init_params((784, 72, 36, 10), "he", 0, dtype)
    st = R.init_state(p, "nesterov")
    C = J.prepare(X, dtype)
    perm = np.random.default_rng(0).permutation(60000)
    J.sgd_epoch(p, st, C, y, perm, 128, np.full(469, 0.05), optimizer="nesterov")
    return p


@pytest.mark.benchmark(group="sklearn_fit")
@pytest.mark.parametrize("impl", ["sklearn", "fastmlp"])
def test_sklearn_fit(benchmark, record, mnist, impl):
    """MLPClassifier fits, scikit-learn's against fastmlp's with the same hyperparameters
    (hidden_layer_sizes=(100,), adam, batch 200) on 10,000 MNIST images, pixels / 255 float32,
    2 epochs; OPS is fits per second. benchmarks/bench_sklearn.py runs the full comparison."""
    import warnings
    from sklearn.neural_network import MLPClassifier as Sk
    from fastmlp import MLPClassifier as Fast
    X, y, Xt, yt = mnist
    Xf, Xtf = X[:10000].astype(np.float32) / 255, Xt.astype(np.float32) / 255
    kw = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200, random_state=0,
              max_iter=2, tol=0.0)
    cls = Sk if impl == "sklearn" else Fast

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**kw).fit(Xf, y[:10000])
    clf = _time(benchmark, fit, budget=3.0)
    assert clf.score(Xtf, yt) > 0.85
    record(impl, np.float32, 200, 10000 * 2, flops_train((784, 100, 10)))
