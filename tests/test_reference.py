"""The reference implementation: gradients by central differences, numerical stability, the
update rules, and the helpers."""

import numpy as np
import pytest

from fastmlp import init_params, jit as J, reference as R


def _numeric_grad(params, X, y, array, eps=1e-6):
    g = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        lp, _ = R.loss_and_grads(params, X, y)
        array[idx] = old - eps
        lm, _ = R.loss_and_grads(params, X, y)
        array[idx] = old
        g[idx] = (lp - lm) / (2 * eps)
    return g


@pytest.mark.parametrize("scheme", ["uniform", "he"])
def test_gradients_match_central_differences(scheme):
    rng = np.random.default_rng(0)
    sizes = (12, 7, 5, 10)
    params = init_params(sizes, scheme, seed=1, dtype=np.float64)
    X = rng.random((9, 12))
    X[X < 0.4] = 0                     # zeros, as in images
    y = rng.integers(0, 10, 9)
    _, grads = R.loss_and_grads(params, X, y)
    for name, analytic, array in zip(
            [f"{k}{l}" for l in range(3) for k in ("W", "b")], grads.arrays(), params.arrays()):
        numeric = _numeric_grad(params, X, y, array)
        rel = np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-12)
        assert rel < 1e-6, f"d{name}: max relative error {rel:.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_finite_for_huge_logits(dtype):
    Z = np.array([[1000, -1000, 0, 0, 0, 0, 0, 0, 0, 0],
                  [-1000, 1000, 999, 0, 0, 0, 0, 0, 0, 0]], dtype=dtype)
    P, loss = R.softmax_cross_entropy_forward(Z, np.array([1, 0]))
    assert np.isfinite(P).all() and np.isfinite(loss)
    # row 0 misses by 2000; row 1 by 2000 + log(1 + e^-1) (the 999 logit shares the mass)
    assert loss == pytest.approx(2000 + np.log1p(np.exp(-1)) / 2, rel=1e-6)
    assert np.allclose(P.sum(axis=1), 1)
    assert P.dtype == dtype
    assert np.isfinite(R.log_softmax(Z)).all()


def test_backward_overwrites_and_keeps_dtype():
    params = init_params((784, 72, 36, 10), "he", 0, np.float32)
    X = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    y = np.arange(5)
    l1, g1 = R.loss_and_grads(params, X, y)
    l2, g2 = R.loss_and_grads(params, X, y)
    assert l1 == l2
    for a, b in zip(g1.arrays(), g2.arrays()):
        assert a.dtype == np.float32 and np.array_equal(a, b)


def test_mean_loss_of_uniform_prediction_is_log10():
    params = init_params((784, 10), "he", 0, np.float64)
    params.weights[0][:] = 0
    X = np.random.default_rng(0).random((4, 784))
    loss, grads = R.loss_and_grads(params, X, np.array([0, 1, 2, 3]))
    assert loss == pytest.approx(np.log(10))
    assert grads.biases[0] == pytest.approx(np.array([-0.15] * 4 + [0.1] * 6))


def test_update_rules_by_hand():
    p = init_params((3, 2), "he", 0, np.float64)
    g = p.zeros_like()
    for a in g.arrays():
        a[:] = 0.5
    w0 = p.weights[0].copy()
    q = p.copy(); R.update(q, g, R.init_state(q, "sgd"), 0.1)
    assert np.allclose(q.weights[0], w0 - 0.05)
    q = p.copy(); st = R.init_state(q, "momentum")
    R.update(q, g, st, 0.1, optimizer="momentum"); R.update(q, g, st, 0.1, optimizer="momentum")
    assert np.allclose(q.weights[0], w0 - 0.1 * 0.5 - 0.1 * (0.9 * 0.5 + 0.5))
    q = p.copy(); st = R.init_state(q, "nesterov")
    R.update(q, g, st, 0.1, optimizer="nesterov")
    assert np.allclose(q.weights[0], w0 - 0.1 * (0.5 + 0.9 * 0.5))
    q = p.copy(); st = R.init_state(q, "adam")
    R.update(q, g, st, 0.1, t=1, optimizer="adam")
    assert np.allclose(q.weights[0], w0 - 0.1 * 0.5 / (0.5 + 1e-8))   # first Adam step = lr*sign
    q = p.copy(); R.update(q, g, [], 0.1, weight_decay=0.1)
    assert np.allclose(q.weights[0], w0 - 0.1 * (0.5 + 0.1 * w0))
    assert np.allclose(q.biases[0], p.biases[0] - 0.05)                # no decay on biases


def test_one_hot_confusion_accuracy():
    assert R.one_hot(np.array([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    C = R.confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], k=3)
    assert C.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    params = init_params((4, 10), "he", 0, np.float64)
    X = np.eye(4)
    pred = R.predict(params, X)
    assert R.accuracy(params, X, pred) == 1.0


@pytest.mark.parametrize("X, y, exc, msg", [
    (np.zeros((2, 28, 28)), [0, 1], ValueError, r"X must have shape \(n, 784\) with n >= 1; got \(2, 28, 28\)"),
    (np.zeros((2, 784), np.float32), [0, 1], TypeError, "X must have the params' dtype float64; got float32"),
    ([[0.0] * 784], [0], TypeError, "X must be a numpy array"),
    (np.zeros((2, 784)), [0, 12], ValueError, "labels must be in 0..9; got 12 at row 1"),
    (np.zeros((2, 784)), [0.0, 1.0], TypeError, "labels must be integers"),
    (np.zeros((2, 784)), [0, 1, 2], ValueError, r"labels must have shape \(2,\)"),
])
def test_bad_input_is_rejected_with_a_message(X, y, exc, msg):
    params = init_params(dtype=np.float64)
    with pytest.raises(exc, match=msg):
        R.loss_and_grads(params, X, np.asarray(y))


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: R.confusion_matrix([0, 12], [0, 1]), ValueError, "y_true must be in 0..9; got 12 at position 1"),
    (lambda: R.confusion_matrix([0, 1], [0, -1]), ValueError, "y_pred must be in 0..9; got -1 at position 1"),
    (lambda: R.confusion_matrix([0.5], [0]), TypeError, "y_true must be a 1-D array of integers; got float64"),
    (lambda: R.confusion_matrix([0, 1, 2], [0, 1]), ValueError, "same length; got 3 and 2"),
    (lambda: R.one_hot(np.array([-1]), 10), ValueError, "labels must be in 0..9; got -1 at position 0"),
    (lambda: R.one_hot(np.array([[1]]), 10), TypeError, r"labels must be a 1-D array of integers; got int64 of shape \(1, 1\)"),
])
def test_label_utilities_reject_what_they_would_miscount(call, exc, msg):
    """A label of -1 was counted as class 9 (negative indexing), 0.5 as class 0; both backends
    share these two functions."""
    with pytest.raises(exc, match=msg):
        call()
    assert J.confusion_matrix is R.confusion_matrix and J.one_hot is R.one_hot
