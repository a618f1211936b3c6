"""The data layer: the real files, and small broken files written here to prove every error."""

import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

import fastmlp
from fastmlp import data

SHARED = Path(os.environ.get("FASTMLP_DATA", "../shared/data/mnist"))


# ----------------------------------------------------------------------------------------------
# the real files


def test_real_train_set_facts(mnist_train):
    X, y = mnist_train
    assert X.shape == (60000, 784) and X.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.uint8
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert round(X.mean() / 255, 4) == 0.1307
    assert round(X.std() / 255, 4) == 0.3081


def test_real_test_set_facts(mnist_test):
    X, y = mnist_test
    assert X.shape == (10000, 784)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_data_dir_is_the_only_place_looked(isolated_env):
    X, y = fastmlp.load_mnist("test", data_dir=SHARED)
    assert X.shape == (10000, 784)
    with pytest.raises(data.DataNotFoundError) as err:
        fastmlp.load_mnist("test", data_dir=isolated_env / "empty", download=False)
    assert str(isolated_env / "empty") in str(err.value)


def test_env_then_cache_order(isolated_env, monkeypatch):
    cache = isolated_env / "cache" / "fastmlp"
    _write_idx_pair(cache, "test", n=3, label=7)
    X, y = fastmlp.load_mnist("test", verify=False, download=False)   # from the cache
    assert y.tolist() == [7, 7, 7]
    monkeypatch.setenv("FASTMLP_DATA", str(SHARED))                   # the env var wins
    X, y = fastmlp.load_mnist("test", download=False)
    assert len(y) == 10000


def test_raw_uncompressed_idx_is_read(isolated_env):
    d = isolated_env / "raw"
    d.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / stem).write_bytes(gzip.decompress((SHARED / (stem + ".gz")).read_bytes()))
    X, y = fastmlp.load_mnist("test", data_dir=d)      # raw files pass the canonical MD5 too
    Xr, yr = fastmlp.load_mnist("test", data_dir=SHARED)
    assert np.array_equal(X, Xr) and np.array_equal(y, yr)


def test_offline_error_names_every_place(isolated_env, monkeypatch):
    monkeypatch.setenv("FASTMLP_DATA", str(isolated_env / "nowhere"))
    monkeypatch.setitem(data.DATASETS["mnist"], "mirrors", ("http://127.0.0.1:9/",))
    with pytest.raises(data.DataNotFoundError) as err:
        fastmlp.load_mnist("train", progress=False)
    msg = str(err.value)
    assert str(isolated_env / "nowhere") in msg
    assert str(isolated_env / "cache" / "fastmlp") in msg
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in msg
    assert "FASTMLP_DATA" in msg and "data_dir" in msg


# ----------------------------------------------------------------------------------------------
# IDX faults, each in a small file written here


def _idx(arr, type_byte=0x08):
    arr = np.asarray(arr)
    header = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_pair(d, split, n=3, label=1):
    d.mkdir(parents=True, exist_ok=True)
    imgs = np.zeros((n, 28, 28), np.uint8)
    imgs[:, 10:18, 12:16] = 200
    (d / (data.FILES[(split, "images")] + ".gz")).write_bytes(gzip.compress(_idx(imgs)))
    (d / (data.FILES[(split, "labels")] + ".gz")).write_bytes(gzip.compress(_idx(np.full(n, label))))


def test_parse_idx_roundtrip():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(data.parse_idx(_idx(a)), a)


@pytest.mark.parametrize("content, fault", [
    (b"\x00\x00", "truncated IDX file"),
    (b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x00", "wrong magic number"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x00\x00", "wrong data type byte"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX file"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x00", "truncated IDX file"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x00\x00", "sizes in the header do not match"),
])
def test_idx_faults_name_file_and_fault(tmp_path, content, fault):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        data.read_idx(path)
    assert fault in str(err.value) and str(path) in str(err.value)


def test_not_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(_idx(np.zeros(3)))
    with pytest.raises(ValueError, match="not a gzip file"):
        data.read_idx(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(300)))[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        data.read_idx(path)


def test_checksum_mismatch_names_file(isolated_env):
    d = isolated_env / "fake"
    _write_idx_pair(d, "test")
    with pytest.raises(ValueError) as err:
        fastmlp.load_mnist("test", data_dir=d)
    assert "checksum mismatch" in str(err.value) and "t10k-images-idx3-ubyte.gz" in str(err.value)


def test_counts_differ(isolated_env):
    d = isolated_env / "fake"
    _write_idx_pair(d, "test", n=3)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.ones(4))))
    with pytest.raises(ValueError, match="image and label counts differ: 3 images, 4 labels"):
        fastmlp.load_mnist("test", data_dir=d, verify=False)


def test_labels_out_of_range(isolated_env):
    d = isolated_env / "fake"
    _write_idx_pair(d, "test", n=3)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.array([1, 12, 3]))))
    with pytest.raises(ValueError, match=r"labels must be in 0..9; got 12 at row 1"):
        fastmlp.load_mnist("test", data_dir=d, verify=False)


def test_images_must_be_28x28(isolated_env):
    d = isolated_env / "fake"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((2, 10, 10)))))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.ones(2))))
    with pytest.raises(ValueError, match=r"must be 28x28"):
        fastmlp.load_mnist("test", data_dir=d, verify=False)


# ----------------------------------------------------------------------------------------------
# CSV


def _csv_rows(n=4):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    pixels = rng.integers(0, 256, (n, 784))
    return labels, pixels


def test_csv_kaggle_layout(tmp_path):
    labels, pixels = _csv_rows()
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    lines = [header] + [",".join(map(str, [l, *p])) for l, p in zip(labels, pixels)]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    X, y = data.read_csv(path)
    assert np.array_equal(X, pixels) and np.array_equal(y, labels)
    assert X.dtype == np.uint8 and y.dtype == np.uint8


def test_csv_headerless_found_by_load_mnist(isolated_env):
    labels, pixels = _csv_rows()
    d = isolated_env / "csv"
    d.mkdir()
    (d / "mnist_test.csv").write_text(
        "\n".join(",".join(map(str, [l, *p])) for l, p in zip(labels, pixels)) + "\n")
    X, y = fastmlp.load_mnist("test", data_dir=d)
    assert np.array_equal(X, pixels) and np.array_equal(y, labels)


@pytest.mark.parametrize("mutate, fault", [
    (lambda r: r[:-1], "wrong number of columns: expected 785"),
    (lambda r: r[:5] + ["abc"] + r[6:], "non-numeric or NaN cell at row 2, column 6"),
    (lambda r: r[:5] + ["NaN"] + r[6:], "non-numeric or NaN cell at row 2, column 6"),
    (lambda r: r[:5] + ["256"] + r[6:], "pixels must be in 0..255; got 256 at row 2, column 6"),
    (lambda r: r[:5] + ["-1"] + r[6:], "pixels must be in 0..255; got -1"),
    (lambda r: ["11"] + r[1:], "labels must be in 0..9; got 11 at row 1"),
    (lambda r: r[:5] + ["2.5"] + r[6:], "must be a whole number"),
])
def test_csv_faults(tmp_path, mutate, fault):
    labels, pixels = _csv_rows(3)
    rows = [[str(v) for v in [l, *p]] for l, p in zip(labels, pixels)]
    rows[1] = mutate(rows[1])
    if fault.startswith("wrong number"):
        rows = [mutate(r) for r in rows]
    path = tmp_path / "mnist_train.csv"
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(ValueError) as err:
        data.read_csv(path)
    assert fault in str(err.value) and str(path) in str(err.value)


def test_csv_empty(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="empty CSV"):
        data.read_csv(path)


# ----------------------------------------------------------------------------------------------
# download: a server on loopback plays the mirror


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_download_tries_mirrors_in_turn_and_verifies(isolated_env, mirror, monkeypatch):
    root, url = mirror
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / (stem + ".gz")).write_bytes((SHARED / (stem + ".gz")).read_bytes())
    monkeypatch.setitem(data.DATASETS["mnist"], "mirrors", ("http://127.0.0.1:9/", url))
    target = isolated_env / "dl"
    X, y = fastmlp.load_mnist("test", data_dir=target, progress=False)
    assert len(y) == 10000
    assert sorted(p.name for p in target.iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                        "t10k-labels-idx1-ubyte.gz"]


def test_download_with_bad_checksum_leaves_nothing(isolated_env, mirror, monkeypatch):
    root, url = mirror
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not mnist at all"))
    monkeypatch.setitem(data.DATASETS["mnist"], "mirrors", (url,))
    target = isolated_env / "dl"
    with pytest.raises(data.DataNotFoundError, match="checksum mismatch"):
        fastmlp.load_mnist("test", data_dir=target, progress=False)
    assert list(target.iterdir()) == []


def test_concurrent_downloads_both_end_with_a_good_file(isolated_env, mirror):
    """Two processes download into the same place at once; both succeed, one good file stays."""
    import subprocess
    import sys
    root, url = mirror
    payload = (SHARED / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (root / "labels.gz").write_bytes(payload)
    dest = isolated_env / "dl" / "t10k-labels-idx1-ubyte.gz"
    md5 = data.DATASETS["mnist"]["md5"]["t10k-labels-idx1-ubyte"]
    code = ("import sys; from fastmlp import data; "
            "data.download_file(sys.argv[1], sys.argv[2], expected_md5=sys.argv[3], progress=False)")
    procs = [subprocess.Popen([sys.executable, "-c", code, url + "labels.gz", str(dest), md5])
             for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert hashlib.md5(gzip.decompress(dest.read_bytes())).hexdigest() == md5
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_from_data_dir_uses_its_own_checksums(isolated_env):
    d = isolated_env / "fashion"
    _write_idx_pair(d, "test")
    with pytest.raises(ValueError, match="canonical fashion"):
        fastmlp.load_mnist("test", data_dir=d, dataset="fashion")
    X, y = fastmlp.load_mnist("test", data_dir=d, dataset="fashion", verify=False)
    assert X.shape == (3, 784)


def test_fashion_search_path_includes_debian_location(isolated_env, monkeypatch):
    monkeypatch.setenv("FASTMLP_FASHION_DATA", str(isolated_env / "env"))
    dirs = [str(p) for p in data.search_dirs("fashion")]
    assert dirs == [str(isolated_env / "env"), str(isolated_env / "cache" / "fastmlp" / "fashion"),
                    "/usr/share/datasets/fashion-mnist"]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion_real_files(isolated_env):
    X, y = fastmlp.load_mnist("test", dataset="fashion", download=False)
    assert X.shape == (10000, 784) and np.bincount(y).tolist() == [1000] * 10


def test_unknown_split_and_dataset():
    with pytest.raises(ValueError, match="split must be one of train, test; got 'val'"):
        fastmlp.load_mnist("val")
    with pytest.raises(ValueError, match="dataset must be one of mnist, fashion; got 'kmnist'"):
        fastmlp.load_mnist("train", dataset="kmnist")
