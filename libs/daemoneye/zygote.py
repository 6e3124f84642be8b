"""Services forked from a pre-imported `daemoneye up`: the imports' memory is shared.

Every service is a Python process that imports the same ~25 MB of modules (pyzmq,
pycapnp with the compiled schema, pydantic and the settings, rocksdict, the bus and
service layers) and keeps them, private, for its whole life: six copies of the same
bytes were most of the system's memory at idle. So `daemoneye up` imports them once
(`preload`), before any ZeroMQ context, RocksDB handle or thread exists, takes them out
of the garbage collector's passes (`gc.freeze`: a collection writes to every object it
visits, which would copy each page in every child), and forks each service from itself
(`fork_service`). The pages stay shared copy-on-write until a child writes to them;
PSS divides them among the processes that share them.

The child then runs exactly what `daemoneye run <service> ...` runs (cli.main, the same
argv), so a service forked here and one started alone, by systemd or in a container,
are the same program; only the start differs. Restarts fork again from the supervisor,
which never touches what it preloaded: a restarted service runs the code `up` loaded
at start, not files upgraded on disk since (restart `up` to upgrade). Where fork is not
safe (not Linux: macOS frameworks, no fork on Windows) `supported()` is False and the
supervisor execs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from daemoneye import memory

log = logging.getLogger("daemoneye.supervisor")

# Handlers a fresh interpreter has; the supervisor's own (a self-pipe) must not run in
# a child.
_DEFAULT_HANDLERS = {
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGINT: signal.default_int_handler,
    signal.SIGCHLD: signal.SIG_DFL,
    signal.SIGHUP: signal.SIG_DFL,
}
WAIT_POLL_S = 0.05  # Forked.wait without a pidfd (Linux < 5.3)
# Services whose own modules are not preloaded: they import them after the fork. What
# one service alone uses gains nothing from being shared, and costs twice what the
# service touches of it (the supervisor's copy stays, the service copies each page it
# writes: refcounts, 3.11's inline caches). The detector's rule engine (sqlglot, yaml,
# sqlite3: ~6 MB of objects, a third of the preload) is such; measured at idle, up
# with the shipped rules: 125 -> 121 MB PSS in all, the others copying less of a
# smaller image too. Every other service's modules are mostly shared among them. (Since
# the detector keeps no sqlglot, rules/offload.py, preloading the rest of its modules
# gains nothing either: 103.5-105.8 MB in all self-imported, 106-109 preloaded.)
SELF_IMPORTING = frozenset({"detector"})


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def preload(services: Sequence[str], argvs: Sequence[list[str]] = ()) -> list:
    """Import what the services run, parse each of `argvs` (`prepare`), then freeze it all
    out of GC passes and hand the heap's free pages back, so the children start from a
    compact, shared image. Returns the prepared arguments, in the order of `argvs`.

    Every argv is prepared here, before the first fork: the parse walks argparse's and
    pydantic's objects, and a walk after a fork copies each page it touches (into the
    supervisor) that the services forked before it still share."""
    from daemoneye import wire  # noqa: F401  (the schema, compiled once)
    from daemoneye.console import cli
    from daemoneye.services import service_class

    for name in services:
        cli.build_parser(["run", name])  # the verb's module and its parser's imports
        if name not in SELF_IMPORTING:
            service_class(name)
    prepared = [prepare(argv) for argv in argvs]
    gc.collect()
    gc.freeze()
    memory.trim()
    return prepared


def set_title(argv: Sequence[str]) -> None:
    """Show `argv` as this process's command line (ps, /proc/<pid>/cmdline): a forked
    service reads as the command that runs it alone, not as `daemoneye up`. The kernel
    shows the bytes of the original argv, so they are overwritten in place (as
    setproctitle does); what does not fit in the original's length is left out, whole
    arguments only."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
    except (OSError, IndexError, ValueError):
        return
    room = end - start
    title = _fit(argv, room)
    if title.count(b"\0") < min(len(argv), 5):  # not even `python -m daemoneye run X`
        title = _fit(["daemoneye", *argv[3:]], room)
    if not title:
        return
    with contextlib.suppress(OSError), open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(title.ljust(room, b"\0"))


def prepare(argv: list[str]) -> argparse.Namespace | None:
    """`daemoneye run ...`'s arguments and settings, parsed in the supervisor before each
    fork (so a restart reads the configuration again, as an exec'd start did): the
    child then does not redo that work, which would copy the pages of every module it
    walks (argparse, pydantic). Anything amiss is left to the child, which reports it
    as `daemoneye run` does."""
    if argv[:1] != ["run"]:
        return None
    from daemoneye.console import cli
    from daemoneye.console.common import settings_from

    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            args = cli.build_parser(argv).parse_args(argv)
            args.settings = settings_from(args)
    except (Exception, SystemExit):
        return None
    return args


def _fit(argv: Sequence[str], room: int) -> bytes:
    parts: list[bytes] = []
    for arg in argv:
        part = arg.encode() + b"\0"
        if sum(map(len, parts)) + len(part) > room:
            if parts and parts[-1].startswith(b"-"):
                parts.pop()  # a flag without its value would misread
            break
        parts.append(part)
    return b"".join(parts)


def fork_service(
    argv: list[str],
    title: list[str],
    in_child: Callable[[], None],
    prepared: argparse.Namespace | None = None,
) -> Forked:
    """Fork a child that runs `daemoneye <argv>` (cli.main) and exits with its code.
    `in_child` runs first in the child (the supervisor's own descriptors closed);
    `prepared` is `prepare(argv)` done beforehand (`preload`), else it is done here."""
    if prepared is None:
        prepared = prepare(argv)
    for stream in (sys.stdout, sys.stderr):  # else buffered bytes go out twice
        with contextlib.suppress(Exception):
            stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:
        for sig, handler in _DEFAULT_HANDLERS.items():
            signal.signal(sig, handler)
        os.setsid()  # its own session, as `start_new_session`: a terminal's Ctrl-C is ours
        in_child()
        if os.getppid() != parent:  # the supervisor died before in_child could tie us to it
            os._exit(1)
        set_title(title)
        sys.argv = [sys.argv[0], *argv]
        from daemoneye.console import cli

        code = cli.execute(prepared) if prepared is not None else cli.main(argv)
    except SystemExit as exc:  # argparse and friends
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        # Never return into the supervisor's stack (its finally blocks stop services).
        with contextlib.suppress(BaseException):
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        os._exit(code & 0xFF if code >= 0 else 1)


class Forked:
    """What the supervisor needs of subprocess.Popen, for a forked child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.args = [str(pid)]

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 255  # reaped elsewhere: gone, its code unknown
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = -1
        with contextlib.suppress(OSError, AttributeError):
            fd = os.pidfd_open(self.pid)  # readable once the child exits
        try:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                if fd >= 0:
                    select.select([fd], [], [], left)
                else:
                    time.sleep(WAIT_POLL_S if left is None else min(WAIT_POLL_S, left))
        finally:
            if fd >= 0:
                os.close(fd)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that may be reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
