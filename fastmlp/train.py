"""Training: recipes, learning-rate schedules, the loop both backends share, evaluation, history.

    cfg = Config(backend="numba", optimizer="nesterov", epochs=10, batch_size=128, lr=0.05)
    result = fit(cfg, X_train, y_train)          # uint8 images, labels
    result.params, result.history, result.train_seconds

The loop is the same for every backend: each backend module (``reference`` or ``jit``) supplies
``prepare`` (the data in the form its kernels take), ``gd_steps`` (full-batch steps) and
``sgd_epoch`` (one shuffled mini-batch epoch), with the same signatures and meanings. The order of
the samples (the shuffle), the learning rate of every step and the initial parameters are all
decided here, from the seed, so both backends see exactly the same run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import reference
from ._signals import raise_if_interrupted
from .common import init_state
from .hyper import OPTIMIZERS, RANGES
from .params import Params, init_params, check_sizes, SCHEMES, DTYPES

BACKENDS = ("numba", "reference")
# A run's length is bounded before anything is allocated for it (a learning rate per step):
MAX_ITERATIONS = 1_000_000     # full-batch steps (on MNIST, hours on either backend)
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000_000         # steps in all: their learning rates take 80 MB
MAX_SHIFT = 2   # augmentation: each image moves by -2..2 pixels in each direction
SCHEDULES = ("constant", "cosine")

PRESETS = {
    # the original NumPy project: uniform init, full-batch gradient descent, 500 iterations
    "original": dict(optimizer="gd", iterations=500, epochs=None, lr=0.2, init="uniform",
                     schedule="constant", warmup=0.0, momentum=0.9, weight_decay=0.0,
                     val_fraction=0.0, patience=None),
    # the fast default: mini-batch Nesterov momentum, warm-up then cosine decay, He init,
    # weight decay; all 60,000 training images (ask for a validation split with val_fraction)
    "fast": dict(optimizer="nesterov", iterations=None, epochs=10, batch_size=128, lr=0.2,
                 init="he", schedule="cosine", warmup=0.03, momentum=0.9, weight_decay=3e-4,
                 val_fraction=0.0, patience=None, augment=False),
}


class TrainingDiverged(ValueError):
    """The loss or a parameter became non-finite during training."""


@dataclass
class Config:
    """Everything that defines a training run (validated by ``check``)."""

    backend: str = "numba"
    optimizer: str = "nesterov"
    iterations: int | None = None     # full-batch steps (gd), or None for mini-batch epochs
    epochs: int | None = 10
    batch_size: int = 128
    lr: float = 0.2
    schedule: str = "cosine"
    warmup: float = 0.03              # fraction of all steps spent ramping the lr up from 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    init: str = "he"
    seed: int = 0
    dtype: str = "float32"
    sizes: tuple = (784, 72, 36, 10)
    val_fraction: float = 0.0
    patience: int | None = None       # early stopping: epochs without a better validation loss
    augment: bool = False             # random shifts of up to MAX_SHIFT pixels, every epoch
    eval_every: int = 10              # full batch: evaluate (and update the progress bar) every N

    def check(self) -> "Config":
        """Raise ValueError naming the option, what is allowed and what was given."""
        def need(ok, what, allowed, got):
            if not ok:
                raise ValueError(f"{what} must be {allowed}; got {got!r}")
        need(self.backend in BACKENDS, "backend", f"one of {', '.join(BACKENDS)}", self.backend)
        need(self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}",
             self.optimizer)
        need(self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}", self.schedule)
        need(self.init in SCHEMES, "init", f"one of {', '.join(SCHEMES)}", self.init)
        need(self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}", self.dtype)
        try:
            self.sizes = check_sizes(self.sizes)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        need((self.iterations is None) != (self.epochs is None), "exactly one of iterations and epochs",
             "given", f"iterations={self.iterations}, epochs={self.epochs}")
        if self.iterations is not None:
            need(_is_int(self.iterations) and 1 <= self.iterations <= MAX_ITERATIONS, "iterations",
                 f"an integer in 1..{MAX_ITERATIONS}", self.iterations)
        if self.epochs is not None:
            need(_is_int(self.epochs) and 1 <= self.epochs <= MAX_EPOCHS, "epochs",
                 f"an integer in 1..{MAX_EPOCHS}", self.epochs)
        need(_is_int(self.batch_size) and self.batch_size >= 1, "batch size", "an integer >= 1",
             self.batch_size)
        for name, what, note in (("lr", "learning rate", ""), ("momentum", "momentum", ""),
                                 ("weight_decay", "weight decay", ""), ("warmup", "warmup", ""),
                                 ("val_fraction", "validation fraction",
                                  " (0 = no validation split)")):
            v = getattr(self, name)
            need(_finite(v) and RANGES[name].holds(v), what, RANGES[name].describe() + note, v)
        need(_is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0", self.seed)
        need(_is_int(self.eval_every) and self.eval_every >= 1, "eval_every", "an integer >= 1",
             self.eval_every)
        if self.augment:
            need(self.epochs is not None, "augment", "used with mini-batch epochs (not iterations)",
                 self.augment)
            need(tuple(self.sizes)[0] == 784, "augment", "used with 28x28 images (784 inputs)",
                 self.sizes)
        if self.patience is not None:
            need(_is_int(self.patience) and self.patience >= 1, "patience", "an integer >= 1",
                 self.patience)
            need(self.val_fraction > 0, "patience (early stopping)", "used with a validation split "
                 "(val_fraction > 0)", self.patience)
        return self


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
        and math.isfinite(v)


def backend_module(name: str):
    """The module implementing a backend: "reference" or "numba" (imported on first use)."""
    if name == "reference":
        return reference
    if name == "numba":
        from . import jit
        return jit
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")


# ----------------------------------------------------------------------------------------------
# learning-rate schedules


def lr_schedule(cfg: Config, total_steps: int) -> np.ndarray:
    """The learning rate of every step, float64 (total_steps,).

    constant: lr throughout. cosine: linear warm-up from lr/total to lr over the first
    ``warmup`` fraction of steps, then cosine decay to 0 at the last step.
    """
    t = np.arange(total_steps, dtype=np.float64)
    if cfg.schedule == "constant":
        return np.full(total_steps, float(cfg.lr))
    w = int(round(cfg.warmup * total_steps))
    lrs = np.empty(total_steps)
    if w:
        lrs[:w] = cfg.lr * (t[:w] + 1) / w
    rest = total_steps - w
    lrs[w:] = cfg.lr * 0.5 * (1 + np.cos(np.pi * (t[w:] - w) / max(1, rest)))
    return lrs


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class Result:
    params: Params
    history: dict = field(default_factory=dict)
    train_seconds: float = 0.0        # time inside the backend's training steps
    startup_seconds: float = 0.0      # preparing the data for the backend and (numba) compiling
    steps: int = 0
    best_epoch: int | None = None
    val_accuracy: float | None = None


def split_validation(n: int, fraction: float, seed: int):
    """Row numbers of the training and validation parts (validation drawn at random, by seed)."""
    if fraction <= 0:
        return np.arange(n), np.arange(0)
    rng = np.random.default_rng([seed, 1])
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def evaluate(backend, params: Params, Xp, y) -> tuple[float, float]:
    """(mean loss, accuracy) of params on prepared data Xp with labels y."""
    P = backend.predict_proba(params, Xp)
    y = np.asarray(y, dtype=np.int64)
    p_true = P[np.arange(len(y)), y].astype(np.float64)
    loss = float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))
    return loss, float(np.mean(P.argmax(axis=1) == y))


EXPLODED = 100.0   # a loss above this many times the first step's loss counts as diverged


def _check_diverged(losses, params, where, lrs, start_index, first_loss):
    """Stop a diverged run, naming the step where it happened: the loss became non-finite, or
    exceeded EXPLODED x the first step's loss (a learning rate far too large can kill every ReLU
    and leave a huge but finite loss), or a parameter became non-finite."""
    limit = EXPLODED * max(first_loss, np.log(10))
    bad = np.flatnonzero(~np.isfinite(losses) | (losses > limit))
    if bad.size == 0 and params.all_finite():
        return
    i = int(bad[0]) if bad.size else len(losses) - 1
    if not bad.size:
        what = "a parameter became non-finite"
    elif np.isfinite(losses[i]):
        what = f"the loss exploded to {losses[i]:.4g} (over {EXPLODED:g}x its first value)"
    else:
        what = f"the loss became {losses[i]}"
    lr = float(lrs[i])
    raise TrainingDiverged(f"training diverged: {what} at {where} {start_index + i + 1} "
                           f"(lr={lr:g}); try a smaller learning rate (e.g. --lr {lr / 10:g})")


def fit(cfg: Config, X, y, *, progress: bool = True, on_epoch=None) -> Result:
    """Train a network on uint8 images X (n, 784) and labels y (n,) as ``cfg`` says.

    Full batch (cfg.iterations): ``iterations`` steps of the optimizer on all training rows.
    Mini-batch (cfg.epochs): per epoch, a fresh shuffle (from the seed) and ceil(n / batch_size)
    steps. With cfg.val_fraction > 0 a validation part is held out of X and evaluated after each
    epoch; the parameters of the epoch with the lowest validation loss are returned, and with
    cfg.patience training stops after that many epochs without improvement. The test set is
    never seen here.
    """
    cfg.check()
    backend = backend_module(cfg.backend)
    dtype = DTYPES[cfg.dtype]
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[1] != cfg.sizes[0] or len(X) < 1:
        raise ValueError(f"X must have shape (n, {cfg.sizes[0]}) with n >= 1; got {X.shape}")
    if len(y) != len(X):
        raise ValueError(f"labels must have shape ({len(X)},), one per row of X; got {y.shape}")

    tr, va = split_validation(len(X), cfg.val_fraction, cfg.seed)
    if cfg.epochs is not None and cfg.batch_size > len(tr):
        raise ValueError(f"batch size must be between 1 and the number of training rows "
                         f"({len(tr)}); got {cfg.batch_size}")
    if cfg.epochs is not None and -(-len(tr) // cfg.batch_size) * cfg.epochs > MAX_STEPS:
        raise ValueError(f"epochs x steps per epoch must be at most {MAX_STEPS}; got "
                         f"{cfg.epochs} x {-(-len(tr) // cfg.batch_size)} (batch size "
                         f"{cfg.batch_size}); use fewer epochs or larger batches")
    params = init_params(cfg.sizes, cfg.init, cfg.seed, dtype)
    state = init_state(params, cfg.optimizer)
    hyper = dict(momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    t0 = time.perf_counter()
    ytr = y[tr].astype(np.int64)
    # compile the kernels this run uses (or load them from the cache) before the clock starts,
    # and before anything else here calls one
    backend.warm_up(params, X, ytr, cfg.optimizer,
                    None if cfg.iterations is not None else cfg.batch_size, progress=progress,
                    **hyper)
    Xtr = backend.prepare(X[tr] if len(va) else X, dtype)   # no copy without a validation split
    Xva = backend.prepare(X[va], dtype) if len(va) else None
    yva = y[va].astype(np.int64)
    result = Result(params=params, startup_seconds=time.perf_counter() - t0)
    hist = result.history
    for key in ("step", "epoch", "loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        hist[key] = []

    def record(step, epoch, loss, elapsed):
        hist["step"].append(step)
        hist["epoch"].append(epoch)
        hist["loss"].append(float(loss))
        hist["seconds"].append(elapsed)
        _, acc = evaluate(backend, params, Xtr, ytr)
        hist["train_accuracy"].append(acc)
        if Xva is not None:
            vl, vacc = evaluate(backend, params, Xva, yva)
            hist["val_loss"].append(vl)
            hist["val_accuracy"].append(vacc)
        return acc

    if cfg.iterations is not None:
        result.train_seconds = _full_batch(cfg, backend, params, state, hyper, Xtr, ytr, record,
                                           progress)
        result.steps = cfg.iterations
    else:
        result.train_seconds = _epochs(cfg, backend, params, state, hyper, Xtr, ytr, Xva, record,
                                       result, progress, on_epoch)
    if Xva is not None:
        result.val_accuracy = evaluate(backend, result.params, Xva, yva)[1]
    return result


def _full_batch(cfg, backend, params, state, hyper, Xtr, ytr, record, progress) -> float:
    """cfg.iterations full-batch steps, evaluated every cfg.eval_every. Returns the seconds spent
    in the backend's steps."""
    from tqdm.auto import tqdm

    lrs = lr_schedule(cfg, cfg.iterations)
    bar = tqdm(total=cfg.iterations, desc="training", unit="it", disable=not progress, leave=False)
    train_time = 0.0
    first_loss = None
    done = 0
    while done < cfg.iterations:
        k = min(cfg.eval_every, cfg.iterations - done)
        t = time.perf_counter()
        losses = backend.gd_steps(params, state, Xtr, ytr, lrs[done:done + k], t0=done,
                                  optimizer=cfg.optimizer, **hyper)
        train_time += time.perf_counter() - t
        raise_if_interrupted()
        first_loss = losses[0] if first_loss is None else first_loss
        _check_diverged(losses, params, "iteration", lrs[done:done + k], done, first_loss)
        done += k
        acc = record(done, None, losses[-1], train_time)
        bar.update(k)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", train_acc=f"{acc:.4f}")
    bar.close()
    return train_time


def _epochs(cfg, backend, params, state, hyper, Xtr, ytr, Xva, record, result, progress,
            on_epoch) -> float:
    """cfg.epochs shuffled mini-batch epochs, each evaluated after it; with a validation split,
    keeps the best epoch's parameters in result and stops early after cfg.patience epochs
    without improvement. Returns the seconds spent in the backend's epochs."""
    from tqdm.auto import tqdm

    hist = result.history
    n = len(ytr)
    steps_per_epoch = -(-n // cfg.batch_size)
    lrs = lr_schedule(cfg, steps_per_epoch * cfg.epochs)
    rng = np.random.default_rng([cfg.seed, 2])
    shift_rng = np.random.default_rng([cfg.seed, 3])
    bar = tqdm(total=cfg.epochs, desc="training", unit="epoch", disable=not progress, leave=False)
    train_time = 0.0
    first_loss = None
    best = (math.inf, None, None)
    since_best = 0
    for epoch in range(cfg.epochs):
        perm = rng.permutation(n)
        shifts = (shift_rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(n, 2), dtype=np.int8)
                  if cfg.augment else None)
        s0 = epoch * steps_per_epoch
        t = time.perf_counter()
        losses = backend.sgd_epoch(params, state, Xtr, ytr, perm, cfg.batch_size,
                                   lrs[s0:s0 + steps_per_epoch], t0=s0,
                                   optimizer=cfg.optimizer, shifts=shifts, **hyper)
        train_time += time.perf_counter() - t
        raise_if_interrupted()
        first_loss = losses[0] if first_loss is None else first_loss
        _check_diverged(losses, params, f"epoch {epoch + 1}, step", lrs[s0:s0 + steps_per_epoch],
                        0, first_loss)
        acc = record(s0 + steps_per_epoch, epoch + 1, losses.mean(), train_time)
        post = dict(loss=f"{losses.mean():.4f}", train_acc=f"{acc:.4f}")
        if Xva is not None:
            post["val_acc"] = f"{hist['val_accuracy'][-1]:.4f}"
            if hist["val_loss"][-1] < best[0]:
                best = (hist["val_loss"][-1], epoch + 1, params.copy())
                since_best = 0
            else:
                since_best += 1
        bar.update(1)
        bar.set_postfix(**post)
        if on_epoch is not None:
            on_epoch(epoch + 1, params)
        if cfg.patience is not None and since_best >= cfg.patience:
            break
    bar.close()
    result.steps = steps_per_epoch * len(hist["epoch"])
    if best[2] is not None:   # with a validation split, keep the best epoch's parameters
        result.params = best[2]
        result.best_epoch = best[1]
    return train_time
