"""A user's own table: the readers (every format, every fault, in small files written here), the
model file's description, and `fastmlp train/evaluate/predict --data` end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from fastmlp import cli, init_params
from fastmlp.params import Params, load_meta
from fastmlp.tabular import read_table

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    X, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(X / 16, columns=[f"p{i}" for i in range(64)])
    frame["label"] = NAMES[y]
    frame.to_csv(d / "digits.csv", index=False)
    frame.drop(columns="label").head(7).to_csv(d / "new.csv", index=False)
    np.savez(d / "digits.npz", X=X / 16, y=y)
    np.save(d / "digits.npy", np.column_stack([X / 16, y]))
    return d, X / 16, y


def test_every_format_reads_the_same_table(digits_files):
    d, X, y = digits_files
    Xc, yc, names = read_table(d / "digits.csv", "label")
    assert names == [f"p{i}" for i in range(64)] and list(yc) == list(NAMES[y])
    np.testing.assert_allclose(Xc, X)
    Xz, yz, _ = read_table(d / "digits.npz")
    Xn, yn, _ = read_table(d / "digits.npy")
    for A, b in ((Xz, yz), (Xn, yn)):
        np.testing.assert_array_equal(A, X)
        np.testing.assert_array_equal(b, y)
    Xf, none, _ = read_table(d / "new.csv", "label", labels=False)
    assert none is None and Xf.shape == (7, 64)


@pytest.mark.parametrize("content,target,message", [
    ("a,b\n1,x\n2,y\n", None, "say which column holds the labels"),
    ("a,b\n1,x\n2,y\n", "c", "no column 'c'"),
    ("a,b,label\n1,x,0\n2,y,1\n", "label", "feature columns must be numbers; 'b' is not"),
    ("a,label\n1,0\nnan,1\n", "label", "features must be finite numbers; got nan at row 1"),
    ("a,label\n1,0\n2,\n", "label", "every row needs a label; row 1"),
    ("a,label\n1,0\n", "label", "at least 2 rows"),
])
def test_bad_csv_files_say_what_is_wrong(tmp_path, content, target, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_table(path, target)


def test_bad_files_of_other_kinds(tmp_path):
    np.savez(tmp_path / "no_y.npz", X=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="needs an array 'X' of features and the labels under 'y'"):
        read_table(tmp_path / "no_y.npz")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match="must be a 2-D array"):
        read_table(tmp_path / "flat.npy")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match="must be one of .csv, .parquet, .npz, .npy"):
        read_table(tmp_path / "x.txt")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="not a readable .npz"):
        read_table(tmp_path / "broken.npz")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        read_table(tmp_path / "missing.csv", "label")


def test_model_description_round_trip(tmp_path):
    p = init_params((4, 3, 2), "he", 0, np.float32)
    meta = {"kind": "table", "classes": ["a", "b"], "feature_names": list("wxyz"), "n_features": 4}
    p.save(tmp_path / "m.npz", meta=meta)
    assert load_meta(tmp_path / "m.npz") == meta
    assert Params.load(tmp_path / "m.npz").sizes == (4, 3, 2)
    p.save(tmp_path / "plain.npz")
    assert load_meta(tmp_path / "plain.npz") == {}


def test_train_evaluate_predict_on_a_csv(digits_files, capsys, tmp_path):
    d, X, y = digits_files
    code = cli.main(["train", "--data", str(d / "digits.csv"), "--target", "label", "--epochs",
                     "40", "--hidden", "32", "--quiet", "--save", str(tmp_path / "m.npz"),
                     "--metrics-json", str(tmp_path / "m.json"), "--history-csv",
                     str(tmp_path / "h.csv"), "--plot-dir", str(tmp_path / "figs")])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("test accuracy ")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["test_accuracy"] > 0.9 and metrics["sizes"] == [64, 32, 10]
    assert metrics["classes"] == sorted(NAMES.tolist()) and metrics["test_rows"] == 360
    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history.columns) == ["epoch", "loss", "seconds", "total_seconds"]
    assert len(history) == 40 and history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["confusion.png", "curves.png"]
    meta = load_meta(tmp_path / "m.npz")
    assert meta["feature_names"][:2] == ["p0", "p1"] and meta["target"] == "label"
    code = cli.main(["evaluate", str(tmp_path / "m.npz"), "--data", str(d / "digits.csv")])
    out = capsys.readouterr().out
    assert code == 0 and float(out.split()[1].rstrip("%")) > 90
    accuracy = float(out.split()[1].rstrip("%"))
    code = cli.main(["predict", str(tmp_path / "m.npz"), "--data", str(d / "new.csv")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[0] == "row,prediction" and len(lines) == 8
    # the whole table (its label column left out): the accuracy evaluate reported
    code = cli.main(["predict", str(tmp_path / "m.npz"), "--data", str(d / "digits.csv")])
    pred = [line.split(",")[1] for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert code == 0 and len(pred) == len(y)
    assert round(100 * np.mean(np.array(pred) == NAMES[y]), 2) == accuracy
    assert pred[:7] == [line.split(",")[1] for line in lines[1:]]


def test_own_data_options_are_checked(digits_files, capsys, tmp_path):
    d, _, _ = digits_files
    for argv, message in (
            (["--data", str(d / "digits.csv"), "--target", "label", "--augment"],
             "--augment: option(s) of the MNIST recipes"),
            (["--data", str(d / "digits.csv"), "--target", "label", "--optimizer", "gd"],
             "--optimizer gd is full-batch"),
            (["--data", str(d / "digits.csv")], "say which column holds the labels"),
            (["--epochs", "1", "--target", "label"], "--target is an option of --data")):
        code = cli.main(["train", "--quiet", *argv])
        assert code != 0 and message in capsys.readouterr().err, argv
    p = init_params((784, 10), "he", 0, np.float32)
    p.save(tmp_path / "mnist.npz")
    code = cli.main(["predict", str(tmp_path / "mnist.npz"), "--data", str(d / "new.csv")])
    assert code != 0 and "an MNIST model" in capsys.readouterr().err


def test_mnist_history_csv(tmp_path, capsys):
    code = cli.main(["train", "--epochs", "2", "--quiet", "--val-fraction", "0.1",
                     "--history-csv", str(tmp_path / "h.csv")])
    assert code == 0
    h = pd.read_csv(tmp_path / "h.csv")
    assert list(h.columns) == ["epoch", "step", "loss", "train_accuracy", "val_loss",
                               "val_accuracy", "seconds", "total_seconds"]
    assert list(h["epoch"]) == [1, 2] and (h["seconds"] > 0).all()
    assert np.isclose(h["seconds"].sum(), h["total_seconds"].iloc[-1])
