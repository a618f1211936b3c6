"""fastmlp.MLPClassifier against scikit-learn's MLPClassifier: the same hyperparameters, fits
alternating in one run, on three kinds of data.

    python benchmarks/bench_sklearn.py                 # all three, 3 alternating pairs each
    python benchmarks/bench_sklearn.py --only mnist --pairs 5 --json out.json

- mnist: the real MNIST digits (pixels / 255, float32), 60,000 to train, 10,000 to test
- tabular: a dense synthetic table, 100,000 x 54 float32 (+ 20,000 to test), 7 classes
- wide: a dense synthetic table as wide as MNIST, 60,000 x 784 float32 (+ 10,000), 10 classes
  (no zeros: the dense first layer, where sklearn's BLAS is at its best)
- sparse: a synthetic bag of words, CSR 30,000 x 50,000 (+ 6,000 to test), about 0.2% non-zero
  word counts (rows scaled to unit length), 20 classes told apart by a few topical words

Settings (both estimators): hidden_layer_sizes=(100,), solver="adam", batch_size=200,
learning_rate_init=0.001, alpha=1e-4, random_state=0, max_iter=10 epochs (5 for sparse),
tol=0 (so neither stops early). Each pair fits fastmlp then sklearn (fastmlp's kernels loaded
before the first pair); the table gives the median time of each, the median of the pairs'
ratios with its min-max, and test accuracy. Printed as markdown; --json keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_support import environment, header_line  # noqa: E402

TARGETS = {"mnist": 8.0, "tabular": 3.0, "wide": 1.0, "sparse": 5.0}


def mnist_data():
    import fastmlp
    Xtr, ytr = fastmlp.load_mnist("train")
    Xte, yte = fastmlp.load_mnist("test")
    scale = np.float32(255)
    return Xtr.astype(np.float32) / scale, ytr, Xte.astype(np.float32) / scale, yte, 10


def _table(n, n_test, **kw):
    """scikit-learn's make_classification, float32, split into train and test; 10 epochs."""
    from sklearn.datasets import make_classification
    X, y = make_classification(n_samples=n + n_test, random_state=0, **kw)
    X = X.astype(np.float32)
    return X[:n], y[:n], X[n:], y[n:], 10


def tabular_data(n=100_000, n_test=20_000):
    return _table(n, n_test, n_features=54, n_informative=30, n_redundant=10, n_classes=7,
                  n_clusters_per_class=3, class_sep=1.5)


def wide_data(n=60_000, n_test=10_000):
    return _table(n, n_test, n_features=784, n_informative=100, n_redundant=100, n_classes=10,
                  n_clusters_per_class=2, class_sep=1.0)


def sparse_data(n=30_000, n_test=6_000, vocab=50_000, classes=20, words=125, topical=0.03,
                seed=0):
    """Documents of `words` word draws: most from a Zipf law over the whole vocabulary, a
    fraction `topical` from a Zipf law over the document's class's own 2,000 words (few enough
    that the classes are not trivially separable); counts, each row scaled to unit length."""
    rng = np.random.default_rng(seed)
    m = n + n_test
    y = rng.integers(0, classes, m)
    common = 1.0 / np.arange(1, vocab + 1)
    common /= common.sum()
    own = 1.0 / np.arange(1, 2001)
    own /= own.sum()
    topics = np.stack([rng.choice(vocab, 2000, replace=False) for _ in range(classes)])
    k = int(round(words * topical))
    cols = np.concatenate([rng.choice(vocab, (m, words - k), p=common),
                           topics[y[:, None], rng.choice(2000, (m, k), p=own)]], axis=1)
    rows = np.repeat(np.arange(m), words)
    X = sp.csr_matrix((np.ones(m * words, np.float32), (rows, cols.ravel())), shape=(m, vocab))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = (sp.diags(1 / norms).astype(np.float32) @ X).tocsr()
    return X[:n], y[:n], X[n:], y[n:], 5


DATA = {"mnist": mnist_data, "tabular": tabular_data, "wide": wide_data, "sparse": sparse_data}


def fit_time(make, Xtr, ytr, Xte, yte):
    clf = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        clf.fit(Xtr, ytr)
        seconds = time.perf_counter() - t
    return seconds, float(clf.score(Xte, yte))


def run(name, pairs):
    from sklearn.neural_network import MLPClassifier as Sk
    from fastmlp import MLPClassifier as Fast
    Xtr, ytr, Xte, yte, epochs = DATA[name]()
    kw = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200, learning_rate_init=1e-3,
              alpha=1e-4, random_state=0, max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1)
    # fastmlp's kernels for this kind of data, loaded (or compiled) before anything is timed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Fast(**dict(kw, max_iter=1)).fit(Xtr[:400], ytr[:400])
    rows = []
    for _ in range(pairs):
        fast = fit_time(lambda: Fast(**kw), Xtr, ytr, Xte, yte)
        sk = fit_time(lambda: Sk(**kw), Xtr, ytr, Xte, yte)
        rows.append(dict(fastmlp_s=fast[0], sklearn_s=sk[0], ratio=sk[0] / fast[0],
                         fastmlp_accuracy=fast[1], sklearn_accuracy=sk[1]))
        print(f"  {name}: fastmlp {fast[0]:.2f} s ({fast[1]:.4f}), sklearn {sk[0]:.2f} s "
              f"({sk[1]:.4f}), ratio {sk[0] / fast[0]:.2f}x", file=sys.stderr, flush=True)
    shape = f"{Xtr.shape[0]:,} x {Xtr.shape[1]:,}"
    density = (Xtr.nnz / np.prod(Xtr.shape)) if sp.issparse(Xtr) else np.count_nonzero(Xtr) / Xtr.size
    return dict(data=name, shape=shape, density=float(density), classes=int(len(np.unique(ytr))),
                epochs=epochs, pairs=rows)


def table(results) -> str:
    lines = ["| data | train shape | non-zero | classes | epochs | fastmlp fit | sklearn fit | "
             "ratio (median, min-max) | target | fastmlp accuracy | sklearn accuracy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        p = r["pairs"]
        ratios = [x["ratio"] for x in p]
        med = lambda k: statistics.median(x[k] for x in p)  # noqa: E731
        lines.append(
            f"| {r['data']} | {r['shape']} | {100 * r['density']:.3g}% | {r['classes']} | "
            f"{r['epochs']} | {med('fastmlp_s'):.2f} s | {med('sklearn_s'):.2f} s | "
            f"{statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f}) | "
            f">= {TARGETS[r['data']]:g}x | {100 * med('fastmlp_accuracy'):.2f}% | "
            f"{100 * med('sklearn_accuracy'):.2f}% |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(DATA), default=list(DATA))
    ap.add_argument("--pairs", type=int, default=3, help="alternating fits of each (default 3)")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args(argv)
    results = [run(name, args.pairs) for name in args.only]
    env = environment()
    import sklearn
    print(f"{header_line(env)}; scikit-learn {sklearn.__version__}; {args.pairs} alternating "
          f"pairs per row\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, results=results), f, indent=1)


if __name__ == "__main__":
    main()
