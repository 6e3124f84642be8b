"""The C library, for the few calls the os module lacks (prctl, capset, malloc tuning).

Loaded from this process's own symbols (`CDLL(None)`), never through
`ctypes.util.find_library`: on Linux that runs `/sbin/ldconfig -p`, a process a
monitor would start, and see, at each import.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library with errno kept for `ctypes.get_errno`; None where none loads."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
