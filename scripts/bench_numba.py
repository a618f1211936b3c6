#!/usr/bin/env python
"""The numba backend against the reference, in one run, as one markdown table.

    python scripts/bench_numba.py [--repeats 7] [--skip-subprocess] [--only GROUP ...]
    python scripts/bench_numba.py --only epoch --repeats 31    # one ratio, more pairs

Rows: loss_and_grads on all 60,000 training images (float32), the full-batch training loop, one
mini-batch epoch at batch 128, inference on the 10,000 test images, loss_and_grads at first-layer
widths 32 to 512, the thread scaling of the kernels, the epoch with both sides on one core; then
train_fast.py's first run on an empty Numba cache, a cached run and other networks after it
(time and the training process's peak memory). Every time is the median of
--repeats runs measured here, now; the reference and numba are timed in alternation, and a ratio
is the median of the --repeats pairs' ratios (see paired_times). "fraction" is the
dense-equivalent GFLOP/s (what the dense algorithm would have to do: 243,504 FLOP per image and
pass, 118,800 for inference) divided by this machine's float32 matrix-product rate, measured at
the start of the run. ``--only`` runs some groups of rows (see GROUPS), e.g. a ratio that is
close to its target, timed over more pairs than a whole run would take.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fastmlp
from fastmlp import jit as J, reference as R

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_support import (FLOPS_FORWARD, FLOPS_TRAIN, environment, flops_train,  # noqa: E402
                           header_line, matmul_gflops, settle)


GROUPS = {         # --only: the rows of each group
    "loss": "loss_and_grads on dense and on compressed X",
    "gd": "the full-batch training loop",
    "epoch": "one mini-batch epoch at batch 128",
    "predict": "inference on the test set, compressed and dense X",
    "widths": "loss_and_grads at first-layer widths 32 to 512 (784-W-36-10)",
    "threads": "loss_and_grads with 1 thread against all",
    "one-core": "the epoch with both sides on one core",
    "blas": "dense BLAS's two big products against numba's whole pass",
    "start": "train_fast.py's first run, a cached run, other networks after it: time, memory",
}


WIDTHS = (32, 72, 100, 128, 256, 512)


def paired_times(ref_fn, jit_fn, repeats, setup=None):
    """(median time of ref_fn, median time of jit_fn, median of the per-pair ratios), timed in
    alternation: ref, jit, ref, jit, ... This machine has slow spells that come and go over
    seconds; timed in two blocks, one side of a ratio can fall in a spell and the other not (an
    epoch ratio of 3.6x once, 5.3x in the next run), while a pair sees the same machine on both
    sides. Each timed call follows the settle pause (bench_support.SETTLE_S) and then one untimed call
    of the same function (compilation the first time; after that it wakes the thread pool and
    brings the weights back into cache: numba's predict on 10,000 images takes ~5 ms as the first
    call after a pause and ~3 ms as the next), so both sides are timed warm, as in a loop."""
    t_ref, t_jit = [], []
    for _ in range(repeats):
        for fn, out in ((ref_fn, t_ref), (jit_fn, t_jit)):
            settle()
            fn(*(setup() if setup else ()))
            args = setup() if setup else ()
            t = time.perf_counter()
            fn(*args)
            out.append(time.perf_counter() - t)
    ratios = np.array(t_ref) / np.array(t_jit)
    return float(np.median(t_ref)), float(np.median(t_jit)), float(np.median(ratios))


START_RUNS = [       # (what, train_fast.py arguments, a fresh Numba cache first)
    ("first run of the default (empty cache: compiles)", [], True),
    ("the default again (kernels cached)", [], False),
    ("--hidden 128 --epochs 1, after the default", ["--hidden", "128", "--epochs", "1"], False),
    ("--hidden 256,128,64 --epochs 1, after the default",
     ["--hidden", "256,128,64", "--epochs", "1"], False),
    ("first run of --preset original --iterations 20 (empty cache)",
     ["--preset", "original", "--iterations", "20"], True),
]


def start_runs():
    """``train_fast.py`` as a user runs it, each run a process of its own, in START_RUNS order:
    wall time of the whole process, its start (data loading + compressing + loading or
    compiling the kernels, from --metrics-json), its own peak RSS (not that of the child
    processes that compile), and test accuracy."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.json"
        cache = None
        for what, extra, fresh in START_RUNS:
            if fresh:
                cache = tempfile.mkdtemp(dir=tmp)
            cmd = [sys.executable, str(ROOT / "scripts" / "train_fast.py"), "--quiet",
                   "--metrics-json", str(metrics), *extra]
            t = time.perf_counter()
            subprocess.run(cmd, env=dict(os.environ, NUMBA_CACHE_DIR=cache), check=True,
                           capture_output=True)
            m = json.loads(metrics.read_text())
            rows.append({"run": what, "wall_s": time.perf_counter() - t,
                         "start_s": m["load_seconds"] + m["startup_seconds"],
                         "peak_rss_mb": m["peak_rss_mb"], "test_accuracy": m["test_accuracy"]})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7,
                    help="timed calls per measurement, and pairs per ratio (default 7)")
    ap.add_argument("--skip-subprocess", action="store_true",
                    help="skip the train_fast.py runs (start times and memory)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--only", nargs="+", choices=list(GROUPS), metavar="GROUP",
                    help="run only these groups of rows: " + "; ".join(
                        f"{g}: {what}" for g, what in GROUPS.items()))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"argument --repeats: must be an integer >= 1; got {args.repeats}")

    def want(group):
        return args.only is None or group in args.only

    import numba
    from threadpoolctl import threadpool_limits

    k = args.repeats
    rate = matmul_gflops(k)
    X, y = fastmlp.load_mnist("train", download=False)
    Xt, yt = fastmlp.load_mnist("test", download=False)
    y = y.astype(np.int64)
    dt = np.float32
    Xf = R.prepare(X, dt)
    C = J.prepare(X, dt)
    Ct = J.prepare(Xt, dt)
    Xtf = R.prepare(Xt, dt)
    p = fastmlp.init_params(scheme="uniform", seed=0, dtype=dt)
    rows = []

    def add(name, times, samples, flops, unit="it/s", per=1):
        t_ref, t_jit, ratio = times
        frac = samples * flops / t_jit / 1e9 / rate
        rows.append({"measurement": name, "reference_s": t_ref, "numba_s": t_jit, "ratio": ratio,
                     "rate": per / t_jit, "unit": unit, "fraction_of_matmul": frac})

    if want("loss"):
        add("loss_and_grads, 60,000 images, float32 dense X (compressed on the way in)",
            paired_times(lambda: R.loss_and_grads(p, Xf, y), lambda: J.loss_and_grads(p, Xf, y),
                         k), 60000, FLOPS_TRAIN)
        add("loss_and_grads, 60,000 images, float32, data compressed once (jit.prepare)",
            paired_times(lambda: R.loss_and_grads(p, Xf, y), lambda: J.loss_and_grads(p, C, y), k),
            60000, FLOPS_TRAIN)

    if want("gd"):
        steps = 10
        t_gd = paired_times(lambda q: R.gd_steps(q, [], Xf, y, [0.2] * steps),
                            lambda q: J.gd_steps(q, [], C, y, [0.2] * steps), k,
                            lambda: (p.copy(),))
        add(f"full-batch training loop (gd_steps, {steps} iterations, per iteration)",
            (t_gd[0] / steps, t_gd[1] / steps, t_gd[2]), 60000, FLOPS_TRAIN)

    perm = np.random.default_rng(0).permutation(60000)
    lrs = np.full(469, 0.01)
    ph = fastmlp.init_params(scheme="he", seed=0, dtype=dt)
    fresh = lambda: (ph.copy(),)  # noqa: E731
    if want("epoch"):
        add("one mini-batch epoch, batch 128, 60,000 images (sgd_epoch)",
            paired_times(lambda q: R.sgd_epoch(q, [], Xf, y, perm, 128, lrs),
                         lambda q: J.sgd_epoch(q, [], C, y, perm, 128, lrs), k, fresh),
            60000, FLOPS_TRAIN, unit="epochs/s")

    if want("predict"):
        trained = ph.copy()        # inference on a trained network (one epoch of Nesterov SGD)
        J.sgd_epoch(trained, R.init_state(trained, "nesterov"), C, y, perm, 128,
                    np.full(469, 0.1), optimizer="nesterov")
        add("inference, 10,000 test images (predict), data compressed once",
            paired_times(lambda: R.predict(trained, Xtf), lambda: J.predict(trained, Ct), k),
            10000, FLOPS_FORWARD, unit="images/s", per=10000)
        add("inference, 10,000 test images (predict), dense float X",
            paired_times(lambda: R.predict(trained, Xtf), lambda: J.predict(trained, Xtf), k),
            10000, FLOPS_FORWARD, unit="images/s", per=10000)

    if want("widths"):        # every width runs the same register-tiled row loop (_codegen)
        for width in WIDTHS:
            sizes = (784, width, 36, 10)
            pw = fastmlp.init_params(sizes, scheme="uniform", seed=0, dtype=dt)
            add(f"loss_and_grads, 784-{width}-36-10, data compressed once",
                paired_times(lambda: R.loss_and_grads(pw, Xf, y),
                             lambda: J.loss_and_grads(pw, C, y), k), 60000, flops_train(sizes))

    # parallelism: the kernels with 1 thread and with all, and the dense-BLAS floor
    n_threads = numba.get_num_threads()

    def one_thread():
        numba.set_num_threads(1)
        try:
            J.loss_and_grads(p, C, y)
        finally:
            numba.set_num_threads(n_threads)

    if want("threads"):
        add(f"loss_and_grads (compressed), numba with 1 thread vs {n_threads}",
            paired_times(one_thread, lambda: J.loss_and_grads(p, C, y), k), 60000, FLOPS_TRAIN)
    # the epoch on one core each (numba 1 thread, BLAS 1 thread): the ratio of the algorithms
    # when the machine gives us only one core, which on a shared machine it sometimes does
    if want("one-core"):
        numba.set_num_threads(1)
        try:
            with threadpool_limits(1, user_api="blas"):
                add("one mini-batch epoch, batch 128, both on one core (numba 1 thread, "
                    "BLAS 1 thread)",
                    paired_times(lambda q: R.sgd_epoch(q, [], Xf, y, perm, 128, lrs),
                                 lambda q: J.sgd_epoch(q, [], C, y, perm, 128, lrs), k, fresh),
                    60000, FLOPS_TRAIN, unit="epochs/s")
        finally:
            numba.set_num_threads(n_threads)
    if want("blas"):
        W1 = p.weights[0]
        dZ = np.ones((60000, 72), dt)
        add("dense BLAS alone: X @ W1 and X.T @ dZ1 (the two big products), vs numba's whole "
            "pass",
            paired_times(lambda: (Xf @ W1, Xf.T @ dZ), lambda: J.loss_and_grads(p, C, y), k),
            60000, FLOPS_TRAIN)

    starts = start_runs() if not args.skip_subprocess and want("start") else []

    print(f"# fastmlp: numba vs reference ({time.strftime('%Y-%m-%d')})")
    print()
    print(f"{header_line(environment())}; float32 matmul rate {rate:.0f} GFLOP/s; times are "
          f"medians of {k}, ratios medians of {k} alternating pairs.")
    if rows:
        print()
        print("| measurement | reference | numba | ratio | numba rate | fraction of matmul rate |")
        print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x"
        print(f"| {r['measurement']} | {1e3 * r['reference_s']:.1f} ms | {1e3 * r['numba_s']:.1f} ms "
              f"| {ratio} | {r['rate']:,.1f} {r['unit']} | {100 * r['fraction_of_matmul']:.1f}% |")
    if starts:
        print()
        print("| train_fast.py run | whole process | start (load, compress, kernels) | peak RSS "
              "of the training process | test accuracy |")
        print("|---|---:|---:|---:|---:|")
        for r in starts:
            print(f"| {r['run']} | {r['wall_s']:.1f} s | {r['start_s']:.2f} s | "
                  f"{r['peak_rss_mb']:.0f} MB | {100 * r['test_accuracy']:.2f}% |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "starts": starts, "matmul_gflops": rate},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
