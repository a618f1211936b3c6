"""A Ctrl-C that is not lost.

Python turns SIGINT into KeyboardInterrupt in whatever Python code the main thread runs next.
If that is a callback whose exceptions Python only prints ("Exception ignored in ..."; a weakref
callback, a ``__del__``), the interrupt is gone and a training run goes on to its end. The CLI
runs its commands in ``catching_interrupts()``, whose handler raises KeyboardInterrupt as
Python's does and also remembers it; the training loops call ``raise_if_interrupted()`` after
each epoch or chunk of steps, which raises it again if it was swallowed.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_pending = False


def _on_sigint(signum, frame):
    global _pending
    _pending = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def catching_interrupts():
    """In the main thread, where SIGINT has Python's own handler: remember each SIGINT while
    the block runs (elsewhere, or with another handler, nothing changes)."""
    global _pending
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _pending = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = False


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a SIGINT arrived inside catching_interrupts() (raised again if
    something swallowed it); nothing otherwise."""
    if _pending:
        raise KeyboardInterrupt
