"""Writing files so that a reader never sees half of one: the one helper that the model files,
the metrics, the figures and the downloads all use. Depends on nothing else in the package."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_target(path) -> Path:
    """Where a write to ``path`` lands: through a symbolic link, the file it points to. A
    ValueError if that exists and is not a regular file (nothing is ever renamed over one)."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if os.path.lexists(path) and not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file (a directory, a FIFO, a device "
                         f"or a socket); refusing to replace it")
    return path


def atomic_write(path, write, *, check=None, suffix: str = ".tmp") -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then ``check(tmp_path)`` if
    given (it raises to refuse the file, e.g. on a checksum mismatch), then rename the file into
    place, with the usual permissions (0666 less the umask).

    A symbolic link is written through: the file it points to is replaced, the link stays. A
    path that exists and is not a regular file (a directory, a FIFO, a device) is refused with
    a ValueError, before anything is written. On any failure (including KeyboardInterrupt) the
    temporary file is removed and the target is left as it was; an OSError (a full disk, say)
    names the path. Two writers of one path both end with a complete file there.
    """
    path = output_target(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        return path
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
