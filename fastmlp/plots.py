"""Figures (matplotlib, Agg backend: no display needed). Every function writes one PNG atomically.

Nothing else in the package imports matplotlib; it is imported here, when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import atomic_write


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
    _plt().close(fig)
    return path


def digits_grid(path, images, y_true, y_pred, n=36, title="test digits: predicted (true)"):
    """A grid of digits with their predicted and true labels; mistakes in red, shown first."""
    plt = _plt()
    images = np.asarray(images).reshape(-1, 28, 28)
    wrong = np.flatnonzero(y_true != y_pred)
    right = np.flatnonzero(y_true == y_pred)
    order = np.concatenate([wrong[: n // 3], right])[:n]
    cols = int(np.ceil(np.sqrt(len(order))))
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), order):
        bad = y_true[i] != y_pred[i]
        ax.imshow(images[i], cmap="gray_r" if not bad else "Reds")
        ax.set_title(f"{y_pred[i]} ({y_true[i]})", fontsize=9, color="red" if bad else "black")
    fig.suptitle(f"{title}; mistakes in red ({len(wrong)} of {len(y_true)} wrong)", fontsize=10)
    return _save(fig, path)


def curves(path, history, title="training", xlabel="step"):
    """Loss and accuracy against training steps or epochs (history["step"]): train, and
    validation where present."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    step = history["step"]
    a1.plot(step, history["loss"], label="train loss")
    if history.get("val_loss"):
        a1.plot(step, history["val_loss"], label="validation loss")
    a1.set_xlabel(xlabel)
    a1.set_ylabel("cross-entropy")
    a1.set_yscale("log")
    a1.legend()
    if history.get("train_accuracy"):
        a2.plot(step, history["train_accuracy"], label="train accuracy")
    if history.get("val_accuracy"):
        a2.plot(step, history["val_accuracy"], label="validation accuracy")
    if a2.lines:
        a2.set_xlabel(xlabel)
        a2.set_ylabel("accuracy")
        a2.legend()
    else:               # (no accuracy recorded during training: no validation split)
        a2.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def confusion(path, C, title="confusion matrix (test)", labels=None):
    """C[i, j] = samples of class i predicted as j, with counts in the cells; ``labels`` name
    the classes (default 0..k-1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(C), cmap="Blues")
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            ax.text(j, i, str(C[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if i == j else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(C.shape[1]))
    ax.set_yticks(range(C.shape[0]))
    if labels is not None:
        ax.set_xticklabels(labels, rotation=90 if max(map(len, labels)) > 2 else 0)
        ax.set_yticklabels(labels)
    ax.set_title(title)
    return _save(fig, path)


def first_layer(path, W, n=36):
    """The first layer's weight columns as 28x28 images (what each hidden unit looks for)."""
    plt = _plt()
    W = np.asarray(W)
    n = min(n, W.shape[1])
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for k, ax in zip(range(n), np.atleast_1d(axes).ravel()):
        w = W[:, k].reshape(28, 28)
        lim = np.abs(w).max() or 1.0
        ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle("first-layer weights (red +, blue -)", fontsize=10)
    return _save(fig, path)


def bench_chart(path, rows, title="iterations per second (higher is better)"):
    """Horizontal bars: for each benchmark name, reference and numba side by side (log scale).
    rows: list of (name, reference_ops or None, numba_ops or None)."""
    plt = _plt()
    names = [r[0] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    ref = [r[1] or 0 for r in rows]
    jit = [r[2] or 0 for r in rows]
    ax.barh(y - 0.2, ref, height=0.4, label="reference (NumPy)", color="#999999")
    ax.barh(y + 0.2, jit, height=0.4, label="numba", color="#1f77b4")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("operations per second (1 / mean time)")
    ax.legend(loc="lower right")
    ax.set_title(title)
    return _save(fig, path)
