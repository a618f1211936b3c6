"""Reliability: fuzzed inputs, nothing half-written, interrupted runs, bit-for-bit repeats."""

import gzip
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastmlp import data, init_params, jit as J, reference as R
from fastmlp.params import Params, atomic_write

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


def _valid_idx(n=3):
    return bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(range(n))


# ----------------------------------------------------------------------------------------------
# fuzzing: everything either works or raises the documented error


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_idx_random_bytes(content):
    try:
        arr = data.parse_idx(content, "fuzz")
    except ValueError as exc:
        assert str(exc).startswith("fuzz: ")
    else:
        assert isinstance(arr, np.ndarray)


@FUZZ
@given(st.integers(0, 15), st.integers(0, 255), st.booleans())
def test_fuzz_idx_mutated_header(pos, byte, truncate):
    content = bytearray(_valid_idx(8))
    content[pos % len(content)] = byte
    if truncate:
        content = content[:-1 - pos % 5]
    try:
        data.parse_idx(bytes(content), "fuzz")
    except ValueError as exc:
        assert "fuzz: " in str(exc)


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_idx_files_gz_or_raw(tmp_path, content, gz):
    path = tmp_path / ("f-idx1-ubyte.gz" if gz else "f-idx1-ubyte")
    path.write_bytes(gzip.compress(content) if gz and content[:1] == b"\x00" else content)
    try:
        data.read_idx(path)
    except ValueError as exc:
        assert str(path) in str(exc)


@FUZZ
@given(st.lists(st.lists(st.one_of(st.integers(-5, 300), st.sampled_from(["", "x", "nan", "1.5",
                                                                       "inf", " 7"])),
                         min_size=1, max_size=790), min_size=1, max_size=3))
def test_fuzz_csv(tmp_path, rows):
    path = tmp_path / "fuzz.csv"
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    try:
        X, y = data.read_csv(path)
    except ValueError as exc:
        assert str(path) in str(exc)
    else:
        assert X.shape[1] == 784 and X.dtype == np.uint8 and y.max() <= 9


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_csv_random_bytes(tmp_path, content):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(content)
    try:
        data.read_csv(path)
    except ValueError as exc:
        assert str(path) in str(exc)


_arrays = st.sampled_from([
    np.zeros((2, 784)), np.zeros((2, 784), np.float32), np.zeros((784,)), np.zeros((2, 783)),
    np.zeros((0, 784)), np.full((2, 784), np.nan), np.full((1, 784), np.inf, np.float32),
    np.zeros((2, 784), np.int64), np.ones((3, 784), np.uint8), np.zeros((2, 28, 28)),
    np.asfortranarray(np.zeros((3, 784))), np.zeros((4, 1568))[:, ::2], "text", None, 3.0,
])
_labels = st.sampled_from([np.array([0, 1]), np.array([0, 1, 2]), np.array([0, 10]),
                           np.array([-1, 0]), np.array([0.5, 1.0]), np.array(["a", "b"]),
                           np.array([[0, 1]]), [1, 2], None])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(X=_arrays, y=_labels, backend=st.sampled_from([R, J]), dtype=st.sampled_from([np.float32, np.float64]))
def test_fuzz_public_functions(X, y, backend, dtype):
    params = init_params(dtype=dtype)
    for call in (lambda: backend.loss_and_grads(params, X, y), lambda: backend.predict(params, X),
                 lambda: backend.forward(params, X)):
        try:
            out = call()
        except (ValueError, TypeError) as exc:
            assert str(exc)
        else:
            assert out is not None


_OPT_CASES = [   # (keyword changes to a valid call, error, message)
    (dict(lrs=[[0.1]]), ValueError, r"learning rates must be a 1-D sequence, one per step; got shape \(1, 1\)"),
    (dict(lrs=["fast"]), TypeError, "learning rates must be numbers, one per step"),
    (dict(lrs=[float("nan")]), ValueError, "learning rates must be finite and >= 0; got nan at step 0"),
    (dict(lrs=[0.1, -0.1]), ValueError, "learning rates must be finite and >= 0; got -0.1 at step 1"),
    (dict(t0=-1), ValueError, r"t0 \(the steps taken before\) must be an integer >= 0; got -1"),
    (dict(t0=1.5), ValueError, "t0 .* must be an integer >= 0; got 1.5"),
    (dict(optimizer="rmsprop"), ValueError, "optimizer must be one of gd, sgd, momentum, nesterov, adam, adam_hat; got 'rmsprop'"),
    (dict(momentum=2.0), ValueError, r"momentum must be a finite number in \[0, 1\); got 2.0"),
    (dict(beta2=1.0), ValueError, r"beta2 must be a finite number in \[0, 1\); got 1.0"),
    (dict(eps=0.0), ValueError, "eps must be a finite number > 0; got 0.0"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay must be a finite number >= 0; got nan"),
    (dict(weight_decay=True), ValueError, "weight_decay must be a finite number >= 0; got True"),
    (dict(lr_decay=0.5), TypeError, "unknown optimizer option 'lr_decay'; the options are momentum, "
                                    "beta1, beta2, eps, weight_decay"),
    (dict(state="none"), ValueError, "optimizer state must hold 12 arrays"),
]


@pytest.mark.parametrize("backend", [R, J], ids=["reference", "numba"])
@pytest.mark.parametrize("change, error, msg", _OPT_CASES)
def test_optimizer_arguments_are_checked_alike_by_both_backends(mnist_train, backend, change, error, msg):
    """update, gd_steps and sgd_epoch check the optimizer's arguments at the boundary, both
    backends alike (before, a 2-D lrs was a Numba typing error, t0 = -1 with Adam divided by
    zero into NaN weights, momentum 2 or a NaN weight decay trained on silently). Nothing is
    changed when the call fails."""
    X, y = backend.prepare(mnist_train[0][:20], np.float32), mnist_train[1][:20]
    p = init_params(dtype=np.float32)
    before = [a.copy() for a in p.arrays()]
    kw = dict(lrs=[0.1], t0=0, optimizer="adam", state=None)
    kw.update(change)
    state = backend.init_state(p, "adam") if kw.pop("state") is None else change["state"]
    lrs, t0 = kw.pop("lrs"), kw.pop("t0")
    with pytest.raises(error, match=msg):
        backend.gd_steps(p, state, X, y, lrs, t0=t0, **kw)
    with pytest.raises(error, match=msg):
        backend.sgd_epoch(p, state, X, y, np.arange(20), 20, lrs, t0=t0, **kw)
    if "t0" not in change and np.ndim(lrs) == 1 and len(lrs) == 1:    # update takes one lr, t
        with pytest.raises(error, match=msg if "lr_decay" not in change else "lr_decay"):
            backend.update(p, p.copy(), state, lrs[0], 1, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(p.arrays(), before))


@pytest.mark.parametrize("backend", [R, J], ids=["reference", "numba"])
def test_update_checks_its_step_number_grads_and_shifts(mnist_train, backend):
    p = init_params(dtype=np.float32)
    st_ = backend.init_state(p, "adam")
    for t in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match=r"t \(the step number, from 1\) must be an integer >= 1"):
            backend.update(p, p.copy(), st_, 0.1, t, "adam")
    with pytest.raises(ValueError, match=r"grads must have the params' sizes \(784, 72, 36, 10\)"):
        backend.update(p, init_params((784, 10), dtype=np.float32), st_, 0.1, 1, "adam")
    with pytest.raises(TypeError, match="grads must be a fastmlp.Params; got list"):
        backend.update(p, p.arrays(), st_, 0.1, 1, "adam")
    X, y = backend.prepare(mnist_train[0][:20], np.float32), mnist_train[1][:20]
    for shifts, msg in ((np.zeros((20, 2)), r"shifts must be integers of shape \(20, 2\); got float64"),
                        (np.full((20, 2), 30), "shifts must be within -27..27 pixels; got 30"),
                        (np.full((20, 2), -128, np.int8), "shifts must be within -27..27 pixels; got 128"),
                        (np.zeros((19, 2), int), r"shifts must be integers of shape \(20, 2\)")):
        with pytest.raises(ValueError, match=msg):
            backend.sgd_epoch(p, [], X, y, np.arange(20), 10, [0.1, 0.1], shifts=shifts)


@st.composite
def _csrs(draw):
    """CSRs built by hand, most of them malformed: columns past n_cols, unsorted or repeated
    within a row, row pointers that skip, overrun or go back."""
    n = draw(st.integers(1, 4))
    rows = [draw(st.lists(st.integers(0, 800), max_size=6)) for _ in range(n)]
    if draw(st.booleans()):
        rows = [sorted(set(r)) for r in rows]
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    if draw(st.booleans()):
        k = draw(st.integers(0, n))
        indptr[k] += draw(st.integers(-3, 3))
    indices = np.array([c for r in rows for c in r], dtype=np.int64)
    values = np.array(draw(st.lists(st.integers(1, 255), min_size=len(indices),
                                    max_size=len(indices))), dtype=np.uint8)
    return J.CSR(indptr, (indices % 65536).astype(np.uint16), values,
                 np.arange(256, dtype=np.float32) / np.float32(255), 784)


@settings(max_examples=150, deadline=None)
@given(C=_csrs())
def test_fuzz_hand_made_csrs(C):
    """A hand-made CSR gives a result or a ValueError, never a crash (the kernels do no bounds
    checks; the boundary does); when it gives a result, that is the result for the same images
    given densely."""
    params = init_params(dtype=np.float32)
    try:
        P = J.predict_proba(params, C)
    except ValueError as exc:
        assert str(exc).startswith("CSR ")
        return
    X = np.zeros((len(C), 784), np.float32)
    for i in range(len(C)):
        s = slice(C.indptr[i], C.indptr[i + 1])
        X[i, C.indices[s]] = C.values[s] / np.float32(255)
    assert np.array_equal(P, J.predict_proba(params, X))


# ----------------------------------------------------------------------------------------------
# nothing half-written


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.npz"

    def broken(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert list(tmp_path.iterdir()) == []
    init_params(dtype=np.float32).save(target)
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_training_leaves_no_files(tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_fast.py"), "--epochs", "200",
                             "--quiet", "--save", str(out / "model.npz"), "--metrics-json",
                             str(out / "m.json"), "--plot-dir", str(out / "figs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell may start us with SIGINT ignored; give the child Ctrl-C back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert files == []
    if sig == signal.SIGINT:
        assert "Traceback" not in err and "interrupted" in err


def test_an_interrupt_swallowed_on_the_way_is_raised_again():
    """A Ctrl-C whose KeyboardInterrupt lands in code that swallows it (as Python does with a
    weakref callback's exceptions) is raised again by the training loops' check, inside the
    CLI's catching_interrupts(); outside it, and before any SIGINT, the check does nothing."""
    from fastmlp import _signals
    _signals.raise_if_interrupted()
    with _signals.catching_interrupts():
        _signals.raise_if_interrupted()
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass                                    # swallowed
        with pytest.raises(KeyboardInterrupt):
            _signals.raise_if_interrupted()
    _signals.raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ----------------------------------------------------------------------------------------------
# bit for bit


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["--epochs", "1", "--augment"],
    ["--backend", "reference", "--epochs", "1", "--batch-size", "512"],
    ["--preset", "original", "--iterations", "5"],
])
def test_fastmlp_train_is_bitwise_repeatable(tmp_path, argv):
    models = []
    for k in range(2):
        path = tmp_path / f"m{k}.npz"
        r = subprocess.run([sys.executable, "-m", "fastmlp.cli", "train", *argv, "--seed", "4",
                            "--quiet", "--save", str(path)], capture_output=True, text=True,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr
        models.append(Params.load(path))
    for a, b in zip(models[0].arrays(), models[1].arrays()):
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_thread_count_does_not_change_the_model(tmp_path):
    models = []
    for threads in ("1", "2"):
        path = tmp_path / f"m{threads}.npz"
        r = subprocess.run([sys.executable, "-m", "fastmlp.cli", "train", "--epochs", "1", "--quiet",
                            "--threads", threads, "--save", str(path)], capture_output=True,
                           text=True, cwd=ROOT, env=dict(os.environ, NUMBA_NUM_THREADS="2"))
        assert r.returncode == 0, r.stderr
        models.append(Params.load(path))
    for a, b in zip(models[0].arrays(), models[1].arrays()):
        assert np.array_equal(a, b)
