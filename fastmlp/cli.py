"""The ``fastmlp`` command: train, evaluate, predict, compare, bench.

``scripts/train_fast.py`` is ``fastmlp train``; ``scripts/compare_backends.py`` is
``fastmlp compare``. Every foreseeable error (bad option, missing data, unreadable model or
image, unwritable directory, diverged training) ends the command with one ``error:`` line and
a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .hyper import OPTIMIZERS, RANGES
from .machine import machine_info
from .train import MAX_EPOCHS, MAX_ITERATIONS

EXIT_USAGE = 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: "<prog>: error: <what>"."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class CommandError(Exception):
    """A foreseeable failure, reported as one line."""


# ----------------------------------------------------------------------------------------------
# option types: each names what is allowed and what was given


def _number(kind, test, allowed):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}; got {text}")
        return value
    return parse


def _in_range(r):
    """An option type for a hyperparameter's range (fastmlp.hyper.RANGES)."""
    return _number(float, r.holds, f"a number {r.describe()}")


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
iterations_type = _number(int, lambda v: 1 <= v <= MAX_ITERATIONS, f"an integer in 1..{MAX_ITERATIONS}")
epochs_type = _number(int, lambda v: 1 <= v <= MAX_EPOCHS, f"an integer in 1..{MAX_EPOCHS}")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
lr_type = _in_range(RANGES["lr"])
weight_decay_type = _in_range(RANGES["weight_decay"])
momentum_type = _in_range(RANGES["momentum"])
warmup_type = _in_range(RANGES["warmup"])
# on the command line 0 is not a fraction: --no-val asks for no validation split
val_fraction_type = _in_range(RANGES["val_fraction"]._replace(lo_closed=False))


# ----------------------------------------------------------------------------------------------
# train


def add_train_options(p: argparse.ArgumentParser) -> None:
    from .train import BACKENDS, PRESETS, SCHEDULES
    p.add_argument("--preset", choices=sorted(PRESETS), default="fast",
                   help="a recipe; options given explicitly override it (default: fast)")
    p.add_argument("--backend", choices=BACKENDS, help="numba (default) or reference")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--iterations", type=iterations_type,
                   help="full-batch steps (instead of --epochs)")
    p.add_argument("--epochs", type=epochs_type, help="mini-batch epochs (instead of --iterations)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=lr_type, help="(peak) learning rate")
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup", type=warmup_type, help="fraction of steps for the lr warm-up")
    p.add_argument("--momentum", type=momentum_type)
    p.add_argument("--weight-decay", type=weight_decay_type)
    p.add_argument("--init", choices=("uniform", "he"))
    p.add_argument("--seed", type=nonneg_int, default=None)
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--hidden", type=_hidden, metavar="W1,W2,...",
                   help="hidden layer widths (default 72,36: the network is 784-W1-...-10; "
                        "with --data, 100)")
    p.add_argument("--val-fraction", type=val_fraction_type,
                   help="part of the training set held out for validation")
    p.add_argument("--no-val", action="store_true", help="no validation split")
    p.add_argument("--patience", type=positive_int, help="early stopping after N epochs without "
                   "a better validation loss")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random shifts of up to 2 pixels, new every epoch (mini-batch only)")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    p.add_argument("--threads", type=positive_int, help="Numba threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--save", type=_file_path, metavar="PATH", help="write the trained model (.npz)")
    p.add_argument("--metrics-json", type=_file_path, metavar="PATH",
                   help="write the run's metrics")
    p.add_argument("--plot-dir", type=Path, metavar="DIR", help="write figures (PNG) here")
    p.add_argument("--history-csv", type=_file_path, metavar="PATH",
                   help="write one row per epoch (or evaluation): loss, accuracies, seconds")
    own = p.add_argument_group("your own data (instead of MNIST): fastmlp.MLPClassifier")
    own.add_argument("--data", type=Path, metavar="PATH",
                     help="a table to train on: .csv, .parquet, .npz (X, y) or .npy")
    own.add_argument("--target", metavar="COLUMN",
                     help="the label column (.csv/.parquet; an .npz's label array, default y; "
                          "an .npy's column number, default the last)")
    own.add_argument("--test-fraction", type=_in_range(RANGES["val_fraction"]._replace(
                     lo_closed=False)), default=0.2,
                     help="rows held out (stratified) for the test accuracy (default 0.2)")
    own.add_argument("--alpha", type=weight_decay_type,
                     help="L2 penalty as scikit-learn defines it (default 1e-4)")


# options of the MNIST recipes that have no meaning for --data (MLPClassifier's options instead)
MNIST_ONLY = ("preset", "iterations", "schedule", "warmup", "weight_decay", "init", "augment",
              "data_dir", "no_val")


def config_from_args(args):
    """Config = defaults, then the preset, then the options given explicitly."""
    from .train import Config, PRESETS
    values = dict(PRESETS[args.preset])
    explicit = {k: getattr(args, k) for k in ("backend", "optimizer", "batch_size", "lr",
                                               "schedule", "warmup", "momentum", "weight_decay",
                                               "init", "seed", "dtype", "val_fraction", "patience",
                                               "augment")
                if getattr(args, k) is not None}
    values.update(explicit)
    if args.iterations is not None:
        values.update(iterations=args.iterations, epochs=None)
    if args.epochs is not None:
        values.update(epochs=args.epochs, iterations=None)
    if args.iterations is not None and args.epochs is not None:
        raise CommandError("give --iterations (full batch) or --epochs (mini-batch), not both")
    if args.no_val:
        values["val_fraction"] = 0.0
    if args.hidden is not None:
        values["sizes"] = (784,) + args.hidden + (10,)
    try:
        return Config(**values).check()
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"{what} {path} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise CommandError(f"{what} {path} is not writable")


PLOT_FILES = ("digits.png", "curves.png", "confusion.png", "first_layer.png")


def _output_file(opt: str, path: Path) -> Path:
    """Where an output file will be written (through a symbolic link, to the file it points
    to): a CommandError if that exists and is not a regular file."""
    from ._io import output_target
    if path.is_dir():
        raise CommandError(f"{opt} must be a file path; got the directory {path}")
    try:
        return Path(os.path.realpath(output_target(path)))
    except ValueError as exc:
        raise CommandError(f"{opt}: {exc}") from None


def _check_outputs(args) -> None:
    """Fail before training, not after, when an output cannot be written: a target that exists
    and is not a regular file, a missing or unwritable directory, two outputs on one file."""
    targets = {}
    for opt, path in (("--save", args.save), ("--metrics-json", args.metrics_json),
                      ("--history-csv", args.history_csv)):
        if path is not None:
            targets[opt] = _output_file(opt, path)
            _writable_dir(targets[opt].parent, f"{opt}: directory")
    if args.plot_dir is not None:
        if os.path.lexists(args.plot_dir) and not args.plot_dir.is_dir():
            raise CommandError(f"--plot-dir must be a directory; got {args.plot_dir}, which "
                               f"exists and is not one")
        _writable_dir(args.plot_dir, "--plot-dir")
        for name in PLOT_FILES:
            targets[f"--plot-dir ({name})"] = _output_file("--plot-dir", args.plot_dir / name)
    seen = {}
    for opt, real in targets.items():
        if real in seen:
            raise CommandError(f"{seen[real]} and {opt} name the same file {real}; give each "
                               f"output its own path")
        seen[real] = opt


def _file_path(text: str) -> Path:
    """An output file's path (no trailing slash: that would name a directory)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"must be a file path; got the directory path {text!r}")
    return Path(text)


def cmd_train(args) -> int:
    from . import data
    from ._io import atomic_write
    from .train import fit, backend_module, evaluate, TrainingDiverged
    from .reference import confusion_matrix

    if args.data is not None:
        return _train_table(args)
    if args.target is not None or args.alpha is not None:
        raise CommandError(f"--{'target' if args.target is not None else 'alpha'} is an option "
                           f"of --data (your own table)")
    cfg = config_from_args(args)
    _check_outputs(args)
    _set_threads(args.threads)
    t0 = time.perf_counter()
    X, y = data.load_mnist("train", args.data_dir, dataset=args.dataset, progress=not args.quiet)
    Xt, yt = data.load_mnist("test", args.data_dir, dataset=args.dataset, progress=not args.quiet)
    load_seconds = time.perf_counter() - t0
    if cfg.epochs is not None:
        n_train = len(X) - (max(1, round(len(X) * cfg.val_fraction)) if cfg.val_fraction else 0)
        if cfg.batch_size > n_train:
            raise CommandError(f"--batch-size must be between 1 and the number of training rows "
                               f"({n_train}); got {cfg.batch_size}")
    try:
        result = fit(cfg, X, y, progress=not args.quiet)
    except TrainingDiverged as exc:
        raise CommandError(f"{exc}; nothing was saved") from None
    backend = backend_module(cfg.backend)
    dtype = np.dtype(cfg.dtype)
    Xtp = backend.prepare(Xt, dtype)
    test_loss, test_acc = evaluate(backend, result.params, Xtp, yt)
    steps_per_s = result.steps / result.train_seconds if result.train_seconds else float("inf")
    metrics = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "train_accuracy": result.history["train_accuracy"][-1],
        "val_accuracy": result.val_accuracy,
        "final_loss": result.history["loss"][-1],
        "train_seconds": result.train_seconds,
        "startup_seconds": result.startup_seconds,
        "load_seconds": load_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "iterations_per_second": steps_per_s,
        "steps": result.steps,
        "backend": cfg.backend,
        "optimizer": cfg.optimizer,
        "preset": args.preset,
        "dataset": args.dataset,
        "iterations": cfg.iterations,
        "epochs": cfg.epochs if cfg.epochs is None else len(result.history["epoch"]),
        "best_epoch": result.best_epoch,
        "batch_size": cfg.batch_size if cfg.epochs is not None else None,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "init": cfg.init,
        "augment": cfg.augment,
        "weight_decay": cfg.weight_decay,
        "schedule": cfg.schedule,
        "sizes": list(cfg.sizes),
        "hidden": list(cfg.sizes[1:-1]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
    }
    if cfg.backend == "numba":
        import numba
        metrics["numba_threads"] = numba.get_num_threads()
    if args.save is not None:
        result.params.save(args.save)
    if args.metrics_json is not None:
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(args.metrics_json, lambda fh: fh.write(text.encode()))
    if args.history_csv is not None:
        h = result.history
        seconds = np.diff(np.concatenate([[0.0], h["seconds"]]))
        _write_history(args.history_csv, {
            "epoch": h["epoch"], "step": h["step"], "loss": h["loss"],
            "train_accuracy": h["train_accuracy"], "val_loss": h["val_loss"] or None,
            "val_accuracy": h["val_accuracy"] or None, "seconds": seconds,
            "total_seconds": h["seconds"]})
    if args.plot_dir is not None:
        from . import plots
        pred = backend.predict(result.params, Xtp)
        try:
            plots.digits_grid(args.plot_dir / "digits.png", Xt, yt, pred)
            plots.curves(args.plot_dir / "curves.png", result.history,
                         title=f"{cfg.backend}, {cfg.optimizer}, lr {cfg.lr:g}")
            plots.confusion(args.plot_dir / "confusion.png", confusion_matrix(yt, pred))
            plots.first_layer(args.plot_dir / "first_layer.png", result.params.weights[0])
        except (OSError, ValueError) as exc:
            written = [str(p) for p in (args.save, args.metrics_json) if p is not None]
            raise CommandError(f"the figures could not be written to {args.plot_dir}: "
                               f"{getattr(exc, 'strerror', None) or exc}"
                               + (f" (written before that: {', '.join(written)})" if written
                                  else "")) from None
    run = (f"{cfg.iterations} iterations" if cfg.iterations is not None
           else f"{metrics['epochs']} epochs x {result.steps // max(1, metrics['epochs'])} steps")
    print(f"test accuracy {100 * test_acc:.2f}% | train {result.train_seconds:.2f} s "
          f"({steps_per_s:.1f} steps/s) | startup {result.startup_seconds:.2f} s | "
          f"{cfg.backend} {cfg.dtype} | {cfg.optimizer} lr {cfg.lr:g} | {run} | seed {cfg.seed}")
    return 0


def _set_threads(threads) -> None:
    """--threads: Numba's thread count, within what Numba started with."""
    if threads is None:
        return
    import numba
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise CommandError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}; "
                           f"got {threads}")
    numba.set_num_threads(threads)


def _write_history(path, columns: dict) -> None:
    """A CSV of the given columns (lists of one length; None leaves a column out), written
    atomically."""
    import pandas as pd
    from ._io import atomic_write
    frame = pd.DataFrame({k: v for k, v in columns.items() if v is not None})
    text = frame.to_csv(index=False)
    atomic_write(path, lambda fh: fh.write(text.encode()))


def _train_table(args) -> int:
    """fastmlp train --data: MLPClassifier on the user's table, a stratified test split held
    out; the model file keeps the class labels, feature names and options."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from ._io import atomic_write
    from .estimator import MLPClassifier
    from .tabular import read_table
    given = [f"--{k.replace('_', '-')}" for k in MNIST_ONLY
             if k != "preset" and getattr(args, k) not in (None, False)]
    given += ["--preset"] * (args.preset != "fast") + ["--dataset"] * (args.dataset != "mnist")
    if given:
        raise CommandError(f"{', '.join(sorted(set(given)))}: option(s) of the MNIST recipes; "
                           f"with --data use --hidden, --epochs, --batch-size, --lr, --optimizer, "
                           f"--momentum, --alpha, --val-fraction, --patience, --seed, --dtype")
    if args.optimizer == "gd":
        raise CommandError("--optimizer gd is full-batch; with --data use sgd, momentum, "
                           "nesterov or adam")
    _check_outputs(args)
    _set_threads(args.threads)
    t0 = time.perf_counter()
    X, y, names = read_table(args.data, args.target)
    load_seconds = time.perf_counter() - t0
    seed = 0 if args.seed is None else args.seed
    try:
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=args.test_fraction,
                                              random_state=seed, stratify=y)
    except ValueError as exc:
        raise CommandError(f"{args.data}: cannot hold out a stratified test part "
                           f"(--test-fraction {args.test_fraction:g}): {exc}") from None
    opt = args.optimizer or "adam"
    options = dict(
        hidden_layer_sizes=args.hidden or (100,), solver="adam" if opt.startswith("adam") else "sgd",
        momentum=0.0 if opt == "sgd" else (args.momentum if args.momentum is not None else 0.9),
        nesterovs_momentum=opt != "momentum", learning_rate_init=args.lr or 1e-3,
        alpha=1e-4 if args.alpha is None else args.alpha,
        batch_size=args.batch_size or "auto", max_iter=args.epochs or 200, random_state=seed,
        early_stopping=args.val_fraction is not None,
        validation_fraction=args.val_fraction or 0.1, n_iter_no_change=args.patience or 10,
        backend=args.backend or "numba", dtype=args.dtype or "float32", verbose=False)
    clf = MLPClassifier(**options)
    if names is not None:
        import pandas as pd
        Xtr = pd.DataFrame(Xtr, columns=names)
        Xte = pd.DataFrame(Xte, columns=names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t = time.perf_counter()
        clf.fit(Xtr, ytr)
        fit_seconds = time.perf_counter() - t
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    test_acc = float(clf.score(Xte, yte))
    pred = clf.predict(Xte)
    classes = clf.classes_.tolist()
    options["hidden_layer_sizes"] = list(options["hidden_layer_sizes"])
    metrics = {
        "test_accuracy": test_acc, "train_accuracy": float(clf.score(Xtr, ytr)),
        "best_validation_score": clf.best_validation_score_, "final_loss": clf.loss_,
        "train_seconds": fit_seconds, "load_seconds": load_seconds,
        "peak_rss_mb": _peak_rss_mb(), "epochs": clf.n_iter_, "converged": converged,
        "data": str(args.data), "rows": len(X), "test_rows": len(Xte), "features": X.shape[1],
        "classes": classes, "sizes": [X.shape[1], *options["hidden_layer_sizes"], len(classes)],
        "optimizer": opt, "seed": seed, "options": options, "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
    }
    if args.save is not None:
        from .params import Params
        Params(clf.coefs_, clf.intercepts_).save(args.save, meta={
            "kind": "table", "classes": classes, "feature_names": names,
            "n_features": X.shape[1], "target": args.target, "options": options})
    if args.metrics_json is not None:
        text = json.dumps(metrics, indent=2, default=str) + "\n"
        atomic_write(args.metrics_json, lambda fh: fh.write(text.encode()))
    if args.history_csv is not None:
        _write_history(args.history_csv, {
            "epoch": list(range(1, clf.n_iter_ + 1)), "loss": clf.loss_curve_,
            "val_accuracy": clf.validation_scores_, "seconds": clf.epoch_seconds_,
            "total_seconds": np.cumsum(clf.epoch_seconds_)})
    if args.plot_dir is not None:
        from . import plots
        from .common import confusion_matrix
        idx = {c: k for k, c in enumerate(classes)}
        C = confusion_matrix([idx[v] for v in yte.tolist()], [idx[v] for v in pred.tolist()],
                             len(classes))
        epochs = list(range(1, clf.n_iter_ + 1))
        plots.curves(args.plot_dir / "curves.png",
                     {"step": epochs, "loss": clf.loss_curve_, "train_accuracy": [],
                      "val_accuracy": clf.validation_scores_ or []},
                     title=f"{args.data.name}: {opt}, lr {options['learning_rate_init']:g}",
                     xlabel="epoch")
        plots.confusion(args.plot_dir / "confusion.png", C, labels=[str(c) for c in classes])
    print(f"test accuracy {100 * test_acc:.2f}% | train {fit_seconds:.2f} s | {clf.n_iter_} "
          f"epochs{'' if converged else ' (max reached)'} | {len(classes)} classes, "
          f"{X.shape[1]} features, {len(Xtr)} rows | {options['backend']} {options['dtype']} | "
          f"{opt} lr {options['learning_rate_init']:g} | seed {seed}")
    return 0


# ----------------------------------------------------------------------------------------------
# evaluate, predict


def _load_model(path):
    """(Params, description) of a model file: one reading for both."""
    from .params import load_model
    try:
        return load_model(path)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"{path}: cannot read the model file ({exc.strerror})") from None


def _table_model(path, params, meta):
    """A model trained by ``train --data``: its description (classes, feature names, ...), or
    None for an MNIST model."""
    if meta.get("kind") != "table":
        return None
    if len(meta.get("classes", ())) != params.sizes[-1] or meta.get("n_features") != params.sizes[0]:
        raise CommandError(f"{path}: the model's description does not match its network "
                           f"(sizes {params.sizes})")
    return meta


def _table_predictions(args, params, meta, labels):
    """(labels predicted for the rows of args.data, the labels given there or None)."""
    from . import jit
    from .tabular import read_table
    target = args.target if args.target is not None else meta.get("target")
    try:
        X, y, names = read_table(args.data, target, labels=labels)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    want = meta.get("feature_names")
    if X.shape[1] != params.sizes[0]:
        raise CommandError(f"{args.data}: the model takes {params.sizes[0]} features; the file "
                           f"has {X.shape[1]}")
    if want and names and list(names) != list(want):
        raise CommandError(f"{args.data}: the features must be the model's, in its order "
                           f"({', '.join(want[:5])}, ...); got {', '.join(names[:5])}, ...")
    idx = jit.predict(params, jit.to_csr(np.ascontiguousarray(X, dtype=params.dtype)))
    return np.asarray(meta["classes"], dtype=object)[idx], (y if labels else None)


def cmd_evaluate(args) -> int:
    from . import data, jit
    from .reference import confusion_matrix
    params, meta = _load_model(args.model)
    meta = _table_model(args.model, params, meta)
    if meta is not None or args.data is not None:
        if meta is None:
            raise CommandError(f"{args.model}: an MNIST model (no class labels or feature names "
                               f"saved); --data needs a model trained with train --data")
        if args.data is None:
            raise CommandError(f"{args.model} was trained on a table: give --data (and --target)")
        pred, y = _table_predictions(args, params, meta, labels=True)
        classes = meta["classes"]
        y = np.asarray(y, dtype=object)
        print(f"accuracy {100 * np.mean(pred == y):.2f}% ({int(np.sum(pred == y))} of {len(y)})")
        print("per class:  " + "  ".join(f"{c}: {100 * np.mean(pred[y == c] == c):.1f}%"
                                        for c in classes if np.any(y == c)))
        return 0
    if params.sizes[0] != 784 or params.sizes[-1] != 10:
        raise CommandError(f"{args.model}: the model maps {params.sizes[0]} inputs to "
                           f"{params.sizes[-1]} classes; evaluation needs 784 -> 10")
    Xt, yt = data.load_mnist("test", args.data_dir, dataset=args.dataset, progress=not args.quiet)
    pred = jit.predict(params, jit.prepare(Xt, params.dtype))
    C = confusion_matrix(yt, pred)
    print(f"test accuracy {100 * np.mean(pred == yt):.2f}% ({int(np.sum(pred == yt))} of {len(yt)})")
    print("per class:  " + "  ".join(f"{k}: {100 * C[k, k] / max(1, C[k].sum()):.1f}%"
                                    for k in range(10)))
    print("confusion matrix (rows: true, columns: predicted)")
    print("      " + " ".join(f"{k:>5}" for k in range(10)))
    for k in range(10):
        print(f"{k:>5} " + " ".join(f"{c:>5}" for c in C[k]))
    return 0


def cmd_predict(args) -> int:
    from . import jit
    from .images import image_to_mnist
    params, meta = _load_model(args.model)
    meta = _table_model(args.model, params, meta)
    if args.data is not None:
        if meta is None:
            raise CommandError(f"{args.model}: an MNIST model; --data needs a model trained with "
                               f"train --data")
        if args.images:
            raise CommandError("give image files or --data, not both")
        pred, _ = _table_predictions(args, params, meta, labels=False)
        print("row,prediction")
        for i, label in enumerate(pred.tolist()):
            print(f"{i},{label}")
        return 0
    if not args.images:
        raise CommandError("give image files to classify (or --data with a table model)")
    if params.sizes[0] != 784 or params.sizes[-1] != 10:
        raise CommandError(f"{args.model}: the model maps {params.sizes[0]} inputs to "
                           f"{params.sizes[-1]} classes; digit images need 784 -> 10")
    X = np.stack([image_to_mnist(p) for p in args.images])
    Xf = (X.astype(params.dtype) / params.dtype.type(255))
    P = jit.predict_proba(params, Xf)
    for path, probs in zip(args.images, P):
        digit = int(np.argmax(probs))
        print(f"{path}: {digit} ({100 * probs[digit]:.1f}%)   " +
              " ".join(f"{k}:{p:.3f}" for k, p in enumerate(probs)))
    return 0


# ----------------------------------------------------------------------------------------------
# compare: both backends on the same batch, tensor by tensor

def cmd_compare(args) -> int:
    from .compare import compare_rows
    rows = compare_rows(args.dtype, args.batch_size, args.seed, args.data_dir)
    print(f"reference vs numba, {args.dtype}, batch {args.batch_size}, seed {args.seed} "
          f"(ok when |numba - ref| <= atol + rtol * |ref| everywhere)")
    print(f"{'tensor':<26}{'max abs diff':>14}{'max rel diff':>14}{'atol':>10}{'rtol':>10}  result")
    for name, d, r, atol, rtol, ok in rows:
        print(f"{name:<26}{d:>14.3e}{r:>14.3e}{atol:>10.0e}{rtol:>10.0e}  {'OK' if ok else 'FAIL'}")
    bad = [r[0] for r in rows if not r[5]]
    print("all OK" if not bad else f"FAIL: {', '.join(bad)}")
    return 0 if not bad else EXIT_FAILURE


# ----------------------------------------------------------------------------------------------
# bench


def cmd_bench(args) -> int:
    import subprocess
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir():
        raise CommandError(f"the benchmark suites are not here ({root / 'benchmarks'}); run this "
                           f"from a source checkout of fastmlp")
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark", *args.pytest_args]
    return subprocess.call(cmd, cwd=root)


# ----------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (not that of child processes, such as
    the ones compiling the numba kernels); None where the platform does not say. On Linux from
    VmHWM, which exec resets: getrusage's ru_maxrss keeps the peak of the process that forked
    this one (a parent holding 1 GB reports 1 GB here)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:              # (Windows)
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024 if sys.platform == "darwin" else 1024)   # bytes on macOS


def cmd_warmup(args) -> int:
    from .jit.warmup import WIDE_INPUTS, warmup
    dtypes = args.dtype or ["float32", "float64"]
    kinds = [(dt, tuple(args.sizes)) for dt in dtypes]
    if args.wide:
        kinds += [(dt, (WIDE_INPUTS, *args.sizes[1:])) for dt in dtypes]
    seconds = warmup(kinds, processes=args.processes, progress=not args.quiet)
    if not args.quiet:
        print(f"the kernels are in Numba's cache ({seconds:.0f} s)")
    return 0


def _widths(text: str, what: str, example: str, around=((), ())) -> tuple:
    """Comma-separated layer widths, checked (with the layers ``around`` them) by check_sizes."""
    from .params import check_sizes
    try:
        widths = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} like {example}; got {text!r}") from None
    try:
        check_sizes(around[0] + widths + around[1])
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return widths


def _hidden(text: str) -> tuple:
    """Hidden layer widths, e.g. "128,64" (of a 784-...-10 network)."""
    return _widths(text, "hidden layer widths", "128,64", ((784,), (10,)))


def _sizes(text: str) -> tuple:
    return _widths(text, "layer widths", "784,72,36,10")


def build_parser(prog="fastmlp") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="fastmlp: a from-scratch MLP in NumPy and Numba, for MNIST "
                "and for your own tables (train --data)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a network (what scripts/train_fast.py does)")
    add_train_options(t)
    e = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix")
    e.add_argument("model", type=Path)
    e.add_argument("--data-dir", type=Path)
    e.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--data", type=Path, help="a table (for a model trained with train --data)")
    e.add_argument("--target", help="its label column (default: the one trained on)")
    pr = sub.add_parser("predict", help="classify image files (PNG), or the rows of a table, "
                        "with a saved model")
    pr.add_argument("model", type=Path)
    pr.add_argument("images", nargs="*", type=Path)
    pr.add_argument("--data", type=Path, help="a table of features (for a model trained with "
                    "train --data); prints row,prediction lines")
    pr.add_argument("--target", help="a label column in it, to leave out")
    c = sub.add_parser("compare", help="reference vs numba, tensor by tensor")
    add_compare_options(c)
    w = sub.add_parser("warmup", help="compile the numba kernels ahead, on every core (once per "
                       "machine: Numba caches them)")
    w.add_argument("--sizes", type=_sizes, default=(784, 72, 36, 10),
                   help="layer widths (default 784,72,36,10); the kernels serve every network of "
                   "up to 7 layers, so this matters only for deeper ones")
    w.add_argument("--dtype", choices=("float32", "float64"), action="append",
                   help="repeatable (default: both)")
    w.add_argument("--wide", action="store_true",
                   help="also the kernels for data of more than 65,536 inputs (sparse data with "
                   "uint32 column indices; else its first fit compiles them)")
    w.add_argument("--processes", type=positive_int, default=None,
                   help="child processes at once (default: the number of cores)")
    w.add_argument("--quiet", action="store_true")
    b = sub.add_parser("bench", help="run the benchmark suites (pytest --benchmark)")
    b.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return p


def add_compare_options(c):
    c.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    c.add_argument("--batch-size", type=positive_int, default=256)
    c.add_argument("--seed", type=nonneg_int, default=0)
    c.add_argument("--data-dir", type=Path)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "compare": cmd_compare, "bench": cmd_bench, "warmup": cmd_warmup}


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same clean-up runs (every
    output is written to a temporary file that is removed on the way out)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def run(command, args, prog) -> int:
    import signal
    import threading
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    from ._signals import catching_interrupts
    try:
        with catching_interrupts():
            return _run(command, args, prog)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(command, args, prog) -> int:
    from .data import DataNotFoundError
    try:
        return COMMANDS[command](args)
    except CommandError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except DataNotFoundError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except (ValueError, TypeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except OSError as exc:
        name = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"{prog}: error:{name} {exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated; nothing half-written was left behind", file=sys.stderr)
        return 143
    return EXIT_FAILURE


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and "-h" not in argv[1:2] and "--help" not in argv[1:2]:
        # everything after "bench" goes to pytest as it is (argparse would take -k for its own)
        return run("bench", argparse.Namespace(pytest_args=argv[1:]), "fastmlp bench")
    args = build_parser().parse_args(argv)
    return run(args.command, args, f"fastmlp {args.command}")


def train_main(argv=None, prog="train_fast.py") -> int:
    p = _Parser(prog=prog, description="Train the 784-72-36-10 network on MNIST.")
    add_train_options(p)
    return run("train", p.parse_args(argv), prog)


def compare_main(argv=None, prog="compare_backends.py") -> int:
    p = _Parser(prog=prog, description="Run both backends on one real MNIST batch and compare "
                "every tensor; exit 1 on any FAIL.")
    add_compare_options(p)
    return run("compare", p.parse_args(argv), prog)


if __name__ == "__main__":
    sys.exit(main())
