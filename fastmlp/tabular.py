"""A user's own table of numbers: read it, check it, and say what is wrong with it.

    X, y, names = read_table("my.csv", target="label")

Formats: CSV (pandas), Parquet (pandas, with pyarrow or fastparquet installed), .npz (an array
"X" of features and the labels under ``target``, default "y") and .npy (a 2-D numeric array
whose column ``target``, default the last, holds the labels). Features must be numeric and
finite; labels may be anything (strings, integers). Every fault is a ValueError naming the file
and what is wrong.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

FORMATS = (".csv", ".parquet", ".npz", ".npy")


def read_table(path, target=None, labels=True):
    """(X float64 (n, features), y (n,), feature names or None) from a file (see module). With
    ``labels=False`` (to predict), the labels may be absent: y is then None, and a label column
    that is there is left out of the features (an .npy's only when ``target`` names it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: the data file must be one of {', '.join(FORMATS)}; got "
                         f"{suffix or 'no suffix'!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if suffix in (".csv", ".parquet"):
        X, y, names = _read_frame(path, suffix, target, labels)
    elif suffix == ".npz":
        X, y, names = _read_npz(path, target, labels)
    else:
        X, y, names = _read_npy(path, target if labels or target is not None else "none")
    return _checked(path, X, y, names)


def _read_frame(path, suffix, target, labels=True):
    import pandas as pd
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except ImportError as exc:
        raise ValueError(f"{path}: reading Parquet needs pyarrow or fastparquet ({exc}); "
                         f"pip install pyarrow") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError) as exc:
        raise ValueError(f"{path}: not a readable {suffix[1:]} table: {exc}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if not labels and (target is None or str(target) not in columns):
        return _numeric(path, frame), None, columns
    if target is None:
        raise ValueError(f"{path}: say which column holds the labels (--target); the columns "
                         f"are {_listing(columns)}")
    if str(target) not in columns:
        raise ValueError(f"{path}: no column {target!r} for the labels; the columns are "
                         f"{_listing(columns)}")
    y = frame[str(target)].to_numpy()
    features = frame.drop(columns=[str(target)])
    return _numeric(path, features), y, list(features.columns)


def _numeric(path, features):
    from pandas.api.types import is_bool_dtype, is_numeric_dtype
    bad = [c for c in features.columns if not (is_numeric_dtype(features[c])
                                               or is_bool_dtype(features[c]))]
    if bad:
        raise ValueError(f"{path}: feature columns must be numbers; {_listing(bad)} "
                         f"{'is' if len(bad) == 1 else 'are'} not (e.g. "
                         f"{features[bad[0]].iloc[0]!r}): encode them as numbers first")
    return features.to_numpy(dtype=np.float64)


def _read_npz(path, target, labels=True):
    key = "y" if target is None else str(target)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "X" not in keys or (labels and key not in keys):
                raise ValueError(f"an .npz needs an array 'X' of features and the labels under "
                                 f"{key!r}; it holds {_listing(keys)}")
            X, y = z["X"], (z[key] if labels else None)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz: {exc}") from None
    return X, y, None


def _read_npy(path, target):
    try:
        A = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy: {exc}") from None
    if A.ndim != 2 or A.shape[1] < 2:
        raise ValueError(f"{path}: an .npy must be a 2-D array of features and a label column; "
                         f"got shape {A.shape}")
    if target == "none":                         # (features only)
        return A, None, None
    try:
        col = -1 if target is None else int(target)
    except ValueError:
        raise ValueError(f"{path}: --target must be a column number for an .npy; got "
                         f"{target!r}") from None
    if not -A.shape[1] <= col < A.shape[1]:
        raise ValueError(f"{path}: --target must be a column in 0..{A.shape[1] - 1}; got {col}")
    return np.delete(A, col, axis=1), A[:, col], None


def _checked(path, X, y, names):
    X = np.asarray(X)
    if X.dtype == bool:
        X = X.astype(np.float64)
    if X.ndim != 2 or X.dtype.kind not in "iuf":
        raise ValueError(f"{path}: the features must be a 2-D array of numbers; got {X.dtype} "
                         f"of shape {X.shape}")
    if len(X) < 2 or X.shape[1] < 1:
        raise ValueError(f"{path}: at least 2 rows and 1 feature needed; got {X.shape}")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        r, c = np.argwhere(~np.isfinite(X))[0]
        where = names[c] if names else f"column {c}"
        raise ValueError(f"{path}: features must be finite numbers; got {X[r, c]} at row {r}, "
                         f"{where!r}")
    if X.dtype.kind in "iu":
        X = X.astype(np.float64)
    if y is None:                        # (no labels: predict)
        return X, None, names
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"{path}: one label per row needed ({len(X)}); got shape {y.shape}")
    missing = np.array([v is None or (isinstance(v, float) and v != v) for v in y.tolist()])
    if missing.any():
        raise ValueError(f"{path}: every row needs a label; row {int(np.argmax(missing))} has "
                         f"none")
    if y.dtype == object:           # labels as read from text: all of one kind
        kinds = {type(v) for v in y.tolist()}
        if len(kinds) > 1:
            y = y.astype(str)
    return X, y, names


def _listing(items, most=12) -> str:
    items = [repr(i) for i in items]
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most
                                      else "")
