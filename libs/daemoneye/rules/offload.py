"""Run a function in a short-lived forked child and take its (pickled) result back.

The detector compiles its rules this way: validating and planning them needs sqlglot
(~7 MB of modules, and parse trees that leave the heap fragmented), the rules it runs
need none of it. In the child, the work sees the detector's state as it is (a
copy-on-write copy: its sandbox, its rules directory), and whatever it imports or
allocates goes away with it; only the plain result (rules, plans, problems) comes back.

The child touches nothing the detector shares with the outside (no socket, no store:
it exits with os._exit, no finaliser runs); a result that cannot be pickled, a child
that dies or an error in the work raise `OffloadError` in the caller, with the child's
traceback. So does a child that has not answered within its timeout: it is killed, so
that a rule set that sends sqlglot into a loop costs a refused load, not the detector.
Where fork is unsafe or missing (`supported()` False) callers run the work in-process
instead.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT_S = 60.0  # the shipped rules compile in ~0.5 s; thousands of rules in seconds


class OffloadError(RuntimeError):
    """The child failed: its error (with traceback) or how it died."""


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def call(fn: Callable[..., T], *args: Any, timeout_s: float = TIMEOUT_S) -> T:
    """`fn(*args)`, computed in a forked child. A built-in exception it raises (ValueError,
    say) is raised here; any other failure, or no answer within `timeout_s`, as
    OffloadError."""
    for stream in (sys.stdout, sys.stderr):  # else buffered bytes go out twice
        with contextlib.suppress(Exception):
            stream.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        code = 0
        try:
            os.close(r)
            # the service's handlers (and its wake-up pipe) are the parent's business
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
            try:
                result = fn(*args)
            except BaseException as exc:
                data = _failure(exc)
            else:
                try:
                    data = pickle.dumps(("ok", result), pickle.HIGHEST_PROTOCOL)
                except Exception as exc:
                    text = f"its result does not pickle: {exc!r}"
                    data = pickle.dumps(("error", text), pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as out:
                out.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = _read_until(r, time.monotonic() + timeout_s)
    finally:
        os.close(r)
        if data is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status = 0
        with contextlib.suppress(ChildProcessError):  # reaped by a SIGCHLD handler
            _, status = os.waitpid(pid, 0)
    if data is None:
        raise OffloadError(f"the child did not answer within {timeout_s:g} s: killed")
    if not data:
        raise OffloadError(f"the child died ({_how(status)}) before it answered")
    outcome = pickle.loads(data)
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "raise":
        raise outcome[1]
    raise OffloadError(f"the child failed:\n{outcome[1]}")


def _read_until(fd: int, deadline: float) -> bytes | None:
    """All the child writes until it closes the pipe; None if the deadline comes first."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _failure(exc: BaseException) -> bytes:
    """The pickled failure: a built-in exception itself (nothing to import to read it),
    any other as its traceback's text."""
    text = "".join(traceback.format_exception(exc))
    if type(exc).__module__ == "builtins":
        with contextlib.suppress(Exception):
            return pickle.dumps(("raise", exc, text), pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(("error", text), pickle.HIGHEST_PROTOCOL)


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
