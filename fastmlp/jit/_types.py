"""The named tuples the kernels take, so that a kernel's arguments say what they are. Numba
compiles a named tuple's fields as separate values: reading ``net.W`` costs nothing.

Argument order in every kernel: outputs first, then inputs and weights, then sizes.

One limit of Numba's parallel loops: a ``prange`` body receives a tuple argument as its fields,
one level deep, and cannot take a tuple inside a tuple (Net.W inside Net). So each parallel
kernel unpacks Net, Grads and Opt before its ``prange`` and builds them again inside the body
(free: a named tuple is its fields). Nor can it rebuild a named tuple that came out of
another one, which is why Opt holds its constants as fields rather than a tuple of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba.core import types
from numba.extending import typeof_impl

from . import _options


class Net(NamedTuple):
    """The network, as the kernels read and update it. Its depth L is len(offs) - 1, known only
    at run time: W and b hold KERNEL_LAYERS arrays whatever L is (padded with empty arrays, see
    padded()), so one compiled set of kernels serves every depth up to KERNEL_LAYERS; a
    kernel loops over range(L), never over the tuple's length."""
    W: tuple                # weights, one (fan_in, fan_out) array per layer (Params.weights)
    b: tuple                # biases, one (fan_out,) array per layer
    offs: np.ndarray        # int64 (L + 1,): layer l's units are rows offs[l]:offs[l + 1] of a
                            # feature-major block (cumulative layer widths)


def padded(arrays, like=None) -> tuple:
    """arrays as a tuple of max(KERNEL_LAYERS, len(arrays)) arrays: the rest empty arrays of the
    same dtype and number of dimensions (or like's), which Numba types as the real ones. A
    tuple's length is part of its Numba type; padded, every depth has the same type."""
    arrays = tuple(arrays)
    like = arrays[0] if like is None else like
    key = (like.dtype, like.ndim)
    empty = _EMPTY.get(key)
    if empty is None:        # one per kind, shared: nothing is ever written to an empty array
        empty = _EMPTY[key] = np.zeros((0,) * like.ndim, like.dtype)
    return arrays + (empty,) * (max(_options.KERNEL_LAYERS, len(arrays)) - len(arrays))


_EMPTY: dict = {}


class Grads(NamedTuple):
    """Gradients of every layer: per-slot partials, W[l] (nslots, fan_in, fan_out) and b[l]
    (nslots, fan_out), or whole gradients, W[l] (fan_in, fan_out) and b[l] (fan_out,)."""
    W: tuple
    b: tuple


class Opt(NamedTuple):
    """An optimizer: its rule, its state and its constants in the working dtype (optim.py)."""
    code: int               # GD, MOMENTUM, NESTEROV or ADAM (fastmlp.hyper)
    mW: tuple               # Adam's first moments per layer (empty arrays for other rules)
    mb: tuple
    vW: tuple               # momentum buffers, or Adam's second moments (empty for gd)
    vb: tuple
    momentum: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps: float
    wd: float               # weight decay (weights only, not biases)


class Steps(NamedTuple):
    """Per-step values of a training loop, one entry per step."""
    lr: np.ndarray          # learning rates
    c1: np.ndarray          # Adam's bias corrections 1 - beta1^t and 1 - beta2^t
    c2: np.ndarray


class Scratch(NamedTuple):
    """Per-slot scratch of the block kernels (slots.py: _alloc_scratch); [s] is slot s's."""
    zrow: np.ndarray        # (nslots, BLOCK, H): the sparse first layer's output, row-major
    AT: np.ndarray          # (nslots, units, BLOCK): activations, feature-major
    dZT: np.ndarray         # (nslots, units, BLOCK): dL/dZ, feature-major
    col: np.ndarray         # (nslots, 2, BLOCK): the softmax's column max [0] and sum [1]
    rng: np.ndarray         # (nslots, 2, BLOCK) int64: each block row's entry range
    idx: np.ndarray         # (nslots, cap) the CSR's index dtype: a block's shifted entries (augmentation)
    pix: np.ndarray         # (nslots, cap) uint8: their pixels, for a CSR of pixels (else cap 0)
    val: np.ndarray         # (nslots, cap): their float values, for a CSR of floats (else cap 0)
    crng: np.ndarray        # (nslots, 2, n_in) int64: a block's entries regrouped by pixel
                            # (sparse._by_pixel; these four empty where it goes row by row)
    cidx: np.ndarray        # (nslots, cap) the CSR's index dtype: their rows in the block
    cpix: np.ndarray        # (nslots, cap) uint8, for a CSR of pixels (else cap 0)
    cval: np.ndarray        # (nslots, cap) floats, for a CSR of floats (else cap 0)


class Split(NamedTuple):
    """The pixel-split epoch's own arrays (split.py: _split_scratch), per half h = 0, 1."""
    jsplit: int             # half 0 owns first-layer weight rows [0, jsplit), half 1 the rest
    cut: np.ndarray         # int64 (n,): each CSR row's first entry at a pixel >= jsplit
    rng: np.ndarray         # (2, 2, batch) int64: the batch rows' entry ranges in each half
    idx: np.ndarray         # (2, cap) the CSR's index dtype: shifted entries of each half (augmentation)
    pix: np.ndarray         # (2, cap) uint8 for a CSR of pixels (else cap 0)
    val: np.ndarray         # (2, cap) floats for a CSR of floats (else cap 0)
    zpart: np.ndarray       # (2, batch, H): each half's partial first-layer product (no bias)
    dz1: np.ndarray         # (batch, H): the batch's first-layer dL/dZ, row-major
    gW1: np.ndarray         # (1, n_in, H): the first layer's weight gradient
    zero_b: np.ndarray      # (H,) zeros: the bias of a partial product
    crng: np.ndarray        # (2, 2, n_in) int64: each half's entries regrouped by pixel
                            # (sparse._by_pixel; these four empty where it goes row by row)
    cidx: np.ndarray        # (2, cap) the CSR's index dtype: their rows in the batch
    cpix: np.ndarray        # (2, cap) uint8 for a CSR of pixels (else cap 0)
    cval: np.ndarray        # (2, cap) floats for a CSR of floats (else cap 0)
    bypix: np.ndarray       # (2,) bool: whether each half's gradient of this step goes by pixel


# Numba types a named tuple in Python code, field by field: 0.1-0.3 ms per tuple at every call,
# which a predict of one image feels, and which the second thread of the split epoch waits for
# (its arguments are unboxed while it holds the GIL). A tuple's type depends only on these facts
# of its fields, so it is computed once per kind of tuple.
_TYPES: dict = {}


def _kind(v):
    if isinstance(v, np.ndarray):
        return v.dtype.char, v.ndim, v.flags.num          # flags: layout, writeable, aligned...
    if isinstance(v, tuple):
        return type(v), tuple(_kind(x) for x in v)
    if isinstance(v, np.generic):
        return v.dtype.char
    if isinstance(v, int) and not isinstance(v, bool):
        return int, -2**63 <= v < 2**63                     # (int64, or not)
    return type(v)


def _typeof_cached(val, c):
    key = _kind(val)
    ty = _TYPES.get(key)
    if ty is None:
        ty = _TYPES[key] = types.BaseTuple.from_types([typeof_impl(v, c) for v in val], type(val))
    return ty


for _cls in (Net, Grads, Opt, Steps, Scratch, Split):
    typeof_impl.register(_cls)(_typeof_cached)
