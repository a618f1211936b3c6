"""The public functions of fastmlp.jit against their reference twins, tensor by tensor.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from fastmlp import init_params, jit as J, reference as R
from fastmlp.common import init_state
from fastmlp.jit.warmup import compile_kinds
from fastmlp.jit import sparse

from support import JIT_DISABLED, compare_all, real_batch


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 7])
def test_twins_small_real_batches(mnist_train, dtype, n):
    X, y = real_batch(mnist_train, n, dtype, start=100)
    params = init_params((784, 72, 36, 10), "he", 0, dtype)
    compare_all(params, X, y, f"{np.dtype(dtype).name} n={n}")


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [64, 60000])
@pytest.mark.parametrize("scheme", ["he", "uniform"])
def test_twins_real_batches(mnist_train, dtype, n, scheme):
    X, y = real_batch(mnist_train, n, dtype)
    params = init_params((784, 72, 36, 10), scheme, 2, dtype)
    compare_all(params, X, y, f"{np.dtype(dtype).name} n={n} {scheme}")


@pytest.mark.small
@pytest.mark.parametrize("sizes,dtype", [
    ((784, 32, 16, 8, 10), np.float64), ((784, 48, 24, 12, 10), np.float64),
    ((784, 72, 25, 10), np.float64), ((784, 100, 10), np.float32), ((784, 113, 10), np.float32),
    ((784, 256, 128, 64, 10), np.float32), ((784, 13, 9, 7, 5, 3, 11, 10), np.float64)])
def test_twins_other_architectures(mnist_train, sizes, dtype):
    """Other depths and widths, on the kernels compiled for the default network: widths that
    are not a whole number of vectors (13, 100, 113: a masked last vector in the sparse row
    loop), widths that take more than one pass over a row's entries (113 and 256 float32, 100
    float64: more than _codegen.PANEL_VECTORS vectors), 1 to 6 hidden layers."""
    X, y = real_batch(mnist_train, 5, dtype)
    params = init_params(sizes, "he", 4, dtype)
    compare_all(params, X, y, f"sizes={sizes}")


def _compiled_count():
    """How many compiled versions the backend's kernels hold in this process."""
    import numba
    import fastmlp.jit as pkg
    seen, count = set(), 0
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith(pkg.__name__ + "."):
            for obj in vars(mod).values():
                if isinstance(obj, numba.core.dispatcher.Dispatcher) and id(obj) not in seen:
                    seen.add(id(obj))
                    count += len(obj.overloads)
    return count


@pytest.mark.skipif(JIT_DISABLED, reason="about compiled kernels")
def test_one_compiled_set_serves_every_architecture():
    """Depth and widths are run-time values: after every public function has run on the default
    network (warmup.compile_kinds), networks of 1 to 6 hidden layers of any widths, and any
    number of inputs and classes, compile nothing."""
    compile_kinds("float64", (784, 72, 36, 10))
    before = _compiled_count()
    assert before >= 10                      # (the public calls above reached the kernels)
    for sizes in [(784, 128, 10), (784, 256, 128, 64, 10), (784, 5, 10), (784, 200, 7, 12),
                  (784, 40, 30, 20, 16, 12, 8, 10), (30, 17, 3)]:
        compile_kinds("float64", sizes)
        assert _compiled_count() == before, f"{sizes} compiled kernels of its own"


@pytest.mark.skipif(JIT_DISABLED, reason="about compiled kernels")
def test_one_compiled_set_serves_pixels_and_floats():
    """uint8 pixels (through the lut) and float values are one kind to the kernels
    (csr.KernelCSR): after compile_kinds trained on pixels, training on a CSR of float values
    (full batch, the split and slot steps, with and without shifts) compiles nothing."""
    compile_kinds("float64", (784, 72, 36, 10))
    before = _compiled_count()
    rng = np.random.default_rng(0)
    n = 40
    X = (rng.random((n, 784)) < 0.2) * rng.random((n, 784))
    C = J.to_csr(X)
    assert C.values.dtype == np.float64 and C.lut.size == 0
    params = init_params((784, 72, 36, 10), "he", 0, np.float64)
    y = rng.integers(0, 10, n)
    state = init_state(params, "adam")
    J.gd_steps(params, state, C, y, [1e-3], optimizer="adam")
    for batch in (8, n):
        for shifts in (None, np.ones((n, 2), np.int8)):
            J.sgd_epoch(params, state, C, y, np.arange(n), batch, np.full(-(-n // batch), 1e-3),
                        optimizer="adam", shifts=shifts)
    assert _compiled_count() == before


@pytest.mark.small
def test_twins_non_mnist_input_width():
    rng = np.random.default_rng(0)
    X = rng.random((6, 20))
    params = init_params((20, 8, 6, 4, 10), "uniform", 0, np.float64)
    compare_all(params, X, rng.integers(0, 10, 6), "20-8-6-4-10")


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse_edge_cases(mnist_train, dtype):
    X, y = real_batch(mnist_train, 6, dtype)
    X[0] = 0                                                     # an all-zero image
    X[1] = np.random.default_rng(0).uniform(0.01, 1, 784)        # dense: no zeros at all
    params = init_params((784, 72, 36, 10), "he", 0, dtype)
    params.weights[0][:, 5] = -1                                 # hidden unit 5 dead for every sample
    params.biases[0][5] = -1
    compare_all(params, X, y, "edge cases")
    _, g = J.loss_and_grads(params, X, y)
    assert not g.weights[0][:, 5].any() and not g.weights[1][5].any()


@pytest.mark.small
def test_all_zero_batch_gives_bias_only_gradients():
    params = init_params((784, 72, 36, 10), "he", 0, np.float64)
    X = np.zeros((3, 784))
    y = np.array([1, 2, 3])
    compare_all(params, X, y, "all zero")
    _, g = J.loss_and_grads(params, X, y)
    assert not g.weights[0].any()


@pytest.mark.skipif(JIT_DISABLED, reason="many examples: too slow as plain Python")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), hidden=st.lists(st.integers(1, 80), min_size=1, max_size=6),
       density=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       scheme=st.sampled_from(["he", "uniform"]))
def test_twins_random_inputs(n, hidden, density, seed, scheme):
    """Random depths (1 to 6 hidden layers) and widths."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 50)) * (rng.random((n, 50)) < density)
    params = init_params((50,) + tuple(hidden) + (10,), scheme, seed % 1000, np.float64)
    compare_all(params, X, rng.integers(0, 10, n),
                f"random n={n} hidden={hidden} d={density:.2f}")


@pytest.mark.small
def test_csr_input_equals_dense_input(mnist_train):
    X, y = mnist_train
    params = init_params(dtype=np.float32)
    Xf = R.prepare(X[:50], np.float32)
    C = J.prepare(X[:50], np.float32)
    assert C.values.dtype == np.uint8 and C.dtype == np.float32
    sparse._band_cuts(params, C)                                 # (a CSR's first pass: no bands)
    assert sparse._band_cuts(params, C).shape[0] == (0 if JIT_DISABLED else 2)   # CSR: in 3 bands
    ld, gd = J.loss_and_grads(params, Xf, y[:50])
    lc, gc = J.loss_and_grads(params, C, y[:50])
    assert ld == lc
    for a, b in zip(gd.arrays(), gc.arrays()):
        assert np.array_equal(a, b)
    assert np.array_equal(J.predict_proba(params, Xf), J.predict_proba(params, C))


@pytest.mark.small
@pytest.mark.parametrize("X, y, exc, msg", [
    (np.zeros((2, 28, 28), np.float32), [0, 1], ValueError, r"X must have shape \(n, 784\)"),
    (np.zeros((2, 784)), [0, 1], TypeError, "X must have the params' dtype float32; got float64"),
    (np.zeros((0, 784), np.float32), [], ValueError, "n >= 1"),
    (np.zeros((2, 784), np.float32), [0, 10], ValueError, "labels must be in 0..9; got 10 at row 1"),
    (np.zeros((2, 784), np.float32), [-1, 0], ValueError, "labels must be in 0..9; got -1 at row 0"),
])
def test_jit_rejects_bad_input(X, y, exc, msg):
    params = init_params(dtype=np.float32)
    with pytest.raises(exc, match=msg):
        J.loss_and_grads(params, X, np.asarray(y, dtype=np.int64))


@pytest.mark.small
def test_non_contiguous_input_is_accepted():
    rng = np.random.default_rng(0)
    base = rng.random((10, 1568))
    X = base[:, ::2]                       # a strided view
    assert not X.flags.c_contiguous
    params = init_params(dtype=np.float64)
    compare_all(params, X, rng.integers(0, 10, 10), "strided X")


@pytest.mark.small
@pytest.mark.parametrize("backend", [R, J])
def test_predict_rejects_non_finite_input(backend):
    params = init_params(dtype=np.float64)
    X = np.zeros((3, 784))
    X[2, 5] = np.nan
    with pytest.raises(ValueError, match="X must be finite; got nan at row 2, column 5"):
        backend.predict(params, X)


@pytest.mark.small
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_names_the_first_non_finite_value_like_the_reference(bad, dtype):
    """The numba backend finds non-finite values while compressing dense X (one pass); it must
    name the same first one, in row-major order, as the reference's separate check, and the
    same X made finite again must predict normally."""
    params = init_params(dtype=dtype)
    X = np.zeros((40, 784), dtype=dtype)
    X[:, 300:320] = 0.5
    X[31, 2] = bad
    X[17, 700] = bad
    X[17, 650] = 0.25
    messages = []
    for backend in (R, J):
        for f in (backend.predict, backend.predict_proba):
            with pytest.raises(ValueError) as err:
                f(params, X)
            messages.append(str(err.value))
    assert set(messages) == {f"X must be finite; got {dtype(bad)} at row 17, column 700"}
    X[31, 2] = X[17, 700] = 0
    np.testing.assert_array_equal(J.predict(params, X), R.predict(params, X))


@pytest.mark.small
@pytest.mark.parametrize("backend", [R, J])
def test_training_loops_reject_bad_rows_state_and_batch(backend):
    params = init_params(dtype=np.float64)
    X = backend.prepare(np.zeros((10, 784), np.uint8), np.float64)
    y = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match=r"perm must hold row numbers in 0..9; got 0..10"):
        backend.sgd_epoch(params, [], X, y, np.arange(11), 5, np.ones(3))
    with pytest.raises(ValueError, match=r"batch size must be an integer in 1..2147483647; got 0"):
        backend.sgd_epoch(params, [], X, y, np.arange(10), 0, np.ones(1))
    with pytest.raises(ValueError, match=r"lrs must hold one learning rate per step \(2\); got 3"):
        backend.sgd_epoch(params, [], X, y, np.arange(10), 5, np.ones(3))
    if backend is J:
        with pytest.raises(ValueError, match="optimizer state must hold 6 arrays"):
            J.gd_steps(params, [], X, y, [0.1], optimizer="momentum")
