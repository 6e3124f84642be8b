"""`daemoneye up`: the one owner of child processes.

Starts each service as a `daemoneye run <service>` child (the broker first, the
others once its control socket answers; on Linux forked from this process once it
has imported what they run, so they share those pages: daemoneye.zygote), restarts
a crashed child with exponential backoff, and on SIGTERM/SIGINT stops them all
(producers first, the broker last), reaps every child and removes the socket files.

A collector's netlink reader outlives its main process on purpose (a crash or a
restart must not blind it), so a final stop also tells each reader in the run
directory to quit (services/collector/reader.py: the command `Q`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemoneye import zygote
from daemoneye.bus import endpoint_in_use, ipc_path, wait_for_endpoint
from daemoneye.config import Settings
from daemoneye.libc import libc as c_library

log = logging.getLogger("daemoneye.supervisor")

PR_SET_PDEATHSIG = 1
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a child that ran this long gets its backoff reset
STOP_GRACE_S = 10.0
BROKER_START_TIMEOUT_S = 15.0
READER_GLOB = "collector-*.reader"  # where collectors' netlink readers listen
READER_QUIT = struct.pack("<cQ", b"Q", 0)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor dies, so no child is orphaned."""
    libc = c_library()
    if libc is not None and hasattr(libc, "prctl"):  # Linux's alone
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    args: list[str]  # after `daemoneye`: run <name> ...
    proc: subprocess.Popen[bytes] | zygote.Forked | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    restart_due: float | None = None
    exits: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        services: list[str],
        extra_args: list[str],
        fork: bool | None = None,
    ) -> None:
        self.settings = settings
        self.children = [Child(name, ["run", name, *extra_args]) for name in services]
        self.fork = zygote.supported() if fork is None else fork
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    @staticmethod
    def argv(child: Child) -> list[str]:
        """The command that runs the child alone (exec'd, or its title when forked)."""
        return [sys.executable, "-m", "daemoneye", *child.args]

    # --- lifecycle ------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        control = self.settings.endpoint("control")
        if endpoint_in_use(control):
            log.error("a broker already answers at %s; is `daemoneye up` already running?", control)
            return 1
        prepared: list = [None] * len(self.children)
        if self.fork:
            prepared = zygote.preload(
                [c.name for c in self.children], [c.args for c in self.children]
            )
        try:
            for child, ready in zip(self.children, prepared, strict=True):
                self._start(child, ready)
                if child.name == "broker" and not self._wait_broker(child, control):
                    return 1
            self._watch()
        finally:
            self._stop_all()
            self._quit_readers()
            self._remove_socket_files()
        return 0

    def _wait_broker(self, child: Child, control: str) -> bool:
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping:
            if wait_for_endpoint(control, 0.2):
                log.info("broker ready at %s", control)
                return True
            if child.proc and child.proc.poll() is not None:
                log.error("the broker exited with code %s at start", child.proc.returncode)
                return False
        if not self._stopping:
            log.error("the broker did not open %s within %.0f s", control, BROKER_START_TIMEOUT_S)
        return False

    def _install_signals(self) -> None:
        def wake(signum: int, _frame: object) -> None:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stopping = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, wake)

    def _start(self, child: Child, prepared: argparse.Namespace | None = None) -> None:
        if self.fork:
            child.proc = zygote.fork_service(child.args, self.argv(child), self._in_child, prepared)
        else:
            child.proc = subprocess.Popen(
                self.argv(child), preexec_fn=_die_with_parent, start_new_session=True
            )
        child.started_at = time.monotonic()
        child.restart_due = None
        log.info("started %s pid=%d", child.name, child.proc.pid)

    def _in_child(self) -> None:
        """In a forked child, first: nothing of the supervisor's own stays open."""
        os.close(self._wake_r)
        os.close(self._wake_w)
        _die_with_parent()

    def _watch(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                self._check(child, now)
            dues = [c.restart_due for c in self.children if c.restart_due is not None]
            timeout = max(0.0, min(dues) - now) if dues else 1.0
            # Woken by SIGCHLD/SIGTERM through the pipe, or when a restart is due.
            readable, _, _ = select.select([self._wake_r], [], [], min(timeout, 1.0))
            if readable:
                os.read(self._wake_r, 4096)

    def _check(self, child: Child, now: float) -> None:
        if child.proc is not None:
            code = child.proc.poll()
            if code is None:
                return
            child.exits.append(code)
            child.proc = None
            if now - child.started_at >= STABLE_AFTER_S:
                child.backoff_s = BACKOFF_START_S
            child.restarts += 1
            child.restart_due = now + child.backoff_s
            log.warning(
                "%s exited with code %d; restarting in %.1f s (restart %d)",
                child.name,
                code,
                child.backoff_s,
                child.restarts,
            )
            child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)
        elif child.restart_due is not None and now >= child.restart_due and not self._stopping:
            self._start(child)

    def _stop_all(self) -> None:
        running = [c for c in reversed(self.children) if c.proc and c.proc.poll() is None]
        # Producers first, the broker last, so the others can deregister.
        for child in running:
            if child.name != "broker":
                self._terminate(child)
        for child in running:
            if child.name == "broker":
                self._terminate(child)
        log.info("all services stopped")

    def _terminate(self, child: Child) -> None:
        proc = child.proc
        if proc is None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", child.name, STOP_GRACE_S)
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass

    def _quit_readers(self) -> None:
        for path in Path(self.settings.run_dir).glob(READER_GLOB):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                try:
                    sock.connect(str(path))
                    sock.sendall(READER_QUIT)
                    while sock.recv(65536):  # its hello and spool, until it exits
                        pass
                except OSError:
                    pass
            path.unlink(missing_ok=True)
            log.info("told the netlink reader at %s to quit", path)

    def _remove_socket_files(self) -> None:
        for name in ("events-in", "events-out", "control"):
            path = ipc_path(self.settings.endpoint(name))
            if path is not None and path.exists() and not endpoint_in_use(f"ipc://{path}"):
                Path(path).unlink(missing_ok=True)
