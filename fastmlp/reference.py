"""The reference: the whole network in plain NumPy, written to read like the math.

This file is the specification. ``fastmlp.jit`` has a twin of every network-level function here
(forward, loss_and_grads, update, predict, the training loops, ...), with the same name, signature
and meaning, tuned for speed; tests hold the two together. The layer-level functions have no
twins there: its kernels fuse the layers (``fastmlp/jit/__init__.py`` maps each function here to
the kernels that do its work). Nothing here is clever: where speed and clarity disagree, this
file chooses clarity.

Legend
------
    n      rows in the batch (one image per row)
    sizes  layer widths, default (784, 72, 36, 10): input, two hidden ReLU layers, softmax output
    X      inputs, shape (n, 784), float32 or float64, pixels scaled to [0, 1]
    y      labels, shape (n,), integers 0..9
    W[l]   weights of layer l, shape (fan_in, fan_out)
    b[l]   biases of layer l, shape (fan_out,)
    Z[l]   pre-activations, shape (n, fan_out):  Z[l] = A[l] @ W[l] + b[l]   (A[0] = X)
    A[l+1] activations: ReLU(Z[l]) for hidden layers, softmax(Z[L-1]) = P at the output

Conventions (the same in fastmlp.jit)
--------------------------------
- Batches are row-major: one sample per row, so a layer is ``Z = A @ W + b``.
- The loss is the *mean* cross-entropy over the batch. The 1/n factor enters exactly once, in
  ``softmax_cross_entropy_backward``; everything after it is a plain chain rule.
- Backward functions return fresh gradients (they never accumulate into existing arrays).
- The ReLU mask comes from the forward *output* A (A > 0), which is what forward saved.
- Every function computes in the dtype of its inputs: float32 in, float32 out.
"""

from __future__ import annotations

import numpy as np

from .params import Params
from ._validate import (check_X, check_y, check_params, check_finite, check_optimizer,
                        check_perm, check_shifts, check_update)
from .common import OPTIMIZERS, accuracy_of, confusion_matrix, init_state, one_hot

__all__ = [
    "linear_forward", "linear_backward", "relu_forward", "relu_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "softmax", "log_softmax",
    "forward", "backward", "loss_and_grads", "update", "init_state",
    "predict_proba", "predict", "accuracy", "one_hot", "confusion_matrix",
    "prepare", "gd_steps", "sgd_epoch", "shift_images", "warm_up", "OPTIMIZERS",
]

# ----------------------------------------------------------------------------------------------
# layers: each forward next to its backward


def linear_forward(A, W, b):
    """Z = A @ W + b.   A (n, fan_in), W (fan_in, fan_out), b (fan_out,) -> Z (n, fan_out)."""
    return A @ W + b


def linear_backward(dZ, A, W, need_dA=True):
    """Gradients of a linear layer from dZ = dL/dZ, shape (n, fan_out).

    dW = A.T @ dZ        (fan_in, fan_out)
    db = sum of dZ rows  (fan_out,)
    dA = dZ @ W.T        (n, fan_in), or None when ``need_dA`` is False (the input layer)
    """
    dW = A.T @ dZ
    db = dZ.sum(axis=0)
    dA = dZ @ W.T if need_dA else None
    return dA, dW, db


def relu_forward(Z):
    """A = max(Z, 0), elementwise.   Z (n, m) -> A (n, m)."""
    return np.maximum(Z, 0)


def relu_backward(dA, A):
    """dZ = dA where the unit was active (A > 0), else 0.   dA, A (n, m) -> dZ (n, m)."""
    return dA * (A > 0)


def log_softmax(Z):
    """log softmax of each row, computed stably: Z - max - log(sum(exp(Z - max))).

    Subtracting the row maximum makes every exponent <= 0, so exp never overflows and the sum is
    at least 1, so the log never sees 0. Finite for logits of any finite size (e.g. +-1000).
    """
    Zs = Z - Z.max(axis=1, keepdims=True)
    return Zs - np.log(np.exp(Zs).sum(axis=1, keepdims=True))


def softmax(Z):
    """Row-wise softmax, (n, k) -> (n, k), each row non-negative and summing to 1."""
    Zs = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Zs)
    return E / E.sum(axis=1, keepdims=True)


def softmax_cross_entropy_forward(Z, y):
    """Probabilities P = softmax(Z) (n, k) and the mean cross-entropy  -mean(log P[i, y_i])."""
    logP = log_softmax(Z)
    loss = -logP[np.arange(len(y)), y].mean()
    return np.exp(logP), float(loss)


def softmax_cross_entropy_backward(P, y):
    """dL/dZ for softmax followed by mean cross-entropy: (P - one_hot(y)) / n.

    This simple form holds because softmax and cross-entropy are differentiated together; it is
    where the 1/n of the mean enters, once.
    """
    return (P - one_hot(y, P.shape[1], P.dtype)) / P.shape[0]


# ----------------------------------------------------------------------------------------------
# the network


def forward(params: Params, X):
    """Run the network up to the logits. Returns [A0 = X, A1, ..., A(L-1), Z(L-1)]:

    the input, each hidden layer's ReLU output, shape (n, sizes[l]), and last the output layer's
    logits, shape (n, 10). This list is exactly what ``backward`` needs.
    """
    check_params(params)
    acts = [check_X(X, params)]
    L = len(params.weights)
    for l, (W, b) in enumerate(zip(params.weights, params.biases)):
        Z = linear_forward(acts[-1], W, b)
        acts.append(relu_forward(Z) if l < L - 1 else Z)
    return acts


def backward(params: Params, acts, P, y) -> Params:
    """Gradients of the mean cross-entropy with respect to every weight and bias.

    acts: what ``forward`` returned; P (n, 10): softmax of the logits; y (n,) labels.
    Walks the layers in exactly the reverse order of ``forward``. The input layer's dA is never
    computed (nothing needs dL/dX).
    """
    L = len(params.weights)
    dW, db = [None] * L, [None] * L
    dZ = softmax_cross_entropy_backward(P, y)
    for l in reversed(range(L)):
        dA, dW[l], db[l] = linear_backward(dZ, acts[l], params.weights[l], need_dA=l > 0)
        if l > 0:
            dZ = relu_backward(dA, acts[l])
    return Params._trusted(dW, db)


def loss_and_grads(params: Params, X, y):
    """Mean cross-entropy of the batch and its gradients (a Params of the same shapes).

    X (n, 784) float32/float64, y (n,) integers 0..9  ->  (loss: float, grads: Params)
    """
    acts = forward(params, X)
    y = check_y(y, len(acts[0]))
    P, loss = softmax_cross_entropy_forward(acts[-1], y)
    return loss, backward(params, acts, P, y)


# ----------------------------------------------------------------------------------------------
# the update: gradient descent and its relatives

def update(params: Params, grads: Params, state, lr, t=1, optimizer="sgd", momentum=0.9,
           beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """One optimizer step, in place on ``params`` (and ``state``). ``t`` counts steps from 1.

    With g = dL/dw (+ weight_decay * w for weight matrices, not biases):
        gd, sgd   w -= lr * g
        momentum  v = momentum * v + g;  w -= lr * v
        nesterov  v = momentum * v + g;  w -= lr * (g + momentum * v)
        adam      m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
                  w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
        adam_hat  m, v as adam;  w -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
                  (Kingma and Ba's "epsilon hat"; scikit-learn's and Keras's Adam)

    Every argument is checked first (the same checks as the numba twin's: _validate).
    """
    t = check_update(params, grads, t)
    check_optimizer(params, state, optimizer, [lr], t - 1, momentum=momentum, beta1=beta1,
                    beta2=beta2, eps=eps, weight_decay=weight_decay)
    _update(params, grads, state, lr, t, optimizer, momentum, beta1, beta2, eps, weight_decay)


def _update(params, grads, state, lr, t, optimizer, momentum, beta1, beta2, eps, weight_decay):
    """update's arithmetic, its arguments already checked."""
    arrays, gs = params.arrays(), grads.arrays()
    k = len(arrays)
    for i, (w, g) in enumerate(zip(arrays, gs)):
        if weight_decay and i % 2 == 0:
            g = g + w.dtype.type(weight_decay) * w
        if optimizer in ("gd", "sgd"):
            w -= w.dtype.type(lr) * g
        elif optimizer in ("momentum", "nesterov"):
            v = state[i]
            v *= w.dtype.type(momentum)
            v += g
            step = g + w.dtype.type(momentum) * v if optimizer == "nesterov" else v
            w -= w.dtype.type(lr) * step
        elif optimizer in ("adam", "adam_hat"):
            m, v = state[i], state[k + i]
            m *= w.dtype.type(beta1)
            m += w.dtype.type(1 - beta1) * g
            v *= w.dtype.type(beta2)
            v += w.dtype.type(1 - beta2) * g * g
            if optimizer == "adam":
                mhat = m / w.dtype.type(1 - beta1 ** t)
                vhat = v / w.dtype.type(1 - beta2 ** t)
                w -= w.dtype.type(lr) * mhat / (np.sqrt(vhat) + w.dtype.type(eps))
            else:
                step = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                w -= w.dtype.type(step) * m / (np.sqrt(v) + w.dtype.type(eps))


# ----------------------------------------------------------------------------------------------
# using a trained network


def predict_proba(params: Params, X):
    """Class probabilities, shape (n, 10), each row summing to 1. X must be finite (a NaN pixel
    would otherwise turn into a confident-looking wrong prediction)."""
    check_finite(check_X(X, check_params(params)))
    return softmax(forward(params, X)[-1])


def predict(params: Params, X):
    """Predicted digit per row, shape (n,), int64 (the most probable class)."""
    return predict_proba(params, X).argmax(axis=1)


def accuracy(params: Params, X, y) -> float:
    """Fraction of rows whose prediction equals the label."""
    return accuracy_of(predict, params, X, y)


# ----------------------------------------------------------------------------------------------
# training loops (the jitted twins run these whole loops in compiled code)


def prepare(X, dtype):
    """The training data in the form this backend's loops take: float (n, 784) in [0, 1].

    uint8 pixels are divided by 255 in ``dtype``; float input is only cast.
    """
    X = np.asarray(X)
    if X.dtype == np.uint8:
        return X.astype(dtype) / np.asarray(255, dtype=dtype)
    return np.ascontiguousarray(X, dtype=dtype)


def gd_steps(params, state, X, y, lrs, t0=0, optimizer="gd", **hyper):
    """len(lrs) full-batch steps; step i uses learning rate lrs[i]. Returns each step's loss
    (before its update), shape (len(lrs),), float64."""
    lrs, hyper = check_optimizer(check_params(params), state, optimizer, lrs, t0, **hyper)
    losses = np.empty(len(lrs))
    for i, lr in enumerate(lrs):
        losses[i], grads = loss_and_grads(params, X, y)
        _update(params, grads, state, lr, t0 + i + 1, optimizer, **hyper)
    return losses


def shift_images(X, shifts):
    """Move each 28x28 image X[k] (a row of 784) by shifts[k] = (dy, dx) whole pixels, filling
    with zeros: pixel (r, c) goes to (r + dy, c + dx); pixels leaving the frame are dropped."""
    out = np.zeros_like(X)
    imgs, moved = X.reshape(-1, 28, 28), out.reshape(-1, 28, 28)
    for k, (dy, dx) in enumerate(np.asarray(shifts, dtype=np.int64)):
        src_r, dst_r = slice(max(0, -dy), 28 - max(0, dy)), slice(max(0, dy), 28 - max(0, -dy))
        src_c, dst_c = slice(max(0, -dx), 28 - max(0, dx)), slice(max(0, dx), 28 - max(0, -dx))
        moved[k, dst_r, dst_c] = imgs[k, src_r, src_c]
    return out


def sgd_epoch(params, state, X, y, perm, batch_size, lrs, t0=0, optimizer="sgd", shifts=None,
              **hyper):
    """One pass over the rows in the order ``perm``, in mini-batches of ``batch_size`` (the last
    may be smaller); step i uses lrs[i]. With ``shifts`` (len(perm), 2), the image perm[k] is
    moved by shifts[k] pixels first (augmentation). Returns each step's loss, (steps,) float64."""
    X = check_X(X, check_params(params))
    perm = check_perm(perm, len(X), batch_size)
    shifts = check_shifts(shifts, len(perm), X.shape[1])
    steps = -(-len(perm) // batch_size)
    lrs, hyper = check_optimizer(params, state, optimizer, lrs, t0, steps, **hyper)
    losses = np.empty(steps)
    for i in range(steps):
        rows = perm[i * batch_size:(i + 1) * batch_size]
        Xb = X[rows]
        if shifts is not None:
            Xb = shift_images(Xb, shifts[i * batch_size:(i + 1) * batch_size])
        losses[i], grads = loss_and_grads(params, Xb, y[rows])
        _update(params, grads, state, lrs[i], t0 + i + 1, optimizer, **hyper)
    return losses


def warm_up(params, X, y, optimizer, batch_size=None, progress=False, **hyper):
    """Nothing to prepare: plain NumPy runs at once. (The numba twin compiles its kernels here,
    or loads them from the cache, so that training's clock starts after that.)"""
