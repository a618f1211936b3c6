"""Writing files so that a reader never sees half of one: the one helper that the model files,
the metrics, the figures and the downloads all use. Depends on nothing else in the package."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path, write, *, check=None, suffix: str = ".tmp") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then ``check(tmp_path)`` if
    given (it raises to refuse the file, e.g. on a checksum mismatch), then rename the file into
    place.

    On any failure (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    left as it was. Two writers of one path both end with a complete file there (the last
    rename wins).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
        return path
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
