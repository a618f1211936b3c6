"""The numba backend: the network's public functions, compiled and tuned for the CPU.

Read ``fastmlp.reference`` first: this package has the same *network-level* functions, with the
same names, signatures and meanings (row-major batches, ``Z = A @ W + b``, the 1/n factor only in
the loss backward, gradients overwritten, never accumulated, the ReLU mask taken from the forward
output). Tests hold each pair together, tensor by tensor.

The reference's *layer-level* functions (``linear_forward``/``linear_backward``, ``relu_*``,
``softmax_cross_entropy_*``) have no twins here: the kernels fuse the layers of a block of rows
into single passes, so no kernel computes one layer for a whole batch. The map below says which
kernels do each reference function's work.

=====================================  =========================================================
reference                              numba (module: kernels)
=====================================  =========================================================
``prepare``                            csr: ``prepare``/``to_csr`` (the CSR; ``_fill_csr``)
``forward``                            slots: ``_forward_kernel`` -> ``_block_forward``:
                                       sparse ``_first_layer``, dense ``_block_forward_dense``
``linear_forward`` (first layer)       sparse: ``_sparse_matmul`` (``_bands``), ``_sparse_row``
``linear_forward`` (dense layers)      dense: ``_dense_forward``
``relu_forward``                       dense: ``_relu_rows``
``softmax_cross_entropy_forward``/     dense: ``_block_softmax_xent`` (one fused pass)
``_backward``
``linear_backward``, ``relu_backward`` dense: ``_dense_backward`` (the mask fused in);
                                       sparse: ``_sparse_outer`` (first layer's dW)
``backward``                           slots: ``_block_backward``; split: ``_dense_half``,
                                       ``_update_half``
``loss_and_grads``                     slots: ``_slots_loop`` (one step, ``_sum_slots``)
``update``                             optim: ``_update_all`` (``_opt_rule``)
``predict_proba``, ``predict``         slots: ``_forward_kernel`` (dense: ``_clear_argmax``,
                                       ``_argmax_rows``)
``gd_steps``                           slots: ``_slots_loop`` (+ optim ``_update_from_slots``)
``sgd_epoch``                          split: ``_split_epoch`` (batch <= SPLIT_MAX_BATCH);
                                       slots: ``_slots_loop`` (larger batches)
``shift_images``                       sparse: ``_block_entries`` (shifts while gathering)
``warm_up`` (nothing to do)            api: ``warm_up`` (compiles what a run will use)
=====================================  =========================================================

Modules, imported one way (api -> slots/split -> sparse/dense/optim -> csr -> _codegen/_atomics
-> _options):

    _cache     Numba's on-disk cache made safe for processes compiling at once
    _options   every Numba option set and tunable constant
    _types     the named tuples the kernels take (Net, Grads, Opt, Steps, Scratch, Split)
    _codegen   LLVM IR: the vector compress, the register-resident sparse row, 8x8 transposes
    _atomics   task flags for the split epoch
    _fork      what a forked child may do (GNU OpenMP's threads do not survive fork)
    csr        the CSR type, compression, checks, per-CSR caches
    sparse     the first layer, forward and weight gradient
    dense      the feature-major dense layers, softmax/cross-entropy, transposes, argmax
    optim      the optimizer rules
    slots      whole batches in slots: forward, loss_and_grads, the full-batch loop
    split      the mini-batch epoch split by pixels between the two cores
    api        the public functions
    warmup     compiling ahead, in child processes on every core (``fastmlp warmup``)

How it is fast, and what was measured and dropped: ``docs/performance.md``.
"""

from . import _cache
_cache.install()    # before any kernel is loaded or saved: Numba's cache across processes

from ..common import OPTIMIZERS, confusion_matrix, init_state, one_hot  # noqa: E402
from ._options import (BAND_BYTES, BLOCK, CHUNK, KERNEL_LAYERS, LOGIT_GAP, MIN_SLOT_ROWS, NSLOTS,  # noqa: F401
                       ROW_GROUP,
                       NSLOTS_FWD, PATIENCE, SPLIT_MAX_BATCH)
from ._atomics import DONE, FREE, TAKEN  # noqa: F401
from .csr import CSR, from_scipy, prepare, to_csr
from .api import (accuracy, forward, gd_steps, loss_and_grads, predict, predict_proba, sgd_epoch,
                  update, warm_up)

__all__ = [
    "CSR", "prepare", "to_csr", "from_scipy", "forward", "loss_and_grads", "update", "init_state",
    "predict_proba", "predict", "accuracy", "one_hot", "confusion_matrix", "gd_steps",
    "sgd_epoch", "warm_up", "OPTIMIZERS", "NSLOTS",
]
