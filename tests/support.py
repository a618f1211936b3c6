"""Helpers shared by the tests."""

import numpy as np


def real_batch(mnist_train, n, dtype, start=0):
    X, y = mnist_train
    dt = np.dtype(dtype)
    return X[start:start + n].astype(dt) / dt.type(255), y[start:start + n]
