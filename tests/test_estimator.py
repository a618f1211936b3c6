"""fastmlp.MLPClassifier: scikit-learn's estimator checks, the same meaning as scikit-learn's
MLPClassifier, every kind of input, partial_fit, warm_start, early stopping, pickling,
to_sklearn, and sweeps in worker processes."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastmlp import MLPClassifier


# max_iter=100, as scikit-learn runs these checks on its own MLPClassifier
# (sklearn.utils._test_common.instance_generator); otherwise the defaults
@parametrize_with_checks([MLPClassifier(max_iter=100)])
def test_sklearn_compatible(estimator, check):
    """Every scikit-learn estimator check passes, with no expected failures declared."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16, y


def quiet_fit(clf, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, y, **kw)


SAME_MATH = [  # (solver options, rtol on the loss curve against sklearn's)
    (dict(solver="sgd", momentum=0.0, learning_rate_init=0.1), 1e-9),
    (dict(solver="sgd", momentum=0.9, nesterovs_momentum=True, learning_rate_init=0.05), 1e-9),
    (dict(solver="sgd", momentum=0.9, nesterovs_momentum=False, learning_rate_init=0.05), 1e-9),
    (dict(solver="adam", learning_rate_init=0.01), 1e-9),
]


@pytest.mark.parametrize("options,rtol", SAME_MATH)
def test_same_training_as_sklearn(digits, options, rtol):
    """The same initial weights, shuffles, batches (the last one smaller) and updates as
    scikit-learn's MLPClassifier: float64 loss curves and weights agree to rounding."""
    X, y = digits
    X, y = X[:1000], y[:1000]               # 5 batches of 200: no smaller last batch...
    X, y = X[:990], y[:990]                 # ...so 990 rows: 4 of 200 and one of 190
    kw = dict(hidden_layer_sizes=(30, 20), alpha=0.0, max_iter=5, random_state=3, **options)
    ours = quiet_fit(MLPClassifier(**kw), X, y)
    theirs = quiet_fit(SkMLPClassifier(**kw), X, y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol,
                               err_msg=f"loss_curve_ {options}")
    for i, (a, b) in enumerate(zip(ours.coefs_ + ours.intercepts_,
                                   theirs.coefs_ + theirs.intercepts_)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e3 * rtol, err_msg=f"parameter {i} {options}")
    assert ours.n_iter_ == theirs.n_iter_ == 5 and ours.t_ == theirs.t_ == 5 * 990


def test_alpha_is_sklearns_l2_penalty(digits):
    """alpha as scikit-learn defines it: alpha / (2 n_batch) ||W||^2 per batch, biases free; the
    weights match sklearn's (the loss curve's L2 term is approximated: DIFFERENCES)."""
    X, y = digits[0][:990], digits[1][:990]
    kw = dict(hidden_layer_sizes=(30,), alpha=0.5, solver="sgd", momentum=0.0,
              learning_rate_init=0.1, max_iter=3, random_state=0)
    ours, theirs = quiet_fit(MLPClassifier(**kw), X, y), quiet_fit(SkMLPClassifier(**kw), X, y)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)


def test_binary_starts_as_sklearns_logistic_unit(digits):
    """A binary network's two softmax units start as sklearn's one logistic unit z, as (0, z):
    the same initial probabilities, and the same random numbers drawn."""
    X, y = digits
    y = y % 2
    kw = dict(hidden_layer_sizes=(16, 8), max_iter=1, random_state=0, learning_rate_init=1e-12)
    ours, theirs = quiet_fit(MLPClassifier(**kw), X, y), quiet_fit(SkMLPClassifier(**kw), X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-9)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)


def test_labels_of_any_kind(digits):
    """String labels, and a binary problem: predictions are labels from classes_, probabilities
    one column per class in that order, predict is the most probable class."""
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(20,), max_iter=30, random_state=0), X,
                    names[y])
    assert list(clf.classes_) == sorted(names)
    P = clf.predict_proba(X)
    assert P.shape == (len(X), 10)
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-12)
    assert np.array_equal(clf.predict(X), clf.classes_[P.argmax(axis=1)])
    assert clf.score(X, names[y]) > 0.9
    yb = np.where(y % 2 == 0, "even", "odd")
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(20,), max_iter=30, random_state=0), X, yb)
    assert list(clf.classes_) == ["even", "odd"] and clf.predict_proba(X).shape == (len(X), 2)
    assert clf.score(X, yb) > 0.9


def test_any_input_gives_the_same_network(digits):
    """A DataFrame, CSR and CSC matrices (int32 and int64 indices), a sparse array, uint8 values
    and float64 train exactly the same network (the same bits) from the same numbers."""
    X, y = digits
    X8 = (X * 16).astype(np.uint8)
    Xf = X8.astype(np.float64)
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=1)
    base = quiet_fit(MLPClassifier(**kw), Xf, y)
    csr64 = sp.csr_matrix(Xf)
    csr64.indices, csr64.indptr = csr64.indices.astype(np.int64), csr64.indptr.astype(np.int64)
    frame = pd.DataFrame(Xf, columns=[f"px{i}" for i in range(64)])
    for name, Xk in (("uint8", X8), ("csr", sp.csr_matrix(Xf)), ("csc", sp.csc_matrix(Xf)),
                     ("csr int64 indices", csr64), ("csr_array", sp.csr_array(Xf)),
                     ("DataFrame", frame)):
        clf = quiet_fit(MLPClassifier(**kw), Xk, y)
        for a, b in zip(clf.coefs_ + clf.intercepts_, base.coefs_ + base.intercepts_):
            assert np.array_equal(a, b), name
        assert np.array_equal(clf.predict_proba(Xk), base.predict_proba(Xf)), name
    clf = quiet_fit(MLPClassifier(**kw), frame, y)
    assert list(clf.feature_names_in_) == list(frame.columns)


@pytest.mark.parametrize("xdtype,dtype,expect", [
    (np.float32, None, np.float32), (np.float64, None, np.float64), (np.int64, None, np.float64),
    (np.uint8, None, np.float64), (np.float64, "float32", np.float32),
])
def test_dtype_kept(digits, xdtype, dtype, expect):
    X, y = digits
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0,
                                  dtype=dtype), (X * 16).astype(xdtype), y)
    assert all(a.dtype == expect for a in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba((X * 16).astype(xdtype)).dtype == expect


def test_partial_fit(digits):
    """partial_fit: classes on the first call, one epoch per call; the first call is fit with
    max_iter=1; labels outside classes are refused."""
    X, y = digits
    kw = dict(hidden_layer_sizes=(16,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier(**kw).partial_fit(X, y)
    clf = MLPClassifier(**kw).partial_fit(X, y, classes=np.arange(10))
    one = quiet_fit(MLPClassifier(max_iter=1, **kw), X, y)
    for a, b in zip(clf.coefs_, one.coefs_):
        assert np.array_equal(a, b)
    losses = [clf.loss_]
    for _ in range(5):
        losses.append(clf.partial_fit(X, y).loss_)
    assert losses[-1] < losses[0] and clf.n_iter_ == 1 and clf.t_ == 6 * len(X)
    with pytest.raises(ValueError, match="classes not in classes_"):
        clf.partial_fit(X[:5], np.array([0, 1, 2, 3, 11]))
    sub = MLPClassifier(**kw).partial_fit(X[y < 5], y[y < 5], classes=np.arange(10))
    assert sub.predict_proba(X).shape == (len(X), 10)


def test_warm_start_continues(digits):
    X, y = digits
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, warm_start=True,
                                  random_state=0), X, y)
    first = clf.loss_curve_[-1]
    quiet_fit(clf, X, y)
    assert len(clf.loss_curve_) == 10 and clf.loss_curve_[-1] < first
    with pytest.raises(ValueError, match="same classes"):
        quiet_fit(clf, X[y < 9], y[y < 9])


@pytest.mark.parametrize("classes", [10, 2])     # sklearn stratifies the split of binary y only
def test_early_stopping_keeps_the_best_epoch(digits, classes):
    X, y = digits
    y = y % classes
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=40, early_stopping=True,
                                  n_iter_no_change=3, random_state=0), X, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.score(X, y) > 0.8
    if classes == 2:        # sklearn trains one logistic unit: another trajectory from there
        return
    theirs = quiet_fit(SkMLPClassifier(hidden_layer_sizes=(16,), max_iter=40,
                                       early_stopping=True, n_iter_no_change=3,
                                       random_state=0), X, y)
    assert clf.n_iter_ == theirs.n_iter_    # the same split, the same stopping epoch
    np.testing.assert_allclose(clf.validation_scores_, theirs.validation_scores_)


def test_warm_start_after_early_stopping_keeps_the_best_weights(digits):
    """A second early-stopped fit that never beats the first's best score ends with the first
    fit's best weights, unchanged by the training in between."""
    X, y = digits
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, early_stopping=True,
                                  n_iter_no_change=2, warm_start=True, random_state=0), X, y)
    best, best_score = [W.copy() for W in clf.coefs_], clf.best_validation_score_
    clf.set_params(learning_rate_init=0.5, max_iter=3)       # wrecks the weights: no epoch of
    quiet_fit(clf, X, y)                                      # this fit does better
    assert len(clf.validation_scores_) > clf.n_iter_        # the scores of both fits
    assert max(clf.validation_scores_[-clf.n_iter_:]) < best_score == clf.best_validation_score_
    for a, b in zip(clf.coefs_, best):
        assert np.array_equal(a, b)


def test_convergence_warning_and_stopping(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)
    kw = dict(hidden_layer_sizes=(8,), max_iter=500, tol=10.0, n_iter_no_change=2, random_state=0)
    clf = MLPClassifier(**kw).fit(X, y)            # no epoch improves the loss by 10
    assert clf.n_iter_ == SkMLPClassifier(**kw).fit(X, y).n_iter_ == 4   # count > n_iter_no_change


def test_adaptive_and_invscaling_schedules(digits):
    X, y = digits
    for schedule in ("adaptive", "invscaling"):
        kw = dict(hidden_layer_sizes=(16,), solver="sgd", momentum=0.0, learning_rate=schedule,
                  learning_rate_init=0.1, max_iter=15, random_state=0, tol=1e-2,
                  n_iter_no_change=2)
        ours, theirs = quiet_fit(MLPClassifier(**kw), X, y), quiet_fit(SkMLPClassifier(**kw), X, y)
        assert ours.n_iter_ == theirs.n_iter_, schedule
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6,
                                   err_msg=schedule)


def test_pickle_round_trip(digits):
    X, y = digits
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0), X, y)
    back = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(back.predict_proba(X), clf.predict_proba(X))
    back.partial_fit(X, y)          # and it trains on
    assert back.n_iter_ == 1


def test_reference_backend_agrees(digits):
    X, y = digits
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    a = quiet_fit(MLPClassifier(**kw), X, y)
    b = quiet_fit(MLPClassifier(backend="reference", **kw), X, y)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-10)


def test_results_do_not_depend_on_threads(digits):
    """Batches over SPLIT_MAX_BATCH rows run in slots over Numba's threads: the same bits for
    any number of them. (uint8 input: the kernels the MNIST training warm-up compiled.)"""
    import numba
    X, y = digits
    X = (X * 16).astype(np.uint8)
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0, batch_size=600)
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = quiet_fit(MLPClassifier(**kw), X, y)
    finally:
        numba.set_num_threads(n)
    every = quiet_fit(MLPClassifier(**kw), X, y)
    for a, b in zip(one.coefs_, every.coefs_):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("classes", [10, 2])
def test_to_sklearn_predicts_the_same(digits, classes):
    X, y = digits
    y = y % classes
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(20, 10), max_iter=20, random_state=0,
                                  dtype="float32"), X, y)
    sk = clf.to_sklearn()
    assert isinstance(sk, SkMLPClassifier)
    assert np.array_equal(sk.predict(X), clf.predict(X))
    np.testing.assert_allclose(sk.predict_proba(X), clf.predict_proba(X), atol=1e-5)
    assert sk.score(X, y) == clf.score(X, y)


def test_onnx_export(digits):
    """to_sklearn() -> skl2onnx -> onnxruntime: the same labels and probabilities."""
    skl2onnx = pytest.importorskip("skl2onnx", reason="the [onnx] extra")
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra")
    from skl2onnx.common.data_types import FloatTensorType
    X, y = digits
    Xf = X.astype(np.float32)
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(20,), max_iter=20, random_state=0), Xf, y)
    onx = skl2onnx.convert_sklearn(clf.to_sklearn(), initial_types=[("X", FloatTensorType([None, 64]))],
                                   options={"zipmap": False})
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    labels, proba = sess.run(None, {"X": Xf})
    assert np.array_equal(labels, clf.predict(Xf))
    np.testing.assert_allclose(proba, clf.predict_proba(Xf), atol=1e-5)


def _sweep(**options):
    """A small grid search of MLPClassifier (GridSearchCV ``options``: n_jobs, ...)."""
    X, y = make_classification(n_samples=400, n_features=20, n_informative=8, n_classes=3,
                               random_state=0)
    grid = {"hidden_layer_sizes": [(8,), (32,)], "alpha": [1e-4, 1e-1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GridSearchCV(MLPClassifier(max_iter=30, random_state=0), grid, cv=3,
                            **options).fit(X, y)


def _assert_same_search(one, other):
    assert one.best_params_ == other.best_params_
    assert one.best_score_ == other.best_score_
    np.testing.assert_array_equal(one.cv_results_["mean_test_score"],
                                  other.cv_results_["mean_test_score"])


@pytest.mark.slow
def test_grid_search_in_worker_processes():
    """GridSearchCV with two loky worker processes: the same best parameters and score as in
    this process (the workers load the compiled kernels from the cache)."""
    _assert_same_search(_sweep(n_jobs=1), _sweep(n_jobs=2))


def test_bad_parameters_and_inputs(digits):
    X, y = digits
    for bad in (dict(activation="tanh"), dict(solver="lbfgs"), dict(backend="gpu"),
                dict(dtype="float16"), dict(alpha=-1.0)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            MLPClassifier(**bad).fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be positive integers"):
        MLPClassifier(hidden_layer_sizes=(10, 0)).fit(X, y)
    with pytest.raises(ValueError, match="augment needs 28x28 images"):
        MLPClassifier(augment=True).fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))
    clf = quiet_fit(MLPClassifier(hidden_layer_sizes=(8,), max_iter=1), X, y)
    with pytest.raises(ValueError, match="keep the network's layer sizes"):
        clf.set_params(hidden_layer_sizes=(9,)).partial_fit(X, y)


def test_diverging_training_says_so(digits):
    X, y = digits
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        MLPClassifier(solver="sgd", learning_rate_init=1e6, max_iter=5, random_state=0).fit(
            X * 1e6, y)


@pytest.mark.slow
def test_grid_search_on_a_dask_cluster():
    """The same sweep through joblib's dask backend on a LocalCluster of two worker processes:
    the same best parameters and scores as in this process."""
    import joblib
    distributed = pytest.importorskip("dask.distributed", reason="the [dask] extra")
    one = _sweep(n_jobs=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster), joblib.parallel_backend("dask"):
        on_dask = _sweep()
    _assert_same_search(one, on_dask)


def test_readme_lists_every_difference():
    """The README's table of differences from scikit-learn is estimator.DIFFERENCES, row by row."""
    from pathlib import Path
    from fastmlp.estimator import DIFFERENCES
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = text.split("| | fastmlp | scikit-learn |\n|---|---|---|\n")[1].split("\n\n")[0]
    assert table.splitlines() == [f"| {a} | {b} | {c} |" for a, b, c in DIFFERENCES]
