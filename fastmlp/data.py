"""MNIST and Fashion-MNIST: readers, checksums, the search path and the download.

    X, y = load_mnist("train")                 # X uint8 (60000, 784), y uint8 (60000,)
    X, y = load_mnist("test", dataset="fashion")

Where the files are looked for, in order (the first place that has them wins):

1. ``data_dir`` when given (and then *only* there: a download also goes there);
2. the environment variable ``FASTMLP_DATA`` (``FASTMLP_FASHION_DATA`` for Fashion-MNIST);
3. the user cache ``$XDG_CACHE_HOME/fastmlp`` or ``~/.cache/fastmlp``
   (``.../fastmlp/fashion`` for Fashion-MNIST);
4. Fashion-MNIST only: Debian's ``/usr/share/datasets/fashion-mnist`` (package
   ``dataset-fashion-mnist``);
5. a download from the public mirrors, tried in turn, into the user cache (or ``data_dir``).

In each directory the IDX files are looked for by their standard names, gzip-compressed
(``train-images-idx3-ubyte.gz``) or raw (``train-images-idx3-ubyte``); then a CSV file
(``mnist_train.csv`` / ``mnist_test.csv`` or ``train.csv`` / ``test.csv``), either in the Kaggle
layout (header row ``label,pixel0,...,pixel783``) or headerless with the label first.

Every IDX file with a standard name is checked against the canonical MD5 of its uncompressed
content. Every fault in a file is a ``ValueError`` that names the file and the fault. This module
depends on nothing else in the package but the atomic-write helper (``_io``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ._io import atomic_write

__all__ = [
    "load_mnist",
    "read_idx",
    "read_csv",
    "find_dataset",
    "download_file",
    "DataNotFoundError",
    "DATASETS",
    "FILES",
]

SPLITS = ("train", "test")

# file stem per split and kind; the .gz and raw forms share the stem
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# canonical MD5 of the *uncompressed* files, as published
DATASETS = {
    "mnist": {
        "env": "FASTMLP_DATA",
        "cache_subdir": "",
        "system_dirs": (),
        "mirrors": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        "md5": {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        "counts": {"train": 60000, "test": 10000},
    },
    "fashion": {
        "env": "FASTMLP_FASHION_DATA",
        "cache_subdir": "fashion",
        "system_dirs": ("/usr/share/datasets/fashion-mnist",),
        "mirrors": (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        "md5": {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        "counts": {"train": 60000, "test": 10000},
    },
}

CSV_NAMES = {"train": ("mnist_train.csv", "train.csv"), "test": ("mnist_test.csv", "test.csv")}

# IDX type byte -> numpy dtype (big-endian, as the format stores them)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Limits. Nothing a file or a server says is believed before it is bounded: each of these caps
# what one input may make this process allocate or wait for.
DOWNLOAD_TIMEOUT = 20.0        # seconds a connection may stay silent
DOWNLOAD_DEADLINE = 300.0      # seconds for one whole file, however slowly its bytes come
MAX_DOWNLOAD_BYTES = 64 << 20  # a download (MNIST's largest .gz is 9.9 MB, Fashion's 26 MB)
MAX_IDX_BYTES = 256 << 20      # an uncompressed IDX file of a name whose size is not known in
                               # advance (MNIST's largest is 47 MB); a known one gets its exact size
MAX_CSV_BYTES = 256 << 20      # a CSV file (MNIST's training set as CSV is 110 MB; reading it
                               # takes about 1 GB)
CSV_CHUNK_ROWS = 2000          # rows read at a time as text, to name a faulty cell
MAX_CSV_LINE = 64 << 10        # a CSV line: a label and 784 pixels fit in 4 KB, the Kaggle
                               # header in 6 KB


class DataNotFoundError(FileNotFoundError):
    """The data files are in none of the places searched and could not be downloaded."""


# ----------------------------------------------------------------------------------------------
# readers


def _open_bytes(path: Path, limit: int | None = None, name: str | None = None,
                gz: bool | None = None) -> bytes:
    """The file's content, gunzipped when the name ends in .gz (a ValueError if it is not gzip),
    read in a stream and refused (ValueError) as soon as it exceeds ``limit`` bytes: a small .gz
    that unpacks to gigabytes never reaches memory. ``gz``: gzip data whatever the name says."""
    name = name or str(path)
    gz = path.suffix == ".gz" if gz is None else gz
    limit = MAX_IDX_BYTES if limit is None else limit
    if not path.is_file():
        raise ValueError(f"{name}: not a regular file")
    size = path.stat().st_size
    if not gz:
        if size > limit:
            raise ValueError(f"{name}: the file is {size} bytes; at most {limit} expected")
        return path.read_bytes()
    with open(path, "rb") as fh:
        magic = fh.read(2)
        if magic != b"\x1f\x8b":
            raise ValueError(f"{name}: not a gzip file (the name ends in .gz but the content does "
                             f"not start with the gzip magic bytes 1f 8b; got "
                             f"{magic.hex() or 'an empty file'})")
        fh.seek(0)
        try:
            with gzip.GzipFile(fileobj=fh) as gz:
                content = gz.read(limit + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    if len(content) > limit:
        raise ValueError(f"{name}: the gzip data unpacks to more than {limit} bytes; at most "
                         f"{limit} expected")
    return content


def _expected_bytes(stem: str, dataset: str) -> int:
    """The exact size of a standard file's uncompressed content (its header and data)."""
    split, kind = next(k for k, v in FILES.items() if v == stem)
    n = DATASETS[dataset]["counts"][split]
    return 16 + 784 * n if kind == "images" else 8 + n


def parse_idx(content: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file into an array (shape from its header).

    Layout: two zero bytes, a type byte (0x08 = uint8, ...), a byte with the number of
    dimensions d, then d big-endian uint32 sizes, then the data in row-major order.
    """
    if len(content) < 4:
        raise ValueError(f"{name}: truncated IDX file: {len(content)} bytes, the header alone needs 4")
    if content[0] != 0 or content[1] != 0:
        raise ValueError(f"{name}: wrong magic number: an IDX file starts with two zero bytes; "
                         f"got {content[:4].hex()}")
    type_byte, ndim = content[2], content[3]
    if type_byte not in _IDX_TYPES:
        known = ", ".join(f"0x{t:02x}" for t in _IDX_TYPES)
        raise ValueError(f"{name}: wrong data type byte: expected one of {known}; got 0x{type_byte:02x}")
    if ndim == 0:
        raise ValueError(f"{name}: wrong magic number: the IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise ValueError(f"{name}: truncated IDX file: {len(content)} bytes, the header of a "
                         f"{ndim}-dimensional file needs {header}")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    dtype = _IDX_TYPES[type_byte]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(content) - header
    if got < expected:
        raise ValueError(f"{name}: truncated IDX file: the header says shape {shape} "
                         f"({expected} data bytes); the file has {got}")
    if got > expected:
        raise ValueError(f"{name}: sizes in the header do not match the data: the header says shape "
                         f"{shape} ({expected} data bytes); the file has {got}")
    arr = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))   # one copy: native byte order, writable


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed (name ends in .gz) or raw. Faults are ValueErrors."""
    path = Path(path)
    return parse_idx(_open_bytes(path), str(path))


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(f"{name}: labels must be one-dimensional; got shape {labels.shape}")
    if labels.dtype.kind == "f":            # (a NaN compares false with every bound below)
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: labels must be whole numbers in 0..9; got {labels[k]} at "
                             f"row {k}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = int(np.flatnonzero((labels < 0) | (labels > 9))[0])
        raise ValueError(f"{name}: labels must be in 0..9; got {int(labels[bad])} at row {bad}")
    return labels.astype(np.uint8)


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"{name}: images must be unsigned bytes (IDX type 0x08); got {images.dtype}")
    if images.ndim == 3:
        images = images.reshape(images.shape[0], -1)
    if images.ndim != 2 or images.shape[1] != 784:
        raise ValueError(f"{name}: images must be 28x28 (784 pixels); got shape {images.shape}")
    return images


def read_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST from CSV: one image per row, the label first, then 784 pixels in 0..255.

    Takes the Kaggle layout (header row ``label,pixel0,...,pixel783``) and the headerless one.
    Returns images uint8 (n, 784) and labels uint8 (n,).
    """
    import pandas as pd

    path = Path(path)
    first = _check_csv_shape(path)
    first_cell = first.split(",")[0].strip().strip('"')
    has_header = not _is_number(first_cell)
    header = 0 if has_header else None
    try:                             # the common case, numbers only: read straight into float64
        values = pd.read_csv(path, header=header, dtype=np.float64, skip_blank_lines=True,
                             encoding="utf-8-sig").to_numpy()
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, TypeError):
        values = None
    if values is None or values.shape[1] != 785 or not np.isfinite(values).all():
        _find_bad_cell(path, header)            # raises, naming the cell
    if values.shape[0] == 0:
        raise ValueError(f"{path}: the CSV file has a header but no rows")
    if (values != np.round(values)).any():
        r, c = np.argwhere(values != np.round(values))[0]
        raise ValueError(f"{path}: cell at row {r + 1}, column {c + 1} must be a whole number; "
                         f"got {values[r, c]!r}")
    labels, pixels = values[:, 0], values[:, 1:]
    out = (pixels < 0) | (pixels > 255)
    if out.any():
        r, c = np.argwhere(out)[0]
        raise ValueError(f"{path}: pixels must be in 0..255; got {pixels[r, c]:g} at row {r + 1}, "
                         f"column {c + 2}")
    labels = _check_labels(labels, str(path))
    return pixels.astype(np.uint8), labels


def _find_bad_cell(path: Path, header) -> None:
    """Read the CSV again as text, CSV_CHUNK_ROWS rows at a time (bounded memory), and raise a
    ValueError naming its first fault: malformed, wrong column count, a non-numeric, empty or
    NaN cell."""
    import pandas as pd
    try:
        chunks = pd.read_csv(path, header=header, dtype=str, keep_default_na=False,
                             skip_blank_lines=True, encoding="utf-8-sig", chunksize=CSV_CHUNK_ROWS)
        row0 = 0
        for frame in chunks:
            if frame.shape[1] != 785:
                raise ValueError(f"{path}: wrong number of columns: expected 785 (label + 784 "
                                 f"pixels); got {frame.shape[1]}")
            values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            bad = ~np.isfinite(values)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise ValueError(f"{path}: non-numeric or NaN cell at row {row0 + r + 1}, column "
                                 f"{c + 1}: expected a number; got {frame.iat[r, c]!r}")
            row0 += len(frame)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: malformed CSV ({msg})") from None
    raise ValueError(f"{path}: malformed CSV (its cells could not be read as numbers)")


def _check_csv_shape(path: Path) -> str:
    """Before pandas sees the file: a regular file of at most MAX_CSV_BYTES, whose lines are at
    most MAX_CSV_LINE bytes long and whose first line has 785 cells. (pandas holds a whole line's
    cells at once: one line of 200 MB took 17 GB, a million columns 39 s.) Returns the first
    line, a byte-order mark removed (it is not a header)."""
    try:
        if not path.is_file():
            raise ValueError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise ValueError(f"{path}: the CSV file is {size} bytes; at most {MAX_CSV_BYTES} "
                             f"expected")
        with open(path, "rb") as fh:
            first = fh.readline(MAX_CSV_LINE + 1)
            longest, carry = 0, 0
            fh.seek(0)
            while chunk := fh.read(1 << 22):
                ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
                if ends.size == 0:
                    carry += len(chunk)
                else:
                    longest = max(longest, carry + int(ends[0]),
                                  int(np.diff(ends).max(initial=0)))
                    carry = len(chunk) - int(ends[-1]) - 1
                if max(longest, carry) > MAX_CSV_LINE:
                    raise ValueError(f"{path}: a line of the CSV file is longer than "
                                     f"{MAX_CSV_LINE} bytes; a line of MNIST CSV is a label and "
                                     f"784 pixels")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the CSV file ({exc.strerror})") from None
    text = first.decode("utf-8-sig", errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: empty CSV file: expected rows of a label and 784 pixels")
    cells = text.count(",") + 1
    if cells != 785:
        raise ValueError(f"{path}: wrong number of columns: expected 785 (label + 784 pixels); "
                         f"got {cells} in the first line")
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# checksums and the search path


def md5_hex(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def _verify(content: bytes, stem: str, dataset: str, path: Path) -> None:
    expected = DATASETS[dataset]["md5"][stem]
    got = md5_hex(content)
    if got != expected:
        raise ValueError(f"{path}: checksum mismatch: the MD5 of the uncompressed content must be "
                         f"{expected} (canonical {dataset} {stem}); got {got}. The file is damaged "
                         f"or is not the {dataset} file; delete it or point data_dir elsewhere.")


def user_cache_dir(dataset: str = "mnist") -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastmlp" / DATASETS[dataset]["cache_subdir"]


def search_dirs(dataset: str = "mnist", data_dir=None) -> list[Path]:
    """The directories searched, in order (data_dir alone when it is given)."""
    if data_dir is not None:
        return [Path(data_dir)]
    spec = DATASETS[dataset]
    dirs = []
    env = os.environ.get(spec["env"])
    if env:
        dirs.append(Path(env))
    dirs.append(user_cache_dir(dataset))
    dirs.extend(Path(d) for d in spec["system_dirs"])
    return dirs


def _idx_in(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def find_dataset(split: str, dataset: str = "mnist", data_dir=None):
    """Where the files for ``split`` are: ("idx", images_path, labels_path), ("csv", path, None)
    or None."""
    for d in search_dirs(dataset, data_dir):
        imgs = _idx_in(d, FILES[(split, "images")])
        labs = _idx_in(d, FILES[(split, "labels")])
        if imgs and labs:
            return ("idx", imgs, labs)
        if dataset == "mnist":
            for name in CSV_NAMES[split]:
                if (d / name).is_file():
                    return ("csv", d / name, None)
    return None


def _load_idx_verified(path: Path, stem: str, dataset: str, verify: bool) -> np.ndarray:
    content = _open_bytes(path, _expected_bytes(stem, dataset))
    arr = parse_idx(content, str(path))  # structural faults first: they say more
    if verify:
        _verify(content, stem, dataset, path)
    return arr


def _check_pair(images, labels, img_name, lab_name):
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_name} and {lab_name}: image and label counts differ: "
                         f"{images.shape[0]} images, {labels.shape[0]} labels")


def load_mnist(split: str, data_dir=None, *, dataset: str = "mnist", download: bool = True,
               verify: bool = True, progress: bool = True):
    """Load a split of MNIST (or Fashion-MNIST with ``dataset="fashion"``).

    Parameters
    ----------
    split : "train" (60,000 images) or "test" (10,000 images)
    data_dir : directory to read from and, if the files are missing, to download into.
        When None: ``$FASTMLP_DATA``, then the user cache, then a download into the cache.
    dataset : "mnist" or "fashion"
    download : try the public mirrors when the files are found nowhere
    verify : check the canonical MD5 of IDX files

    Returns
    -------
    images : uint8 array, shape (n, 784), pixel values 0..255, row-major 28x28
    labels : uint8 array, shape (n,), values 0..9
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    found = find_dataset(split, dataset, data_dir)
    if found is None:
        if not download:
            raise _not_found(split, dataset, data_dir, [])
        target = Path(data_dir) if data_dir is not None else user_cache_dir(dataset)
        failures = []
        for kind in ("images", "labels"):
            stem = FILES[(split, kind)]
            if _idx_in(target, stem) is None:
                ok, errs = _download_from_mirrors(stem, dataset, target, progress)
                failures.extend(errs)
                if not ok:
                    raise _not_found(split, dataset, data_dir, failures)
        found = find_dataset(split, dataset, data_dir)
        if found is None:  # pragma: no cover - the download just put the files there
            raise _not_found(split, dataset, data_dir, failures)

    kind, a, b = found
    if kind == "csv":
        return read_csv(a)
    images = _check_images(_load_idx_verified(a, FILES[(split, "images")], dataset, verify), str(a))
    labels = _check_labels(_load_idx_verified(b, FILES[(split, "labels")], dataset, verify), str(b))
    _check_pair(images, labels, str(a), str(b))
    return images, labels


def _not_found(split, dataset, data_dir, failures) -> DataNotFoundError:
    places = [str(d) for d in search_dirs(dataset, data_dir)]
    names = f"{FILES[(split, 'images')]}[.gz] and {FILES[(split, 'labels')]}[.gz]"
    if dataset == "mnist":
        names += f" (or {' / '.join(CSV_NAMES[split])})"
    lines = [f"{dataset} {split} data not found: looked for {names} in:"]
    lines += [f"  - {p}" for p in places]
    if failures:
        lines.append("and the download failed:")
        lines += [f"  - {f}" for f in failures]
    env = DATASETS[dataset]["env"]
    lines.append(f"Point fastmlp at the files with data_dir=... (--data-dir DIR on the command line) "
                 f"or the environment variable {env}=DIR, or connect to the internet to download them.")
    return DataNotFoundError("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# download


def _download_from_mirrors(stem: str, dataset: str, target: Path, progress: bool):
    errors = []
    for mirror in DATASETS[dataset]["mirrors"]:
        url = mirror + stem + ".gz"
        try:
            download_file(url, target / (stem + ".gz"), expected_md5=DATASETS[dataset]["md5"][stem],
                          progress=progress, expected_bytes=_expected_bytes(stem, dataset))
            return True, errors
        except (OSError, ValueError, urllib.error.URLError) as exc:
            errors.append(f"{url}: {exc}")
    return False, errors


def download_file(url: str, dest, *, expected_md5: str | None = None, progress: bool = True,
                  timeout: float = DOWNLOAD_TIMEOUT, expected_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the MD5 of the (gunzipped) content
    (``expected_bytes`` long, if given). At most MAX_DOWNLOAD_BYTES arrive, within
    DOWNLOAD_DEADLINE seconds, each read within ``timeout``; else a ValueError.

    The bytes go to a temporary file beside ``dest``, which is renamed into place only when the
    transfer is complete and the checksum matches; on any failure it is removed. Two processes
    downloading the same file at once both end with a good file (the last rename wins, and both
    renamed complete, verified files).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)

    def write(out):
        deadline = time.monotonic() + DOWNLOAD_DEADLINE
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise ValueError(f"the server announces {total} bytes; at most "
                                 f"{MAX_DOWNLOAD_BYTES} expected")
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
                      leave=False) as bar:
                while True:
                    chunk = resp.read1(1 << 16)     # (what has arrived: read() waits for all)
                    if not chunk:
                        break
                    out.write(chunk)
                    bar.update(len(chunk))
                    if out.tell() > MAX_DOWNLOAD_BYTES:
                        raise ValueError(f"the download exceeded {MAX_DOWNLOAD_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise ValueError(f"the download took longer than {DOWNLOAD_DEADLINE:g} s "
                                         f"({out.tell()} bytes so far)")
            if total is not None and out.tell() != total:
                raise ValueError(f"incomplete download: expected {total} bytes; got {out.tell()}")

    def verify(tmp: Path):
        if expected_md5 is not None:
            limit = expected_bytes if expected_bytes is not None else MAX_IDX_BYTES
            got = md5_hex(_open_bytes(tmp, limit, name=url, gz=dest.suffix == ".gz"))
            if got != expected_md5:
                raise ValueError(f"checksum mismatch: expected MD5 {expected_md5}; got {got}")

    return atomic_write(dest, write, check=verify, suffix=".part")
