"""The command line: train_fast.py and the fastmlp command, including every foreseeable error."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastmlp import cli, init_params
from fastmlp.images import image_to_mnist

from support import run_loaded

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained by the command line (2 epochs), with its metrics and figures."""
    d = tmp_path_factory.mktemp("run")
    code = cli.main(["train", "--epochs", "2", "--quiet", "--save", str(d / "model.npz"),
                     "--metrics-json", str(d / "metrics.json"), "--plot-dir", str(d / "figs")])
    assert code == 0
    return d


def test_train_writes_model_metrics_and_figures(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("test_accuracy", "train_seconds", "iterations_per_second", "backend", "optimizer",
                "epochs", "seed", "startup_seconds", "load_seconds", "date", "machine",
                "peak_rss_mb"):
        assert key in metrics, key
    assert metrics["test_accuracy"] > 0.95 and metrics["backend"] == "numba"
    figs = sorted(p.name for p in (trained / "figs").iterdir())
    assert figs == ["confusion.png", "curves.png", "digits.png", "first_layer.png"]
    for f in figs:
        assert (trained / "figs" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in trained.iterdir()) == ["figs", "metrics.json", "model.npz"]


@pytest.mark.slow
def test_train_fast_script_end_to_end(tmp_path):
    """The main job as a user runs it: the original preset, cut to 20 iterations."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_fast.py"), "--preset",
                          "original", "--iterations", "20", "--quiet", "--metrics-json",
                          str(tmp_path / "m.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("test accuracy ")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["iterations"] == 20 and m["optimizer"] == "gd" and m["lr"] == 0.2
    assert 0.3 < m["test_accuracy"] < 0.9


def test_evaluate(trained, capsys):
    code, out, err = run_cli(capsys, "evaluate", str(trained / "model.npz"), "--quiet")
    assert code == 0, err
    assert out.startswith("test accuracy ") and "per class:" in out and "confusion matrix" in out
    assert len(out.strip().splitlines()) == 3 + 1 + 10


def _digit_png(path, img28, mode, scale=4, invert=False):
    big = np.kron(img28.reshape(28, 28), np.ones((scale, scale))).astype(np.uint8)
    if invert:
        big = 255 - big
    if mode == "L":
        Image.fromarray(big).save(path)
    elif mode == "RGB":
        Image.fromarray(np.stack([big] * 3, axis=-1)).save(path)
    elif mode == "RGBA":      # dark ink on a transparent background
        ink = 255 - big
        rgba = np.zeros(big.shape + (4,), np.uint8)
        rgba[..., 3] = 255 - ink if invert else big
        Image.fromarray(rgba).save(path)


def test_predict_png_variants(trained, mnist_test, tmp_path, capsys):
    Xt, yt = mnist_test
    paths, labels = [], []
    variants = [("L", False), ("RGB", True), ("RGBA", False), ("L", True), ("RGB", False)]
    for i, (mode, invert) in enumerate(variants * 2):
        p = tmp_path / f"digit{i}_{mode}{'_inv' if invert else ''}.png"
        _digit_png(p, Xt[i], mode, scale=2 + i % 4, invert=invert)
        paths.append(str(p))
        labels.append(int(yt[i]))
    code, out, err = run_cli(capsys, "predict", str(trained / "model.npz"), *paths)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == len(paths)
    predicted = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert sum(p == l for p, l in zip(predicted, labels)) >= 8, (predicted, labels)
    probs = [float(x.split(":")[1]) for x in lines[0].split("   ")[1].split()]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 0.01


def test_image_conversion_matches_mnist_layout(mnist_test, tmp_path):
    Xt, _ = mnist_test
    p = tmp_path / "d.png"
    _digit_png(p, Xt[0], "L", scale=5, invert=True)      # black on white, 140x140
    x = image_to_mnist(p).reshape(28, 28).astype(float)
    assert x.max() > 200 and x[0].sum() == 0 and x[:, 0].sum() == 0
    rows, cols = np.nonzero(x > 50)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) <= 21
    cy = (x.sum(axis=1) @ np.arange(28)) / x.sum()
    assert abs(cy - 13.5) < 1


# ----------------------------------------------------------------------------------------------
# errors: one line, non-zero exit, naming the option, what is allowed and what was given


@pytest.mark.parametrize("argv, fragment", [
    (["--lr", "-0.1"], "argument --lr: must be a number > 0; got -0.1"),
    (["--lr", "0"], "argument --lr: must be a number > 0; got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1; got 0"),
    (["--epochs", "0"], "argument --epochs: must be an integer in 1..100000; got 0"),
    (["--iterations", "-3"], "argument --iterations: must be an integer in 1..1000000; got -3"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--backend", "cuda"], "argument --backend: invalid choice: 'cuda' (choose from"),
    (["--dataset", "kmnist"], "argument --dataset: invalid choice: 'kmnist'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--preset", "turbo"], "argument --preset: invalid choice: 'turbo'"),
    (["--val-fraction", "1.5"], "argument --val-fraction: must be a number in (0, 1); got 1.5"),
    (["--lr", "fast"], "argument --lr: must be a number > 0; got 'fast'"),
])
def test_bad_options_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_backend_error_lists_known_backends(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--backend", "cuda"])
    assert "'numba', 'reference'" in capsys.readouterr().err


def _one_line_error(capsys, *argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1
    assert err.startswith("fastmlp ") and "error:" in err and "Traceback" not in err
    return err


def test_batch_size_larger_than_training_set(capsys):
    err = _one_line_error(capsys, "train", "--batch-size", "70000", "--quiet")
    assert "--batch-size must be between 1 and the number of training rows (60000); got 70000" in err


def test_missing_data_names_places(capsys, tmp_path):
    err = _one_line_error(capsys, "train", "--data-dir", str(tmp_path / "none"), "--quiet")
    assert str(tmp_path / "none") in err and "not found" in err


def test_unwritable_output_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _one_line_error(capsys, "train", "--plot-dir", str(blocker / "figs"), "--quiet")
    assert "--plot-dir" in err
    err = _one_line_error(capsys, "train", "--save", str(tmp_path), "--quiet")
    assert "--save must be a file path" in err


def test_foreign_model_file(capsys, tmp_path):
    f = tmp_path / "model.npz"
    f.write_text("not a model")
    err = _one_line_error(capsys, "evaluate", str(f))
    assert "not a fastmlp model file" in err
    err = _one_line_error(capsys, "predict", str(tmp_path / "missing.npz"), "x.png")
    assert "no such model file" in err


def test_predict_rejects_non_images(capsys, tmp_path):
    model = init_params(dtype=np.float32).save(tmp_path / "m.npz")
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    err = _one_line_error(capsys, "predict", str(model), str(bad))
    assert "not a readable image" in err
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(blank)
    assert "no digit found" in _one_line_error(capsys, "predict", str(model), str(blank))


def test_diverged_training_saves_nothing(capsys, tmp_path):
    err = _one_line_error(capsys, "train", "--preset", "original", "--iterations", "30", "--lr",
                          "1e6", "--save", str(tmp_path / "m.npz"), "--quiet")
    assert "diverged" in err and "lr=1e+06" in err and "nothing was saved" in err
    assert list(tmp_path.iterdir()) == []


def test_compare_script_passes_and_prints_every_tensor():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_backends.py"),
                          "--dtype", "float64", "--batch-size", "64"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("A1", "A2", "Z3 (logits)", "loss", "dW1", "db1", "dW2", "db2", "dW3", "db3",
                 "predictions"):
        assert name in out.stdout
    assert "all OK" in out.stdout


def test_bench_passes_options_to_pytest():
    out = subprocess.run([sys.executable, "-m", "fastmlp.cli", "bench", "-q", "--co", "-k",
                          "predict and reference-float32-1]"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test_predict[reference-float32-1]" in out.stdout
    assert re.search(r"\b1/\d+ tests collected", out.stdout), out.stdout


def test_warmup_command_compiles_in_child_processes(capsys):
    """`fastmlp warmup` (here the kinds the session's warm-up compiled already: it loads them)."""
    assert cli.main(["warmup", "--dtype", "float32", "--processes", "1"]) == 0
    out = capsys.readouterr()
    assert "compiled float32 784-72-36-10" in out.err and "in Numba's cache" in out.out
    r = subprocess.run([sys.executable, "-m", "fastmlp", "warmup", "--sizes", "784,0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "argument --sizes" in r.stderr


def test_hidden_option_sets_the_network_and_is_in_the_metrics(tmp_path, capsys):
    m = tmp_path / "m.json"
    assert cli.train_main(["--backend", "reference", "--preset", "original", "--iterations", "1",
                           "--hidden", "16,12", "--quiet", "--metrics-json", str(m)]) == 0
    metrics = json.loads(m.read_text())
    assert metrics["sizes"] == [784, 16, 12, 10] and metrics["hidden"] == [16, 12]
    for bad, fragment in (("0", "each in 1..65536"), ("x", "must be hidden layer widths like 128,64"),
                          ("16,", "must be hidden layer widths")):
        with pytest.raises(SystemExit) as exc:
            cli.train_main(["--hidden", bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "argument --hidden" in err and fragment in err, err


def test_a_long_compile_is_explained_on_stderr(capsys, monkeypatch):
    import time
    from fastmlp.jit import api
    monkeypatch.setattr(api, "COMPILE_NOTICE_S", 0.1)
    with api._compile_notice(True):
        time.sleep(0.5)
    err = capsys.readouterr().err
    assert "compiling the numba kernels for this kind of network: once per machine" in err
    assert "compiled in" in err
    with api._compile_notice(True):            # quick (cached): nothing said
        pass
    assert capsys.readouterr().err == ""


def test_peak_rss_is_this_process_own():
    """peak_rss_mb in the metrics is this process's peak, not that of the process that started
    it (which getrusage's ru_maxrss reports after fork and exec)."""
    big = np.ones(512 * 2**20 // 8)                        # this process now holds > 512 MB
    code = "import fastmlp.cli as c; print(c._peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout)
    assert 10 < child < 300 < cli._peak_rss_mb() and big[-1] == 1


def test_warmup_wide_adds_the_uint32_kind_for_each_dtype(monkeypatch, capsys):
    """`fastmlp warmup --wide` asks for one more kind per dtype: the same network with
    WIDE_INPUTS inputs, the fewest whose CSR has uint32 column indices."""
    from fastmlp.jit import csr, warmup
    asked = []
    monkeypatch.setattr(warmup, "warmup", lambda kinds, **kw: asked.append(list(kinds)) or 0.0)
    assert cli.main(["warmup", "--wide", "--sizes", "784,100,10"]) == 0
    assert asked == [[("float32", (784, 100, 10)), ("float64", (784, 100, 10)),
                      ("float32", (warmup.WIDE_INPUTS, 100, 10)),
                      ("float64", (warmup.WIDE_INPUTS, 100, 10))]]
    assert csr._index_dtype(warmup.WIDE_INPUTS) == np.uint32
    assert csr._index_dtype(warmup.WIDE_INPUTS - 1) == np.uint16


@pytest.mark.slow
def test_warmup_wide_kind_then_wide_data_loads_without_compiling(tmp_path):
    """After compile_kinds for the wide kind (float32) into an empty cache, a fresh process
    trains and predicts on a 70,000-feature scipy CSR without compiling anything: every Numba
    compile is refused (without the warm-up these calls would compile, and fail)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBA_DISABLE_JIT", None)
    r = subprocess.run([sys.executable, "-m", "fastmlp.jit.warmup", "float32",
                        "65537,72,36,10"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    script = (
        "import numpy as np, scipy.sparse as sp\n"
        "from fastmlp import init_params, jit as J\n"
        "from fastmlp.jit.api import _refuse_compiling\n"
        "X = sp.random(300, 70000, density=0.001, format='csr', dtype=np.float32, random_state=0)\n"
        "y = np.arange(300) % 10\n"
        "p = init_params((70000, 72, 36, 10), 'he', 0, np.float32)\n"
        "with _refuse_compiling():\n"
        "    C = J.from_scipy(X, np.float32)\n"
        "    assert C.indices.dtype == np.uint32\n"
        "    J.sgd_epoch(p, J.init_state(p, 'adam'), C, y, np.arange(300), 100, np.full(3, 1e-3),\n"
        "                optimizer='adam')\n"
        "    J.loss_and_grads(p, C, y)\n"
        "    J.predict(p, C)\n"
        "print('loaded')\n")
    run_loaded(script, env, timeout=300)
