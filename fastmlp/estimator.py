"""MLPClassifier: fastmlp's core behind the scikit-learn estimator API, for anyone's data.

    from fastmlp import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(100,), random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)

The parameters, defaults and fitted attributes are scikit-learn's
(``sklearn.neural_network.MLPClassifier``) wherever they apply, with the same meanings: the same
Glorot-uniform initialisation drawn from ``random_state`` in the same order, the same shuffles,
batches, learning-rate schedules, L2 penalty ``alpha`` (per batch, divided by the batch's size),
stopping rules, early-stopping split and warnings. The differences are listed once, in
``DIFFERENCES`` (and the README's table): ReLU and the "sgd"/"adam" solvers only, a softmax
output of two units for binary problems, and the few places where the compiled update's
arithmetic orders a formula differently.

Data: dense NumPy arrays (float32 kept float32; float64, integers and anything numeric as
float64; uint8 kept as one byte per value, values 0..255 as they are), pandas DataFrames
(``feature_names_in_``) and scipy.sparse matrices or arrays of any format. The numba backend
reads every input as a CSR (``fastmlp.jit``): the first layer costs in proportion to the non-zero
inputs, not the columns.
"""

from __future__ import annotations

import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import (_check_partial_fit_first_call, check_classification_targets,
                                      unique_labels)
from sklearn.utils.validation import check_is_fitted, validate_data

from .common import init_state
from .params import Params

__all__ = ["MLPClassifier", "DIFFERENCES"]

# What differs from scikit-learn's MLPClassifier (the README shows this table).
DIFFERENCES = (
    ("activation", "'relu' only", "'identity', 'logistic', 'tanh', 'relu'"),
    ("solver", "'sgd', 'adam'", "also 'lbfgs' (and max_fun, its option)"),
    ("binary problems", "a softmax output of 2 units (n_outputs_ 2, out_activation_ 'softmax'), "
     "started as sklearn's logistic unit z (the pair (0, z): the same initial function and random "
     "draws), then trained as a pair, so the fit is not sklearn's; to_sklearn() folds it into "
     "one logistic unit", "one logistic unit (n_outputs_ 1)"),
    ("multilabel y", "not supported (ValueError)", "supported"),
    ("fit(sample_weight=)", "not supported", "supported"),
    ("momentum with a changing learning rate", "the velocity sums gradients and the step is "
     "lr x velocity", "the velocity sums lr x gradient; the same when lr is constant, not "
     "after 'invscaling' or 'adaptive' changes it"),
    ("loss_curve_", "cross-entropy exactly as sklearn's; its L2 term from the weights at the "
     "epoch's start and end (their mean)", "the L2 term from the weights before each batch"),
    ("dtype", "float32 input trains in float32, anything else in float64, unless dtype= says; "
     "predict_proba returns the network's dtype", "the same rule; output in X's dtype"),
)

_SKLEARN_PARAMS = dict(_SkMLPClassifier._parameter_constraints)
_SKLEARN_PARAMS.pop("max_fun")
_SKLEARN_PARAMS.update(activation=[StrOptions({"relu"})], solver=[StrOptions({"sgd", "adam"})])


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A multilayer perceptron (ReLU hidden layers, softmax output, cross-entropy) trained by
    mini-batch SGD or Adam on fastmlp's compiled kernels.

    Parameters are scikit-learn's MLPClassifier's (same names, defaults and meanings; see its
    documentation), plus:

    backend : "numba" (default: the compiled kernels) or "reference" (plain NumPy, to read; it
        takes dense arrays, so sparse input is made dense for it)
    dtype : None (float32 input trains in float32, anything else in float64), "float32" or
        "float64"
    augment : bool, default False. Each epoch moves every image by up to 2 pixels in each
        direction (inputs must be 28x28 images: 784 features).

    Fitted attributes as scikit-learn names them: classes_, coefs_ (each (fan_in, fan_out)),
    intercepts_, loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    n_iter_, t_, n_features_in_, feature_names_in_, n_layers_, n_outputs_, out_activation_;
    and fastmlp's own epoch_seconds_ (each epoch's training time, beside loss_curve_).
    """

    _parameter_constraints = {
        **_SKLEARN_PARAMS,
        "backend": [StrOptions({"numba", "reference"})],
        "dtype": [None, StrOptions({"float32", "float64"})],
        "augment": ["boolean"],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 backend="numba", dtype=None, augment=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype
        self.augment = augment

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------------------------------------
    # fitting

    def fit(self, X, y):
        """Train on X (n_samples, n_features) and labels y (n_samples,) for up to max_iter
        epochs. Returns self."""
        self._validate_params()
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over X, y, continuing from the current weights and optimizer state.
        ``classes`` (every label that will ever appear) is required on the first call."""
        self._validate_params()
        if _check_partial_fit_first_call(self, classes) and len(self.classes_) < 2:
            del self.classes_
            raise ValueError(f"classes must hold at least 2 classes; got {list(classes)}")
        return self._fit(X, y, incremental=True)

    def _fit(self, X, y, incremental):
        hidden = self.hidden_layer_sizes
        hidden = list(hidden) if np.iterable(hidden) else [hidden]
        if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h > 0
                   for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive integers; got "
                             f"{self.hidden_layer_sizes!r}")
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"],
                             dtype=[np.float64, np.float32, np.uint8], reset=first_pass)
        check_classification_targets(y)
        yi = self._class_indices(y, first_pass, incremental)
        n_samples, n_features = X.shape
        sizes = (n_features, *(int(h) for h in hidden), len(self.classes_))
        if self.augment and n_features != 784:
            raise ValueError(f"augment needs 28x28 images (784 features); got {n_features} "
                             f"features")
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(sizes, self._dtype_for(X))
        elif self._sizes != sizes:
            raise ValueError(f"warm_start and partial_fit keep the network's layer sizes "
                             f"{self._sizes}; got {sizes} (hidden_layer_sizes="
                             f"{self.hidden_layer_sizes!r})")
        params = Params(self.coefs_, self.intercepts_)
        if self.early_stopping:     # (after an early-stopped fit, coefs_ are _best's own arrays)
            params = params.copy()
        if not incremental or not hasattr(self, "_state"):
            self._new_optimizer(params)
        try:
            self._fit_stochastic(params, X, yi, incremental)
        finally:
            self.coefs_, self.intercepts_ = params.weights, params.biases
        if self.early_stopping:   # the epoch with the best validation score
            self.coefs_, self.intercepts_ = self._best.weights, self._best.biases
        return self

    def _class_indices(self, y, first_pass, incremental):
        """classes_ (found in y, or kept from before) and y as indices into it, int64."""
        if not incremental and (first_pass or not hasattr(self, "classes_")):
            self.classes_ = unique_labels(y)
            if len(self.classes_) < 2:
                raise ValueError(f"y has only one class ({self.classes_[0]!r}); a classifier "
                                 f"needs at least 2")
        elif self.warm_start and not incremental:
            if set(unique_labels(y)) != set(self.classes_):
                raise ValueError(f"warm_start can only be used where y has the same classes as "
                                 f"in the previous call to fit; previously got {self.classes_}, "
                                 f"y has {unique_labels(y)}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        unseen = self.classes_[idx] != y
        if unseen.any():
            raise ValueError(f"y has classes not in classes_ {self.classes_}: "
                             f"{np.unique(np.asarray(y)[unseen])}")
        return idx.astype(np.int64)

    def _dtype_for(self, X) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.float32 if X.dtype == np.float32 else np.float64)

    def _initialize(self, sizes, dtype):
        """scikit-learn's initialisation: Glorot uniform for ReLU, bound sqrt(6 / (fan_in +
        fan_out)) for weights and biases, drawn layer by layer from random_state."""
        rs = self._random_state
        binary = sizes[-1] == 2
        weights, biases = [], []
        for fan_in, fan_out in zip(sizes[:-2 if binary else -1], sizes[1:]):
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
            biases.append(rs.uniform(-bound, bound, fan_out).astype(dtype))
        if binary:
            # sklearn's one logistic unit z, drawn as sklearn draws it, as the softmax pair
            # (0, z): the same function (softmax([0, z])[1] = logistic(z)) and the same random
            # numbers used, so the split and the shuffles that follow are sklearn's too
            W, b = np.zeros((sizes[-2], 2), dtype), np.zeros(2, dtype)
            bound = np.sqrt(6.0 / (sizes[-2] + 1))
            W[:, 1:] = rs.uniform(-bound, bound, (sizes[-2], 1))
            b[1:] = rs.uniform(-bound, bound, 1)
            weights.append(W)
            biases.append(b)
        params = Params(weights, biases)
        self.coefs_, self.intercepts_ = params.weights, params.biases
        self._sizes = tuple(sizes)
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(sizes)
        self.n_outputs_ = sizes[-1]
        self.out_activation_ = "softmax"
        self.loss_curve_ = []
        self.epoch_seconds_ = []
        self._no_improvement_count = 0
        self._best = params.copy()
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _optimizer(self) -> str:
        if self.solver == "adam":
            return "adam_hat"       # scikit-learn's Adam
        if self.momentum == 0:
            return "sgd"
        return "nesterov" if self.nesterovs_momentum else "momentum"

    def _new_optimizer(self, params):
        self._state = init_state(params, self._optimizer())
        self._steps = 0                      # Adam's t: updates made by this optimizer
        self._lr = float(self.learning_rate_init)

    def _fit_stochastic(self, params, X, yi, incremental):
        backend = _backend(self.backend)
        if self.early_stopping:
            # as sklearn splits, so that the same random_state holds out the same rows: it
            # stratifies only a binary problem (by its one 0/1 output column)
            strata = (yi == 1)[:, None] if len(self.classes_) == 2 else None
            X, X_val, yi, y_val = train_test_split(X, yi, random_state=self._random_state,
                                                   test_size=self.validation_fraction,
                                                   stratify=strata)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            Xv = self._prepare(X_val, params.dtype)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))
        optimizer = self._optimizer()
        full, rem = divmod(n, batch)
        if self.backend == "numba":
            _warm_up(params, X, optimizer, (batch, rem) if rem else (batch,))
        Xp = self._prepare(X, params.dtype)
        hyper = dict(momentum=self.momentum, beta1=self.beta_1, beta2=self.beta_2,
                     eps=self.epsilon)
        order = np.arange(n)
        self.n_iter_ = 0
        try:
            for _ in range(self.max_iter):
                if self.shuffle:        # as sklearn.utils.shuffle does: the same draws
                    perm = np.arange(n)
                    self._random_state.shuffle(perm)
                    order = order[perm]
                shifts = (self._random_state.randint(-2, 3, size=(n, 2)).astype(np.int8)
                          if self.augment else None)
                lr = self._lr if self.solver == "sgd" else float(self.learning_rate_init)
                started = time.perf_counter()
                before = _sum_squares(params) if self.alpha else 0.0
                # sklearn's L2 term is alpha / (2 n_batch) ||W||^2: its gradient alpha / n_batch W
                losses = backend.sgd_epoch(params, self._state, Xp, yi, order[:full * batch],
                                           batch, np.full(full, lr), t0=self._steps,
                                           optimizer=optimizer,
                                           shifts=None if shifts is None else shifts[:full * batch],
                                           weight_decay=self.alpha / batch, **hyper)
                total = float(losses.sum()) * batch
                if rem:                 # the last, smaller batch: its own 1 / n_batch
                    last = backend.sgd_epoch(params, self._state, Xp, yi, order[full * batch:],
                                             rem, [lr], t0=self._steps + full,
                                             optimizer=optimizer,
                                             shifts=None if shifts is None else shifts[full * batch:],
                                             weight_decay=self.alpha / rem, **hyper)
                    total += float(last[0]) * rem
                steps = full + (rem > 0)
                self._steps += steps
                self.epoch_seconds_.append(time.perf_counter() - started)
                penalty = (0.5 * self.alpha * steps * (before + _sum_squares(params)) / 2
                           if self.alpha else 0.0)
                loss = (total + penalty) / n
                if not (np.isfinite(loss) and params.all_finite()):
                    raise ValueError(f"Solver produced non-finite parameter weights (loss {loss} "
                                     f"in epoch {self.n_iter_ + 1}, learning rate {lr:g}). The "
                                     f"input data may contain large values and need to be "
                                     f"preprocessed, or the learning rate may be too large.")
                self.n_iter_ += 1
                self.loss_ = loss
                self.t_ += n
                self.loss_curve_.append(loss)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
                if self.early_stopping:
                    score = float(np.mean(backend.predict(params, Xv) == y_val))
                    self._track(score, score < self.best_validation_score_ + self.tol,
                                score > self.best_validation_score_, params)
                    if self.verbose:
                        print(f"Validation score: {score:f}")
                else:
                    self._track(None, loss > self.best_loss_ - self.tol, loss < self.best_loss_,
                                params)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    self._lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
                if self._no_improvement_count > self.n_iter_no_change:
                    if self._stop():
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                                  f"reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")

    def _track(self, score, worse, better, params):
        """sklearn's bookkeeping after an epoch: the count of epochs without improvement by
        tol, the best loss (or validation score, and that epoch's weights)."""
        self._no_improvement_count = self._no_improvement_count + 1 if worse else 0
        if score is None:
            if better:
                self.best_loss_ = self.loss_curve_[-1]
            return
        self.validation_scores_.append(score)
        if better:
            self.best_validation_score_ = score
            self._best = params.copy()

    def _stop(self) -> bool:
        """After n_iter_no_change epochs without improvement: stop, or with the "adaptive"
        schedule divide the learning rate by 5 (stop once it is at most 1e-6)."""
        what = "Validation score" if self.early_stopping else "Training loss"
        msg = (f"{what} did not improve more than tol={self.tol:f} for "
               f"{self.n_iter_no_change} consecutive epochs.")
        if self.solver == "sgd" and self.learning_rate == "adaptive" and self._lr > 1e-6:
            self._lr /= 5.0
            if self.verbose:
                print(msg + f" Setting learning rate to {self._lr:f}")
            return False
        if self.verbose:
            print(msg + " Stopping.")
        return True

    # ------------------------------------------------------------------------------------------
    # predicting

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), columns in the order of classes_."""
        params, Xp = self._checked_input(X)
        return _backend(self.backend).predict_proba(params, Xp)

    def predict_log_proba(self, X):
        """The logarithm of predict_proba."""
        P = self.predict_proba(X)
        return np.log(P, out=P)

    def predict(self, X):
        """The most probable class of each row, a label from classes_."""
        params, Xp = self._checked_input(X)
        return self.classes_[_backend(self.backend).predict(params, Xp)]

    def _checked_input(self, X):
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, accept_sparse=["csr", "csc"],
                          dtype=[np.float64, np.float32, np.uint8], reset=False)
        params = Params(self.coefs_, self.intercepts_)
        return params, self._prepare(X, params.dtype)

    def _prepare(self, X, dtype):
        """X in the form the backend's kernels take, in the network's dtype."""
        if self.backend == "reference":
            return np.ascontiguousarray(X.toarray() if sp.issparse(X) else X, dtype=dtype)
        from . import jit
        if sp.issparse(X):
            return jit.from_scipy(X, dtype)
        if X.dtype == np.uint8:
            return jit.to_csr(X, dtype, pixels=False)
        return jit.to_csr(np.ascontiguousarray(X, dtype=dtype), keep_zeros="auto")

    def __setstate__(self, state):
        # unpickled arrays start wherever the allocator puts them: back onto cache lines
        super().__setstate__(state)
        if hasattr(self, "coefs_"):
            params = Params(self.coefs_, self.intercepts_)
            self.coefs_, self.intercepts_ = params.weights, params.biases

    # ------------------------------------------------------------------------------------------
    # scikit-learn's own estimator

    def to_sklearn(self) -> _SkMLPClassifier:
        """A fitted ``sklearn.neural_network.MLPClassifier`` with these weights: the same
        predictions, for tools that take scikit-learn's class (skl2onnx exports it to ONNX).
        A binary network's two softmax units become sklearn's one logistic unit (weights
        W[:, 1] - W[:, 0]: the same probabilities, rounded once more)."""
        check_is_fitted(self, "coefs_")
        names = _SkMLPClassifier().get_params()
        sk = _SkMLPClassifier(**{k: v for k, v in self.get_params().items() if k in names})
        coefs = [W.copy() for W in self.coefs_]
        intercepts = [b.copy() for b in self.intercepts_]
        if len(self.classes_) == 2:
            coefs[-1] = coefs[-1][:, 1:] - coefs[-1][:, :1]
            intercepts[-1] = intercepts[-1][1:] - intercepts[-1][:1]
        from sklearn.preprocessing import LabelBinarizer
        sk._label_binarizer = LabelBinarizer().fit(self.classes_)
        sk.classes_ = self.classes_
        sk.coefs_, sk.intercepts_ = coefs, intercepts
        sk.n_outputs_ = coefs[-1].shape[1]
        sk.out_activation_ = "logistic" if len(self.classes_) == 2 else "softmax"
        for name in ("n_features_in_", "feature_names_in_", "n_layers_", "n_iter_", "t_", "loss_",
                     "loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_"):
            if hasattr(self, name):
                setattr(sk, name, getattr(self, name))
        return sk


def _backend(name):
    if name == "numba":
        from . import jit
        return jit
    from . import reference
    return reference


def _sum_squares(params) -> float:
    with np.errstate(over="ignore", invalid="ignore"):     # a diverged run: reported after
        return float(sum(np.dot(W.ravel(), W.ravel()) for W in params.weights))


_WARM = set()   # the kinds of run whose kernels this process has loaded


def _warm_up(params, X, optimizer, batches):
    """Load (or compile, once per machine) the kernels a fit will use, once per process and
    kind: the network's dtype, the input's value type, the column index type (csr._index_dtype:
    wide inputs are a kind of their own), and which epoch kernel each batch size takes."""
    from . import jit
    from .jit.csr import _index_dtype
    xdtype = np.dtype(np.uint8) if X.dtype == np.uint8 else params.dtype
    for batch in batches:
        key = (params.dtype, xdtype, _index_dtype(X.shape[1]), batch <= jit.SPLIT_MAX_BATCH)
        if key in _WARM:
            continue
        rows = np.zeros((2, X.shape[1]), dtype=xdtype)
        jit.warm_up(params, rows, np.zeros(2, dtype=np.int64), optimizer, batch, progress=True)
        _WARM.add(key)
