"""The dense kernels: block transposes, and the argmax that predict reads.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import numpy as np
import pytest

from fastmlp import init_params, jit as J
from fastmlp.jit import _options, dense



@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_transposes_are_exact(dtype):
    """The transposes between row-major and feature-major blocks (8 x 8 register tiles plus
    element loops for the edges) move every element, touch nothing else, and the summed one
    adds in the written order, (a + b) + bias, bit for bit as NumPy does."""
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 61, 64, 128):
        for H in (3, 10, 16, 36, 72):
            a, b = rng.standard_normal((2, 200, H)).astype(dtype)
            bias = rng.standard_normal(H).astype(dtype)
            Z = np.zeros((H, 128), dtype)
            dense._to_features(Z, a, 5, n)
            assert np.array_equal(Z[:, :n], a[5:5 + n].T) and not Z[:, n:].any(), (n, H)
            dense._to_features_sum(Z, a, b, bias, 5, n)
            assert np.array_equal(Z[:, :n], ((a[5:5 + n] + b[5:5 + n]) + bias).T), (n, H)
            D = np.zeros((300, H), dtype)
            dense._to_rows(D, 9, Z, n)
            assert np.array_equal(D[9:9 + n], Z[:, :n].T), (n, H)
            assert not D[:9].any() and not D[9 + n:].any(), (n, H)


@pytest.mark.small
def test_argmax_rows_is_numpys_argmax():
    """predict's compiled argmax: NumPy's answer on ties (the first) and NaN (the first NaN)."""
    rng = np.random.default_rng(0)
    P = rng.random((64, 10)).astype(np.float32)
    P[1] = 0.5
    P[2, [3, 7]] = 2.0
    P[3, 4] = np.nan
    P[4, [0, 9]] = np.nan
    P[5, 9] = np.nan
    out = np.full(len(P), -1, dtype=np.int64)
    dense._argmax_rows(P, 0, len(P), out)
    assert np.array_equal(out, P.argmax(axis=1))


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_predict_is_the_argmax_of_predict_proba_on_near_ties(mnist_train, dtype):
    """predict reads the class from the logits where the largest is clear of the rest, and from
    the probabilities elsewhere: the answer is always predict_proba's first maximum. Rows here
    have equal logits, logits apart by 1e-9 (whose exps are equal: the probabilities tie, so the
    first wins, not the largest logit), by one unit in the last place, by a little less and a little
    more than LOGIT_GAP, a mix of clear and near ones, and +inf logits (overflowing weights)."""
    X = mnist_train[0][:130].astype(dtype) / dtype(255)      # two blocks of rows
    dt = np.dtype(dtype).type
    base = init_params((784, 72, 36, 10), "he", 0, dtype)
    gap = dt(_options.LOGIT_GAP)
    one = dt(1)
    cases = {"equal": np.zeros(10, dtype),
             "apart, equal probabilities": np.array([0, 1e-9, 0, 0, 0, 0, 0, 0, 0, 0], dtype),
             "one ulp": np.array([0, np.spacing(one), 0, 0, 0, 0, 0, 0, 0, 0], dtype) + one,
             "under gap": np.array([0, 0, 0, gap * dt(0.99), 0, 0, 0, 0, 0, 0], dtype),
             "over gap": np.array([0, 0, 0, 0, 0, gap * dt(1.01), 0, 0, 0, 0], dtype)}
    for name, b in cases.items():          # last layer weights 0: every row's logits are b
        p = base.copy()
        p.weights[-1][:] = 0
        p.biases[-1][:] = b
        want = J.predict_proba(p, X).argmax(axis=1)
        assert np.array_equal(J.predict(p, X), want), name
    p = base.copy()                          # mixed: the best two within the gap in ~1/4 of rows
    p.weights[-1][:] *= dt(1e-4)
    Z = J.forward(p, X)[-1]
    top2 = np.sort(Z, axis=1)[:, -2:]
    near = (top2[:, 1] - top2[:, 0]) < _options.LOGIT_GAP
    assert 0.1 < near.mean() < 0.9
    got, want = J.predict(p, X), J.predict_proba(p, X).argmax(axis=1)
    assert np.array_equal(got, want) and len(np.unique(got)) > 1
    p = base.copy()                          # overflow: +inf logits, so NaN probabilities
    p.weights[-1][:] = dt(np.finfo(dtype).max / 2)
    p.weights[-1][:, 7] = dt(1)
    with np.errstate(over="ignore", invalid="ignore"):   # (as plain Python, without the JIT)
        P = J.predict_proba(p, X)
        assert np.isnan(P).any()
        assert np.array_equal(J.predict(p, X), P.argmax(axis=1))
