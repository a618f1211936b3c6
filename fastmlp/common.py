"""What both backends share, so that neither imports the other: the optimizer state, labels as
one-hot rows, the confusion matrix and accuracy. ``fastmlp.reference`` and ``fastmlp.jit`` both
re-export these under their own names.
"""

from __future__ import annotations

import numpy as np

from .params import Params
from .hyper import OPTIMIZER_TABLE, OPTIMIZERS
from ._validate import check_labels, check_y

__all__ = ["OPTIMIZERS", "init_state", "one_hot", "confusion_matrix", "accuracy_of"]


def init_state(params: Params, optimizer: str):
    """Optimizer buffers: [] for gd/sgd, [v per array] for momentum/nesterov, [m..., v...] for
    adam (each zero, shaped like params.arrays())."""
    if optimizer not in OPTIMIZER_TABLE:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    buffers = OPTIMIZER_TABLE[optimizer].buffers
    return [np.zeros_like(a) for _ in range(buffers) for a in params.arrays()]


def one_hot(y, k=10, dtype=np.float64):
    """(n,) integer labels -> (n, k) rows with a single 1 at the label's column."""
    y = check_labels(y, k)
    Y = np.zeros((len(y), k), dtype=dtype)
    Y[np.arange(len(y)), y] = 1
    return Y


def confusion_matrix(y_true, y_pred, k=10):
    """C[i, j] = number of samples of true class i predicted as class j, shape (k, k), int64."""
    y_true, y_pred = check_labels(y_true, k, "y_true"), check_labels(y_pred, k, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length; got {len(y_true)} and "
                         f"{len(y_pred)}")
    C = np.zeros((k, k), dtype=np.int64)
    np.add.at(C, (y_true, y_pred), 1)
    return C


def accuracy_of(predict, params: Params, X, y) -> float:
    """Fraction of rows of X whose ``predict(params, X)`` equals the label (each backend's
    ``accuracy`` is this with its own predict)."""
    y = check_y(y, len(X))
    return float((predict(params, X) == y).mean())
