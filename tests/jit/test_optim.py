"""The optimizer rules: the compiled update against the reference and inside the loops.

Tests marked ``small`` use small inputs; CI runs them a second time with NUMBA_DISABLE_JIT=1 so
that the kernel bodies run as plain Python (and coverage sees them).
"""

import numpy as np
import pytest

from fastmlp import init_params, jit as J, reference as R

from support import JIT_DISABLED


OPTS = {"gd": 0.1, "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 1e-3, "adam_hat": 1e-3}


@pytest.mark.small
def test_update_twin():
    p = init_params((784, 16, 10), "he", 0, np.float64)
    g = p.copy()
    for opt in ("sgd", "momentum", "nesterov", "adam", "adam_hat"):
        pr, pj = p.copy(), p.copy()
        sr, sj = R.init_state(pr, opt), R.init_state(pj, opt)
        for t in (1, 2, 3):
            R.update(pr, g, sr, 0.01, t, opt, weight_decay=0.01)
            J.update(pj, g, sj, 0.01, t, opt, weight_decay=0.01)
        for a, b in zip(pj.arrays(), pr.arrays()):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, err_msg=opt)


@pytest.mark.small
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_loop_steps_are_the_public_update_bitwise(mnist_train, dtype):
    """A full-batch step of the compiled loop is exactly loss_and_grads then update: the same
    gradient (slots summed in the same order) and the same rounding of the rule. This fails if
    the loop's update is compiled with fast-math (contracted multiply-adds), which Numba does
    silently to a kernel without an explicit fastmath option when a fast-math kernel calls it."""
    X8, y = mnist_train[0][:200], mnist_train[1][:200].astype(np.int64)   # 3 slots of rows
    C = J.prepare(X8, dtype)
    p0 = init_params((784, 72, 36, 10), "he", 4, dtype)
    for opt in ("sgd", "momentum", "nesterov", "adam", "adam_hat"):
        pa, pb = p0.copy(), p0.copy()
        sa, sb = J.init_state(pa, opt), J.init_state(pb, opt)
        for t, lr in enumerate((0.05, 0.02), start=1):
            J.gd_steps(pa, sa, C, y, [lr], t0=t - 1, optimizer=opt, weight_decay=1e-3)
            _, g = J.loss_and_grads(pb, C, y)
            J.update(pb, g, sb, lr, t, opt, weight_decay=1e-3)
        for k, (a, b) in enumerate(zip(pa.arrays() + sa, pb.arrays() + sb)):
            assert np.array_equal(a, b), f"{opt}: array {k} differs by {np.abs(a - b).max()}"


@pytest.mark.skipif(JIT_DISABLED, reason="too slow as plain Python")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", sorted(OPTS))
def test_training_trajectories_match(mnist_train, dtype, optimizer):
    X, y = mnist_train
    X, y = X[:3000], y[:3000].astype(np.int64)
    lr = OPTS[optimizer]
    hyper = dict(weight_decay=1e-4, momentum=0.9)
    p0 = init_params((784, 72, 36, 10), "he", 7, dtype)
    pr, pj = p0.copy(), p0.copy()
    sr, sj = R.init_state(pr, optimizer), R.init_state(pj, optimizer)
    lrs = np.full(4, lr)
    lr_ref = R.gd_steps(pr, sr, R.prepare(X, dtype), y, lrs, optimizer=optimizer, **hyper)
    lr_jit = J.gd_steps(pj, sj, J.prepare(X, dtype), y, lrs, optimizer=optimizer, **hyper)
    perm = np.random.default_rng(0).permutation(len(X))
    steps = -(-len(X) // 128)
    lrs = np.full(steps, lr)
    le_ref = R.sgd_epoch(pr, sr, R.prepare(X, dtype), y, perm, 128, lrs, t0=4, optimizer=optimizer, **hyper)
    le_jit = J.sgd_epoch(pj, sj, J.prepare(X, dtype), y, perm, 128, lrs, t0=4, optimizer=optimizer, **hyper)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(lr_jit, lr_ref, rtol=tol, err_msg=f"gd losses {optimizer}")
    np.testing.assert_allclose(le_jit, le_ref, rtol=tol * 10, err_msg=f"sgd losses {optimizer}")
    for k, (a, b) in enumerate(zip(pj.arrays(), pr.arrays())):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * 100 * scale,
                                   err_msg=f"params[{k}] after training, {optimizer}")
