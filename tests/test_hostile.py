"""Hostile input: every size is bounded before it is allocated, every wait has a deadline, no
output replaces what it should not, and no Python call crashes the process. One test (or a few)
per class of fault; every file is one the test writes itself, small."""

import gzip
import http.server
import io
import json
import multiprocessing
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import fastmlp
from fastmlp import cli, data, init_params, jit as J, reference as R
from fastmlp._io import atomic_write
from fastmlp.images import MAX_PIXELS, image_to_mnist
from fastmlp.params import Params

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FASTMLP_DATA", ROOT.parent / "shared" / "data" / "mnist"))


def _peak_rss_mb(code: str, *args) -> tuple[int, str, float]:
    """Run code in a fresh interpreter; (exit status, stderr, its peak RSS in MB)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
               "capture_output=True, text=True); sys.stderr.write(r.stderr); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-c", code, *args],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stderr, int(r.stdout.strip().splitlines()[-1]) / 1024


# ----------------------------------------------------------------------------------------------
# resource bombs: data files


def _gzip_bomb(path: Path, header: bytes, zeros: int) -> None:
    """A .gz of a header and `zeros` zero bytes, written in a stream (it stays small)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    with open(path, "wb") as fh:
        fh.write(comp.compress(header))
        for _ in range(zeros >> 20):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())


def test_a_gzip_bomb_is_refused_within_bounded_memory(tmp_path):
    d = tmp_path / "bomb"
    d.mkdir()
    # promises the 10,000 test images (7.8 MB), unpacks to 512 MB
    _gzip_bomb(d / "t10k-images-idx3-ubyte.gz", struct.pack(">HBBIII", 0, 8, 3, 10000, 28, 28), 1 << 29)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">HBBI", 0, 8, 1, 10000) + bytes(10000)))
    assert (d / "t10k-images-idx3-ubyte.gz").stat().st_size < 2 << 20
    code = ("import sys, fastmlp\ntry:\n    fastmlp.load_mnist('test', sys.argv[1])\n"
            "except ValueError as e:\n    sys.exit(str(e))")
    status, err, mb = _peak_rss_mb(code, str(d))
    assert status != 0 and "unpacks to more than 7840016 bytes" in err, err
    assert mb < 250, f"peak RSS {mb:.0f} MB"


def test_idx_files_of_unknown_names_are_bounded_too(tmp_path, monkeypatch):
    raw = tmp_path / "big-idx-ubyte"
    with open(raw, "wb") as fh:            # sparse: takes no disk
        fh.truncate(data.MAX_IDX_BYTES + 1)
    with pytest.raises(ValueError, match=f"at most {data.MAX_IDX_BYTES} expected"):
        data.read_idx(raw)
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 1 << 20)
    _gzip_bomb(tmp_path / "x.gz", struct.pack(">HBBI", 0, 8, 1, 4 << 20), 4 << 20)
    with pytest.raises(ValueError, match="unpacks to more than 1048576 bytes"):
        data.read_idx(tmp_path / "x.gz")


def test_labels_are_range_checked_without_checksums(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">HBBIII", 0, 8, 3, 2, 28, 28) + bytes(1568))
    labels = np.array([1.0, np.nan], ">f4").tobytes()
    (d / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 0x0D, 1, 2) + labels)
    with pytest.raises(ValueError, match="labels must be whole numbers in 0..9; got nan at row 1"):
        fastmlp.load_mnist("test", d, verify=False)


def test_csv_with_a_million_columns_or_a_huge_line_is_refused_before_pandas(tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(["1"] * 1_000_000) + "\n")
    t = time.perf_counter()
    with pytest.raises(ValueError, match="longer than 65536 bytes"):
        data.read_csv(wide)
    long_line = tmp_path / "long.csv"
    row = ",".join(["1"] * 785) + "\n"
    long_line.write_text(row + "1," + "9" * 200_000 + "\n")
    with pytest.raises(ValueError, match="longer than 65536 bytes"):
        data.read_csv(long_line)
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as fh:           # sparse: takes no disk
        fh.truncate(data.MAX_CSV_BYTES + 1)
    with pytest.raises(ValueError, match=f"huge.csv: the CSV file is {data.MAX_CSV_BYTES + 1} bytes"):
        data.read_csv(huge)
    short = tmp_path / "short.csv"
    short.write_text(",".join(["1"] * 2000) + "\n")
    with pytest.raises(ValueError, match="expected 785 .*got 2000 in the first line"):
        data.read_csv(short)
    assert time.perf_counter() - t < 5


def test_a_headerless_csv_with_a_byte_order_mark_keeps_its_first_image(tmp_path):
    rows = [[k] + [k * 10] * 784 for k in range(3)]
    text = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    X, y = data.read_csv(p)
    assert y.tolist() == [0, 1, 2] and X[2, 0] == 20


# ----------------------------------------------------------------------------------------------
# resource bombs: model files


def _npy(arr_or_header: np.ndarray | dict, payload: bytes = b"") -> bytes:
    buf = io.BytesIO()
    if isinstance(arr_or_header, dict):
        np.lib.format.write_array_header_1_0(buf, arr_or_header)
        buf.write(payload)
    else:
        np.lib.format.write_array(buf, arr_or_header)
    return buf.getvalue()


def _model_zip(path: Path, members: dict, compress=zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, content in members.items():
            zf.writestr(name + ".npy", content)


def _valid_members(sizes=(784, 8, 10), dtype=np.float32):
    p = init_params(sizes, dtype=dtype)
    m = {"format": _npy(np.asarray("fastmlp.Params/1")), "dtype": _npy(np.asarray(np.dtype(dtype).name)),
         "sizes": _npy(np.asarray(sizes, np.int64))}
    for i, (W, b) in enumerate(zip(p.weights, p.biases)):
        m[f"W{i}"], m[f"b{i}"] = _npy(W), _npy(b)
    return m


def test_a_model_file_whose_headers_claim_terabytes_is_refused_before_reading(tmp_path):
    m = _valid_members()
    m["W0"] = _npy({"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**4)}, b"\0" * 64)
    _model_zip(tmp_path / "tb.npz", m)
    with pytest.raises(ValueError, match=r"tb.npz: .*W0 must be float32 of shape \(784, 8\).*\(1000000000, 10000\)"):
        Params.load(tmp_path / "tb.npz")
    m = _valid_members()
    m["sizes"] = _npy(np.asarray([65536, 65536, 65536], np.int64))
    _model_zip(tmp_path / "wide.npz", m)
    with pytest.raises(ValueError, match="parameters; at most 100000000"):
        Params.load(tmp_path / "wide.npz")


def test_a_model_file_whose_array_unpacks_to_far_more_is_read_within_bounded_memory(tmp_path):
    m = _valid_members()
    # a W0 whose header says (784, 8) but whose member unpacks to 512 MB: np.load reads the shape
    m["W0"] = _npy({"descr": "<f4", "fortran_order": False, "shape": (784, 8)}, bytes(1 << 29))
    _model_zip(tmp_path / "bomb.npz", m)
    assert (tmp_path / "bomb.npz").stat().st_size < 4 << 20
    code = ("import sys; from fastmlp import Params\np = Params.load(sys.argv[1])\n"
            "print(p.sizes, file=sys.stderr)")
    status, err, mb = _peak_rss_mb(code, str(tmp_path / "bomb.npz"))
    assert mb < 250, f"peak RSS {mb:.0f} MB; {err}"


def test_model_files_that_are_not_usable_are_refused_naming_the_file(tmp_path):
    p = init_params((784, 8, 10), dtype=np.float32)
    m = _valid_members()
    W = p.weights[0].copy()
    W[3, 2] = np.nan
    m["W0"] = _npy(W)
    _model_zip(tmp_path / "nan.npz", m)
    with pytest.raises(ValueError, match=r"nan.npz: not a usable fastmlp model: parameters must be finite; W0 holds nan at flat index 26"):
        Params.load(tmp_path / "nan.npz")
    m = _valid_members()
    m["W0"] = _npy(p.weights[0].astype(">f4"))
    _model_zip(tmp_path / "big_endian.npz", m)
    with pytest.raises(ValueError, match=r"big_endian.npz: .*W0 must be float32 .*the file says >f4"):
        Params.load(tmp_path / "big_endian.npz")
    m = _valid_members()
    m["b1"] = _npy(np.zeros(10, np.int64))
    _model_zip(tmp_path / "ints.npz", m)
    with pytest.raises(ValueError, match=r"ints.npz: .*b1 must be float32 .*<i8"):
        Params.load(tmp_path / "ints.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "text.npz").write_text("not a model\n")
    (tmp_path / "folder.npz").mkdir()
    os.mkfifo(tmp_path / "fifo.npz")
    for name, msg in (("array.npy", "not a fastmlp model file"), ("text.npz", "not a fastmlp model file"),
                      ("folder.npz", "a directory, not a model file"),
                      ("fifo.npz", "not a regular file")):
        with pytest.raises(ValueError, match=f"{name}: {msg}"):
            Params.load(tmp_path / name)


def test_a_model_archive_listing_many_entries_is_refused_before_they_are_parsed(tmp_path):
    with zipfile.ZipFile(tmp_path / "many.npz", "w") as zf:
        for i in range(5000):
            zf.writestr(f"x{i}.npy", b"")
    with pytest.raises(ValueError, match="many.npz: .*lists 5000 entries; a model has at most 132"):
        Params.load(tmp_path / "many.npz")


def test_params_refuse_non_finite_big_endian_and_non_float_arrays():
    p = init_params((784, 8, 10))
    bad = [W.copy() for W in p.weights]
    bad[1][0, 0] = np.inf
    with pytest.raises(ValueError, match="parameters must be finite; W1 holds inf at flat index 0"):
        Params(bad, p.biases)
    with pytest.raises(TypeError, match="machine's byte order; W0 is >f4"):
        Params([p.weights[0].astype(">f4"), p.weights[1]], p.biases)
    with pytest.raises(TypeError, match="W0 is <i8"):
        Params([p.weights[0].astype(np.int64), p.weights[1]], p.biases)


_SAVED = {}


def _saved_model_bytes():
    if "m" not in _SAVED:
        buf = io.BytesIO()
        p = init_params((784, 8, 10), seed=1)
        arrays = {f"W{i}": W for i, W in enumerate(p.weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(p.biases)})
        np.savez(buf, format=np.asarray("fastmlp.Params/1"), dtype=np.asarray("float32"),
                 sizes=np.asarray(p.sizes, np.int64), **arrays)
        _SAVED["m"] = buf.getvalue()
    return _SAVED["m"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 10**9))
def test_fuzz_the_model_reader(tmp_path, flips, cut):
    content = bytearray(_saved_model_bytes())
    for pos, byte in flips:
        content[pos % len(content)] = byte
    if cut % 3 == 0:
        content = content[:cut % len(content)]
    f = tmp_path / "fuzz.npz"
    f.write_bytes(bytes(content))
    try:
        p = Params.load(f)
    except ValueError as exc:
        assert str(exc).startswith(str(f))
    else:
        assert p.sizes == (784, 8, 10) and p.all_finite()


# ----------------------------------------------------------------------------------------------
# resource bombs: images


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header says w x h and which holds no pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_huge_images_are_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (9000, 9000)).save(big, optimize=False)     # 81 M pixels, a small file
    assert big.stat().st_size < 1 << 20
    for path in (big,):
        with pytest.raises(ValueError, match=f"9000 x 9000 pixels; at most {MAX_PIXELS}"):
            image_to_mnist(path)
    _png_header_only(tmp_path / "huge.png", 30000, 30000)
    with pytest.raises(ValueError, match="huge.png: not a readable image"):
        image_to_mnist(tmp_path / "huge.png")
    code = ("import sys\nfrom fastmlp.images import image_to_mnist\ntry:\n"
            "    image_to_mnist(sys.argv[1])\nexcept ValueError as e:\n    sys.exit(str(e))")
    status, err, mb = _peak_rss_mb(code, str(big))
    assert status != 0 and mb < 250, (err, mb)


def test_only_raster_formats_and_regular_files_are_read(tmp_path):
    eps = tmp_path / "digit.eps"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n")
    with pytest.raises(ValueError, match="digit.eps: not a readable image of a supported format"):
        image_to_mnist(eps)
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match="pipe.png: not an image file \\(not a regular file\\)"):
        image_to_mnist(tmp_path / "pipe.png")


def test_exif_rotation_is_applied(mnist_test, tmp_path):
    digit = (mnist_test[0][0].reshape(28, 28)).astype(np.uint8)
    upright = Image.fromarray(digit).resize((112, 112))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 3                       # Orientation: rotated 180 degrees
    upright.rotate(180).save(tmp_path / "rotated.png", exif=exif.tobytes())
    a, b = image_to_mnist(tmp_path / "upright.png"), image_to_mnist(tmp_path / "rotated.png")
    assert np.array_equal(a, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_the_image_reader(tmp_path, flips):
    buf = io.BytesIO()
    img = np.zeros((40, 30), np.uint8)
    img[8:30, 12:18] = 255
    Image.fromarray(img).save(buf, format="PNG")
    content = bytearray(buf.getvalue())
    for pos, byte in flips:
        content[pos % len(content)] = byte
    f = tmp_path / "fuzz.png"
    f.write_bytes(bytes(content))
    try:
        x = image_to_mnist(f)
    except ValueError as exc:
        assert str(exc).startswith(str(f))
    else:
        assert x.shape == (784,) and x.dtype == np.uint8


# ----------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("argv, fragment", [
    (["--iterations", "1000000000"], "argument --iterations: must be an integer in 1..1000000; got 1000000000"),
    (["--epochs", str(10**30)], "argument --epochs: must be an integer in 1..100000; got 1" + "0" * 30),
])
def test_run_lengths_are_bounded_at_the_boundary(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        cli.train_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_library_run_lengths_are_bounded_too(mnist_train):
    from fastmlp.train import Config, fit
    with pytest.raises(ValueError, match="epochs must be an integer in 1..100000"):
        Config(epochs=10**30).check()
    with pytest.raises(ValueError, match=r"epochs x steps per epoch must be at most 10000000; got 100000 x 200"):
        fit(Config(epochs=100_000, batch_size=1), mnist_train[0][:200], mnist_train[1][:200],
            progress=False)
    for backend in (R, J):
        with pytest.raises(ValueError, match=f"batch size must be an integer in 1..2147483647; got {10**30}"):
            backend.sgd_epoch(init_params(), [], backend.prepare(mnist_train[0][:4], np.float32),
                              mnist_train[1][:4], np.arange(4), 10**30, [0.1])


# ----------------------------------------------------------------------------------------------
# downloads


class _Endless(http.server.BaseHTTPRequestHandler):
    slow = False

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"x" if self.slow else bytes(1 << 16))
                self.wfile.flush()
                if self.slow:
                    time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a):
        pass


class _Slow(_Endless):
    slow = True


@pytest.mark.parametrize("handler, limit, match", [
    (_Endless, dict(MAX_DOWNLOAD_BYTES=2 << 20), "the download exceeded 2097152 bytes"),
    (_Slow, dict(DOWNLOAD_DEADLINE=1.5), "the download took longer than 1.5 s"),
])
def test_downloads_have_a_size_cap_and_a_deadline(tmp_path, monkeypatch, handler, limit, match):
    for k, v in limit.items():
        monkeypatch.setattr(data, k, v)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = time.perf_counter()
        with pytest.raises(ValueError, match=match):
            data.download_file(f"http://127.0.0.1:{server.server_port}/x.gz", tmp_path / "x.gz",
                               progress=False, timeout=5)
        assert time.perf_counter() - t < 10
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []                 # no .part left


def test_mirrors_are_https():
    for spec in data.DATASETS.values():
        assert all(m.startswith("https://") for m in spec["mirrors"])


# ----------------------------------------------------------------------------------------------
# outputs


def _train(argv, capsys):
    code = cli.train_main(["--preset", "original", "--iterations", "1", "--quiet", *argv])
    return code, capsys.readouterr().err


def test_outputs_that_are_not_regular_files_are_refused_before_training(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    for argv, fragment in (
            (["--save", str(tmp_path / "fifo")], "exists and is not a regular file"),
            (["--metrics-json", "/dev/null"], "exists and is not a regular file"),
            (["--save", str(tmp_path / "dir")], "must be a file path; got the directory"),
            (["--plot-dir", str(tmp_path / "file")], "--plot-dir must be a directory"),
            (["--save", str(tmp_path / "m"), "--metrics-json", str(tmp_path / "m")],
             "--save and --metrics-json name the same file"),
            (["--save", str(tmp_path / "dir" / "curves.png"), "--plot-dir", str(tmp_path / "dir")],
             "name the same file")):
        t = time.perf_counter()
        code, err = _train(argv, capsys)
        assert code == 1 and fragment in err and len(err.strip().splitlines()) == 1, err
        assert time.perf_counter() - t < 5                 # before loading data or training
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "file"]


def test_a_trailing_slash_is_a_directory_not_a_file_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--save", str(tmp_path / "newdir") + "/"])
    assert exc.value.code == 2 and "must be a file path; got the directory path" in capsys.readouterr().err
    assert not (tmp_path / "newdir").exists()


def test_outputs_are_written_through_symlinks_with_the_usual_permissions(tmp_path, capsys):
    target = tmp_path / "real.npz"
    target.write_text("old")
    (tmp_path / "link.npz").symlink_to(target)
    umask = os.umask(0o027)
    try:
        code, err = _train(["--save", str(tmp_path / "link.npz"), "--metrics-json",
                            str(tmp_path / "m.json")], capsys)
    finally:
        os.umask(umask)
    assert code == 0, err
    assert (tmp_path / "link.npz").is_symlink() and Params.load(target).sizes == (784, 72, 36, 10)
    for p in (target, tmp_path / "m.json"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert json.loads((tmp_path / "m.json").read_text())["iterations"] == 1


def test_a_full_disk_names_the_path_and_leaves_nothing(tmp_path):
    def full(fh):
        fh.write(b"x")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError) as exc:
        atomic_write(tmp_path / "out.json", full)
    assert exc.value.filename == str(tmp_path / "out.json") and exc.value.strerror.startswith("No space")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_figure_says_what_was_saved(tmp_path, capsys, monkeypatch):
    from fastmlp import plots
    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(plots, "curves", broken)
    code, err = _train(["--save", str(tmp_path / "m.npz"), "--plot-dir", str(tmp_path / "figs")], capsys)
    assert code == 1 and "the figures could not be written" in err and str(tmp_path / "m.npz") in err
    assert Params.load(tmp_path / "m.npz").sizes == (784, 72, 36, 10)


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys):
    out = tmp_path / "model.npz"

    def slow_write(fh):
        fh.write(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setitem(cli.COMMANDS, "train", lambda args: atomic_write(out, slow_write))
    assert cli.run("train", None, "fastmlp train") == 143
    assert "terminated; nothing half-written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not cli._on_sigterm       # handler restored


def test_predict_refuses_a_model_with_other_than_ten_classes(tmp_path, capsys):
    init_params((784, 8, 12)).save(tmp_path / "m12.npz")
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "d.png")
    assert cli.main(["predict", str(tmp_path / "m12.npz"), str(tmp_path / "d.png")]) == 1
    assert "maps 784 inputs to 12 classes; digit images need 784 -> 10" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the library


def test_csr_arrays_from_to_csr_are_read_only(mnist_train):
    C = J.prepare(mnist_train[0][:50], np.float32)
    for name in ("indptr", "indices", "values", "lut"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(C, name)[0] = 1
    p = init_params()
    assert np.array_equal(J.predict(p, C), R.predict(p, R.prepare(mnist_train[0][:50], np.float32)))


@pytest.mark.parametrize("backend", [R, J], ids=["reference", "numba"])
def test_read_only_params_and_string_learning_rates_are_refused_at_once(mnist_train, backend):
    p = init_params((784, 8, 10))
    X = backend.prepare(mnist_train[0][:8], np.float32)
    y = mnist_train[1][:8]
    frozen = p.copy()
    frozen.weights[1].setflags(write=False)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="params must be writable .*; W1 is read-only"):
        backend.gd_steps(frozen, [], X, y, [0.1])
    with pytest.raises(ValueError, match="params must be writable"):
        backend.update(frozen, p.zeros_like(), [], 0.1)
    assert time.perf_counter() - t < 2                     # no compiling for read-only arrays
    for lrs in ("0.1", ["0.1"], [True]):
        with pytest.raises(TypeError, match="learning rates must be numbers"):
            backend.gd_steps(p.copy(), [], X, y, lrs)


def _predict_in_child(args):
    import numpy as np
    from fastmlp import init_params, jit
    X = np.asarray(args, dtype=np.float32).reshape(1, 784)
    return int(jit.predict(init_params(seed=3), X)[0])


def test_fork_after_a_jitted_call_fails_clearly_or_works(mnist_test):
    """A forked child of a process that ran a parallel kernel either works (a fork-safe
    threading layer) or gets the numba backend's clear RuntimeError; it never dies or hangs.
    Spawned workers, and joblib's loky workers, work and agree with the parent."""
    X = mnist_test[0][:3].astype(np.float32) / np.float32(255)
    p = init_params(seed=3)
    want = J.predict(p, X).tolist()
    rows = [x.tolist() for x in X]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        try:
            got = pool.map(_predict_in_child, rows, chunksize=1)
        except RuntimeError as exc:
            assert "cannot run in a process forked after it ran" in str(exc)
        else:
            assert got == want
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_predict_in_child, rows, chunksize=1) == want
    import joblib
    got = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(_predict_in_child)(r) for r in rows)
    assert got == want
