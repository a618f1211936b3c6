"""The training loop, on the real MNIST data."""

import numpy as np
import pytest

from fastmlp import jit as J
from fastmlp.train import Config, PRESETS, TrainingDiverged, fit, lr_schedule, split_validation


@pytest.mark.slow
def test_original_recipe_reaches_about_92_percent(mnist_train, mnist_test):
    """The original project's recipe, in full: 500 full-batch iterations at lr 0.2 (about 20 s
    of training here: marked slow, so that the default run stays under five minutes; CI runs it
    with pytest -m slow)."""
    X, y = mnist_train
    Xt, yt = mnist_test
    cfg = Config(backend="numba", **PRESETS["original"])
    result = fit(cfg, X, y, progress=False)
    acc = float(np.mean(J.predict(result.params, J.prepare(Xt, np.float32)) == yt))
    assert 0.90 <= acc <= 0.94, acc
    assert result.steps == 500 and len(result.history["loss"]) == 50
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_fast_default_recipe_reaches_98_percent(mnist_train, mnist_test):
    """The default of train_fast.py: 10 epochs of Nesterov SGD on all 60,000 images."""
    X, y = mnist_train
    Xt, yt = mnist_test
    result = fit(Config(), X, y, progress=False)
    acc = float(np.mean(J.predict(result.params, J.prepare(Xt, np.float32)) == yt))
    assert acc >= 0.98, acc
    assert result.steps == 10 * 469


def test_both_backends_give_the_same_run(mnist_train):
    """The same run (validation split, evaluation every epoch) on both backends, in float64.
    (One run each: parametrizing by backend would repeat the same pair of runs.)"""
    X, y = mnist_train
    cfg = Config(backend="reference", optimizer="nesterov", epochs=1, batch_size=256, lr=0.05,
                 val_fraction=0.1, dtype="float64", eval_every=1)
    result = fit(cfg, X[:6000], y[:6000], progress=False)
    other = fit(Config(**{**cfg.__dict__, "backend": "numba"}), X[:6000], y[:6000], progress=False)
    for a, b in zip(result.params.arrays(), other.params.arrays()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert result.history["val_accuracy"] == pytest.approx(other.history["val_accuracy"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_divergence_stops_with_a_clear_error(mnist_train, backend):
    X, y = mnist_train
    cfg = Config(backend=backend, optimizer="gd", iterations=30, epochs=None, lr=1e6,
                 schedule="constant", val_fraction=0, eval_every=5)
    with pytest.raises(TrainingDiverged) as err:
        fit(cfg, X[:2000], y[:2000], progress=False)
    msg = str(err.value)
    assert "at iteration" in msg and "lr=1e+06" in msg and "smaller learning rate" in msg


def test_divergence_in_mini_batch_names_epoch_and_step(mnist_train):
    X, y = mnist_train
    cfg = Config(optimizer="sgd", epochs=2, batch_size=100, lr=1e6, schedule="constant",
                 val_fraction=0)
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+ \(lr=1e\+06\)"):
        fit(cfg, X[:2000], y[:2000], progress=False)


def test_validation_split_and_best_epoch(mnist_train):
    tr, va = split_validation(1000, 0.1, seed=0)
    assert len(va) == 100 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 1000
    X, y = mnist_train
    cfg = Config(epochs=4, batch_size=64, lr=0.05, val_fraction=0.2, patience=1)
    result = fit(cfg, X[:5000], y[:5000], progress=False)
    vl = result.history["val_loss"]
    assert result.best_epoch == int(np.argmin(vl)) + 1
    assert len(vl) <= 4


def test_schedules():
    cfg = Config(lr=0.2, schedule="constant")
    assert np.all(lr_schedule(cfg, 5) == 0.2)
    cfg = Config(lr=1.0, schedule="cosine", warmup=0.1)
    lrs = lr_schedule(cfg, 100)
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert np.all(np.diff(lrs[10:]) <= 0) and lrs[-1] < 1e-3


@pytest.mark.parametrize("kwargs, msg", [
    (dict(lr=-0.1), "learning rate must be > 0; got -0.1"),
    (dict(lr=float("nan")), "learning rate must be > 0; got nan"),
    (dict(batch_size=0), "batch size must be an integer >= 1; got 0"),
    (dict(epochs=0), "epochs must be an integer in 1..100000; got 0"),
    (dict(iterations=0, epochs=None), "iterations must be an integer in 1..1000000; got 0"),
    (dict(optimizer="rmsprop"), "optimizer must be one of gd, sgd, momentum, nesterov, adam, adam_hat; got 'rmsprop'"),
    (dict(backend="cuda"), "backend must be one of numba, reference; got 'cuda'"),
    (dict(dtype="float16"), "dtype must be one of float32, float64; got 'float16'"),
    (dict(val_fraction=1.0), r"validation fraction must be in \[0, 1\)"),
    (dict(iterations=5), "exactly one of iterations and epochs"),
])
def test_config_errors_name_option_allowed_and_given(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Config(**kwargs).check()


def test_batch_larger_than_training_set(mnist_train):
    X, y = mnist_train
    with pytest.raises(ValueError, match=r"batch size must be between 1 and the number of training "
                                         r"rows \(900\); got 1000"):
        fit(Config(batch_size=1000, val_fraction=0.1), X[:1000], y[:1000], progress=False)
