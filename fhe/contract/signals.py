"""Undo the signal handlers that Concrete's runtime (HPX) installs when it first runs a circuit.

After a circuit has run in a process, HPX's handler turns SIGPIPE into a crash: writing to a
socket or pipe whose other end has closed kills the process with a segmentation fault, where
Python would raise BrokenPipeError. Call this after running circuits in a process that also
does I/O (the recipe, the benchmark timer, the server's workers).
"""

from __future__ import annotations

import signal
import threading


def ignore_sigpipe() -> None:
    """Put back Python's default: SIGPIPE ignored, broken pipes raise instead of crashing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
