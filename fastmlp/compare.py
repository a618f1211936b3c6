"""The two backends side by side: the one tolerance table, and the tensor-by-tensor comparison
behind ``fastmlp compare`` and ``scripts/compare_backends.py``. The tests and the benchmarks
judge agreement by the same table.
"""

from __future__ import annotations

import numpy as np

# |numba - reference| <= atol + rtol * |reference|, elementwise, per dtype. The float32 values
# leave room for summation order: the kernels add a row's terms in another order than BLAS.
TOLERANCES = {"float64": (1e-12, 1e-10), "float32": (2e-5, 2e-4)}


def tolerance(dtype) -> tuple[float, float]:
    """(atol, rtol) for a dtype (np.float32, "float64", ...)."""
    return TOLERANCES[np.dtype(dtype).name]


def compare_rows(dtype="float32", batch_size=256, seed=0, data_dir=None):
    """Rows (name, max abs diff, max rel diff, atol, rtol, ok) for every tensor of one forward
    and backward pass on real MNIST, reference vs numba, same params."""
    from . import data, jit, reference, init_params
    X, y = data.load_mnist("train", data_dir, progress=False)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(X), size=batch_size, replace=False)
    dt = np.dtype(dtype)
    Xf = X[rows].astype(dt) / dt.type(255)
    yb = y[rows]
    params = init_params((784, 72, 36, 10), "he", seed, dt)
    atol, rtol = tolerance(dtype)
    out = []

    def row(name, a, b):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        diff = np.abs(a - b)
        rel = float(np.max(diff / np.maximum(np.abs(a), np.finfo(dt).tiny))) if diff.size else 0.0
        ok = bool(np.all(diff <= atol + rtol * np.abs(a)))
        out.append((name, float(diff.max(initial=0)), rel, atol, rtol, ok))

    ra, ja = reference.forward(params, Xf), jit.forward(params, Xf)
    for l in range(1, len(ra)):
        row(f"A{l}" if l < len(ra) - 1 else f"Z{l} (logits)", ra[l], ja[l])
    row("P (softmax)", reference.predict_proba(params, Xf), jit.predict_proba(params, Xf))
    rl, rg = reference.loss_and_grads(params, Xf, yb)
    jl, jg = jit.loss_and_grads(params, Xf, yb)
    row("loss", rl, jl)
    for l in range(len(rg.weights)):
        row(f"dW{l + 1}", rg.weights[l], jg.weights[l])
        row(f"db{l + 1}", rg.biases[l], jg.biases[l])
    rp, jp = reference.predict(params, Xf), jit.predict(params, Xf)
    out.append(("predictions (mismatches)", float(np.sum(rp != jp)), 0.0, 0.0, 0.0,
                bool(np.all(rp == jp))))
    return out
