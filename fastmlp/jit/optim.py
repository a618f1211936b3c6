"""The optimizer updates: the same rules as ``reference.update``, one fused pass per array.

Legend
------
    opt         an Opt (_types.py): the rule's code (GD, MOMENTUM, NESTEROV or ADAM, from
                ``fastmlp.hyper``), its state m, v per layer, its constants, the weight decay
    m, v        the rule's state: v for momentum/nesterov, m and v for adam
    lr          this step's learning rate; c1, c2 Adam's bias corrections 1 - beta1^t, 1 - beta2^t
    pW, pb      per-slot partial gradients (summed in slot order as the update reads them)

All strict IEEE arithmetic (STRICT), so a compiled training step applies exactly the public
``update`` to exactly ``loss_and_grads``' gradient. ``_update_from_slots`` pranges over weight
rows (each thread owns its rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..params import Params
from .._validate import check_optimizer
from ..hyper import ADAM, GD, MOMENTUM, NESTEROV, OPTIMIZER_TABLE
from ._options import STRICT, UPDATE_ROWS
from ._types import Opt, Steps, padded


@njit(inline="always", **STRICT)
def _opt_rule(w, m, v, g, opt, lr, c1, c2, wd):
    """One optimizer step on the 1-D arrays w (in place), with gradient g plus wd * w (weight
    decay, read on the way: no pass of its own over the arrays) and state m, v (used as the
    rule needs: v for momentum/nesterov, m and v for adam; otherwise untouched). With wd 0 the
    gradient is g itself, as in the reference (no 0 * w term, which would turn -0.0 into 0.0
    and an inf weight into NaN). The rules themselves are _rule, one compiled function that
    every update calls (inlined at each call site, their loops made every kernel that updates
    several times larger to compile), taking Opt's numbers rather than the Opt: its tuples of
    state arrays would be passed value by value at every call."""
    _rule(w, m, v, g, opt.code, opt.momentum, opt.beta1, opt.one_minus_beta1, opt.beta2,
          opt.one_minus_beta2, opt.eps, lr, c1, c2, wd)


@njit(**STRICT)
def _rule(w, m, v, g, code, mu, b1, ob1, b2, ob2, eps, lr, c1, c2, wd):
    """_opt_rule's work: the loops with weight decay, or without it when wd is 0."""
    if wd != 0:
        _rule_loops(w, m, v, g, code, mu, b1, ob1, b2, ob2, eps, lr, c1, c2, wd, True)
    else:
        _rule_loops(w, m, v, g, code, mu, b1, ob1, b2, ob2, eps, lr, c1, c2, wd, False)


@njit(inline="always", **STRICT)
def _rule_loops(w, m, v, g, code, mu, b1, ob1, b2, ob2, eps, lr, c1, c2, wd, decay):
    """_rule's loops, each rule its own loop so that each vectorizes; ``decay`` is a
    constant at each of the two inlined call sites, so each gets loops without the test."""
    n = w.shape[0]
    if code == GD:
        for j in range(n):
            gj = g[j] + wd * w[j] if decay else g[j]
            w[j] -= lr * gj
    elif code == MOMENTUM:
        for j in range(n):
            gj = g[j] + wd * w[j] if decay else g[j]
            v[j] = v[j] * mu + gj
            w[j] -= lr * v[j]
    elif code == NESTEROV:
        for j in range(n):
            gj = g[j] + wd * w[j] if decay else g[j]
            v[j] = v[j] * mu + gj
            w[j] -= lr * (gj + mu * v[j])
    else:
        for j in range(n):
            gj = g[j] + wd * w[j] if decay else g[j]
            m[j] = m[j] * b1 + ob1 * gj
            v[j] = v[j] * b2 + ob2 * gj * gj
            w[j] -= lr * (m[j] / c1) / (np.sqrt(v[j] / c2) + eps)


@njit(inline="always", **STRICT)
def _no_decay(opt):
    """0 in the working dtype (wd - wd: wd is finite), for biases, which are not decayed; a
    literal 0.0 would be float64 and carry float32 arithmetic into float64."""
    return opt.wd - opt.wd


@njit(inline="always", **STRICT)
def _update_rows(W, pW, mW, vW, opt, lr, c1, c2, k0, k1):
    """Rows k0:k1 of the optimizer step, as one flat run of numbers (the rows are contiguous):
    the slots' partials pW[:, k0:k1] summed in slot order into slot 0's (the gradient), then the
    rule with weight decay. m, v state rows as the rule needs."""
    w = W[k0:k1].reshape(-1)
    g = pW[0, k0:k1].reshape(-1)
    for s in range(1, pW.shape[0]):
        gs = pW[s, k0:k1].reshape(-1)
        for j in range(g.shape[0]):
            g[j] += gs[j]
    m = mW[k0:k1].reshape(-1) if opt.code == ADAM else w
    v = vW[k0:k1].reshape(-1) if opt.code != GD else w
    _opt_rule(w, m, v, g, opt, lr, c1, c2, opt.wd)


@njit(inline="always", **STRICT)
def _update_bias(b, pb, mb, vb, opt, lr, c1, c2):
    """The optimizer step of a bias from its slot partials pb (summed in slot order; no decay)."""
    gb = pb[0]
    for s in range(1, pb.shape[0]):
        for j in range(gb.shape[0]):
            gb[j] += pb[s, j]
    code = opt.code
    _opt_rule(b, mb if code == ADAM else b, vb if code != GD else b, gb, opt, lr, c1, c2,
              _no_decay(opt))


@njit(parallel=True, **STRICT)
def _update_from_slots(net, part, opt, lr, c1, c2):
    """The optimizer step fused with the sum of the slot partials, row by row (_update_rows).
    No separate gradient array is written; the next step's slots zero their partials.
    prange over runs of UPDATE_ROWS weight rows: each thread owns its rows."""
    code, mWs, mbs, vWs, vbs, mu, b1, ob1, b2, ob2, eps, wd = opt   # (no tuple inside a tuple
    for l in range(net.offs.shape[0] - 1):                          # into a prange: see _types)
        W, pW, mW, vW = net.W[l], part.W[l], mWs[l], vWs[l]
        nrows = W.shape[0]
        for i in prange((nrows + UPDATE_ROWS - 1) // UPDATE_ROWS):
            k = np.int64(i) * UPDATE_ROWS    # (see slots._slots_loop)
            _update_rows(W, pW, mW, vW, Opt(code, mWs, mbs, vWs, vbs, mu, b1, ob1, b2, ob2, eps, wd),
                         lr, c1, c2, k, min(nrows, k + UPDATE_ROWS))
        _update_bias(net.b[l], part.b[l], mbs[l], vbs[l], opt, lr, c1, c2)


@njit(**STRICT)
def _update_all(net, grads, opt, lr, c1, c2):
    """The optimizer step from whole gradients (the public ``update``): the same rule."""
    code = opt.code
    use_m = code == ADAM
    use_v = code != GD
    for l in range(net.offs.shape[0] - 1):
        w = net.W[l].reshape(-1)
        m = opt.mW[l].reshape(-1) if use_m else w
        v = opt.vW[l].reshape(-1) if use_v else w
        _opt_rule(w, m, v, grads.W[l].reshape(-1), opt, lr, c1, c2, opt.wd)
        b = net.b[l]
        _opt_rule(b, opt.mb[l] if use_m else b, opt.vb[l] if use_v else b, grads.b[l], opt, lr,
                  c1, c2, _no_decay(opt))


def _opt_args(params: Params, state, optimizer, lrs, t0, steps=None, **hyper):
    """The optimizer (an Opt) and its per-step values (a Steps) as the compiled update takes
    them, in the params' dtype, all of it checked first, as the reference checks it
    (_validate.check_optimizer)."""
    lrs, hyper = check_optimizer(params, state, optimizer, lrs, t0, steps, **hyper)
    momentum, beta1, beta2, eps, weight_decay = (hyper[k] for k in (
        "momentum", "beta1", "beta2", "eps", "weight_decay"))
    dt = params.dtype
    L = len(params.weights)
    k = 2 * L
    empty2, empty1 = np.zeros((0, 0), dt), np.zeros(0, dt)
    if OPTIMIZER_TABLE[optimizer].code == ADAM:
        mWs, mbs = tuple(state[0:k:2]), tuple(state[1:k:2])
        vWs, vbs = tuple(state[k::2]), tuple(state[k + 1::2])
    elif optimizer in ("momentum", "nesterov"):
        mWs, mbs = (empty2,) * L, (empty1,) * L
        vWs, vbs = tuple(state[0:k:2]), tuple(state[1:k:2])
    else:
        mWs, mbs, vWs, vbs = (empty2,) * L, (empty1,) * L, (empty2,) * L, (empty1,) * L
    t = (t0 + 1 + np.arange(len(lrs))).astype(np.float64)   # Adam's bias corrections, vectorized
    c1s = 1 - np.power(float(beta1), t)                      # (a Python loop cost 1.3 ms per epoch)
    c2s = 1 - np.power(float(beta2), t)
    if optimizer == "adam_hat":   # lr sqrt(c2) / c1 * m / (sqrt(v) + eps), as the rule reads it
        c1s, c2s = c1s / np.sqrt(c2s), np.ones_like(c2s)
    c1s, c2s = c1s.astype(dt), c2s.astype(dt)
    hp = np.array([momentum, beta1, 1 - beta1, beta2, 1 - beta2, eps, weight_decay], dtype=dt)
    like_W, like_b = params.weights[0], params.biases[0]
    opt = Opt(OPTIMIZER_TABLE[optimizer].code, padded(mWs, like_W), padded(mbs, like_b),
              padded(vWs, like_W), padded(vbs, like_b), *hp)
    return opt, Steps(lrs.astype(dt), c1s, c2s)
