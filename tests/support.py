"""Helpers shared by the tests."""

import os
import subprocess
import sys

import numpy as np

from fastmlp import jit as J, reference as R
from fastmlp.compare import tolerance


def real_batch(mnist_train, n, dtype, start=0):
    X, y = mnist_train
    dt = np.dtype(dtype)
    return X[start:start + n].astype(dt) / dt.type(255), y[start:start + n]


JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT") == "1"


def assert_close(jit_value, ref_value, dtype, name):
    """|jit - ref| <= atol * max(1, max|ref|) + rtol * |ref| (fastmlp.compare.TOLERANCES)."""
    atol, rtol = tolerance(dtype)
    ref_value = np.asarray(ref_value, dtype=np.float64)
    scale = max(1.0, float(np.abs(ref_value).max(initial=0)))
    np.testing.assert_allclose(np.asarray(jit_value, dtype=np.float64), ref_value, rtol=rtol,
                               atol=atol * scale, err_msg=name)


def compare_all(params, X, y, label):
    dtype = params.dtype.type
    ra, ja = R.forward(params, X), J.forward(params, X)
    assert len(ra) == len(ja)
    for l in range(1, len(ra)):
        assert ja[l].dtype == params.dtype
        assert_close(ja[l], ra[l], dtype, f"jit.forward A{l} {label}")
    rl, rg = R.loss_and_grads(params, X, y)
    jl, jg = J.loss_and_grads(params, X, y)
    assert_close(jl, rl, dtype, f"jit.loss_and_grads loss {label}")
    for l in range(len(rg.weights)):
        assert jg.weights[l].dtype == params.dtype
        assert_close(jg.weights[l], rg.weights[l], dtype, f"jit.loss_and_grads dW{l + 1} {label}")
        assert_close(jg.biases[l], rg.biases[l], dtype, f"jit.loss_and_grads db{l + 1} {label}")
    rp, jp = R.predict_proba(params, X), J.predict_proba(params, X)
    assert_close(jp, rp, dtype, f"jit.predict_proba {label}")
    # predictions agree except where the two best probabilities tie within rounding
    top2 = np.sort(rp, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5
    assert np.array_equal(J.predict(params, X)[clear], R.predict(params, X)[clear]), label


def run_loaded(script: str, env: dict, timeout: float) -> None:
    """Run ``script`` in a fresh Python process with ``env``: it must exit cleanly and print
    "loaded" last (the scripts that check what a fresh process finds in Numba's cache)."""
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0 and r.stdout.strip().endswith("loaded"), r.stderr[-3000:]
