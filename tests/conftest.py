"""The tests' shared seams: real services on real ipc:// sockets in a temporary directory.

- start a system: the run_env / settings / start_service / broker / factory / rpc_client /
  subscribe fixtures for one test; World, made of the same parts, for a scenario that
  outlives a test (tests/faults);
- call the CLI: daemoneye() and the cli fixture;
- feed a service: no_host_config and open_in_process / close_in_process, for a service
  built in the test's own process;
- wait_for (poll a condition with a deadline), the shared corpora (corpus, needs_corpus).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
import zmq

from daemoneye import config
from daemoneye.bus import Publisher, SocketFactory, Subscriber, wait_for_endpoint
from daemoneye.config import Settings, load_settings
from daemoneye.rpc import RpcClient
from daemoneye.service import Service

S = TypeVar("S", bound=Service)
HEARTBEAT_S = 0.2  # fast heartbeats so health transitions happen within a test
REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"  # the team's shared rule corpora, beside the repo


def corpus(name: str) -> Path:
    """A shared corpus directory (which may be absent: see `needs_corpus`)."""
    return CORPORA / name


def needs_corpus(name: str) -> pytest.MarkDecorator:
    """Skip, naming the path looked at, when the corpus is not beside the repository."""
    path = corpus(name)
    return pytest.mark.skipif(not path.is_dir(), reason=f"no {name} corpus at {path}")


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll `condition` until it is truthy or the deadline passes (then fail, naming it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)  # a poll interval, not a synchronisation: the condition decides


def work_for(seconds: float) -> None:
    """Keep this thread busy this long: the work of a long batch, take or write inside the
    code under test (work that takes time, not a wait for a condition)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def settle(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll like wait_for, but say whether it held instead of failing: the caller's
    counts then tell what is missing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)  # a poll interval; the condition decides
    return True


DAEMONEYE = [sys.executable, "-m", "daemoneye"]  # the command line, as a user runs it


def daemoneye(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
    **extra_env: str,
) -> subprocess.CompletedProcess:
    """Run `daemoneye ARGS` to the end, its output captured as text. `env` is the whole
    environment (this process's when None); `extra_env` adds to it (COLUMNS="200")."""
    return subprocess.run(
        [*DAEMONEYE, *args],
        env={**(os.environ if env is None else env), **extra_env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(run_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """`daemoneye` (as above) in this test's run environment unless given another."""

    def run(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return daemoneye(*args, env=run_env if env is None else env, **kwargs)

    return run


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(base: Path, **extra: str) -> dict[str, str]:
    """Environment for child services: their own run dir (under /tmp: ipc:// paths must be
    short), a data dir under `base`, fast heartbeats; `extra` on top."""
    env = dict(os.environ)
    env.update(
        DAEMONEYE_RUN_DIR=f"/tmp/de-{os.getpid()}-{base.name[-20:]}",
        DAEMONEYE_DATA_DIR=str(base / "data"),
        DAEMONEYE_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
        DAEMONEYE_RPC_TIMEOUT_S="2",
        DAEMONEYE_LOG_LEVEL="debug",
        **extra,
    )
    return env


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch | None = None) -> Settings:
    """Settings exactly as a service started with `env` sees them (other DAEMONEYE_*
    variables of this process removed). Without `monkeypatch`, this process's
    environment is restored at once."""
    if monkeypatch is None:
        with pytest.MonkeyPatch.context() as mp:
            return settings_of(env, mp)
    for key in [k for k in os.environ if k.startswith("DAEMONEYE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("DAEMONEYE_"):
            monkeypatch.setenv(key, value)
    return load_settings()


class Broker(NamedTuple):
    proc: Any  # the ServiceProcess of start_service
    settings: Settings
    pub: Publisher
    rpc: RpcClient
    factory: SocketFactory


@contextmanager
def broker_with_clients(
    start_service: Callable[..., Any],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> Iterator[Broker]:
    """A broker process started with `env` (an edge of the uplink tests), once it
    answers: a publisher into it as `source` and an RPC client, closed afterwards."""
    proc = start_service("broker", env=env)
    settings = settings_of(env, monkeypatch)
    assert wait_for_endpoint(settings.endpoint("control"), 20), proc.log()
    factory = SocketFactory(settings, zmq.Context())
    try:
        pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), source)
        rpc = RpcClient(factory, settings.endpoint("control"), "test", 3.0)
        yield Broker(proc, settings, pub, rpc, factory)
    finally:
        factory.close_all(linger_ms=0)


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = service_env(tmp_path)
    yield env
    subprocess.run(["rm", "-rf", env["DAEMONEYE_RUN_DIR"]], check=False)


@pytest.fixture
def settings(run_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The run env's settings, with this process's environment set to match (services
    built in the test load the same)."""
    return settings_of(run_env, monkeypatch)


class ServiceProcess:
    """A real `daemoneye run <service>` child, its log kept in a file."""

    def __init__(self, service: str, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.service = service
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*DAEMONEYE, "run", service, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Services:
    """The `daemoneye run` children of one test (or one module's scenario), each logging
    to a file in `logs`; stopped last first."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started: list[ServiceProcess] = []

    def start(self, service: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        log = self.logs / f"{service}-{len(self.started)}.log"
        proc = ServiceProcess(service, env or self.env, log, *args)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def start_service(
    run_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., ServiceProcess]]:
    services = Services(run_env, tmp_path)
    yield services.start
    services.stop_all()


class World:
    """What the fixtures give one test (run env, settings, socket factory, RPC client,
    started services), built from the same parts for a scenario that outlives a test
    (module scope); `close()` stops the services and removes the run dir."""

    def __init__(self, base: Path, extra_env: dict[str, str] | None = None) -> None:
        self.base = base
        self.env = service_env(base, **(extra_env or {}))
        self.run_dir = Path(self.env["DAEMONEYE_RUN_DIR"])
        self.settings = settings_of(self.env)
        self.factory = SocketFactory(self.settings, zmq.Context())
        self.rpc = RpcClient(self.factory, self.settings.endpoint("control"), "test-client", 3.0)
        self.services = Services(self.env, base)
        self.start_service = self.services.start

    def close(self) -> None:
        self.services.stop_all()
        self.factory.close_all(linger_ms=0)
        self.factory.context.term()
        subprocess.run(["rm", "-rf", str(self.run_dir)], check=False)


@pytest.fixture
def no_host_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings from the defaults and the test's own files only: no host configuration
    file (/etc, ~/.config) and no DAEMONEYE_* variable of this process."""
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "none-system.toml")
    monkeypatch.setattr(config, "USER_CONFIG", tmp_path / "none-user.toml")
    for key in [k for k in os.environ if k.startswith("DAEMONEYE_")]:
        monkeypatch.delenv(key)


def open_in_process(svc: S) -> S:
    """A service built in this process, to be fed by hand (on_message, its RPC verbs):
    its sockets opened (ZeroMQ connects lazily: with no broker in the run dir nothing is
    reached) and set up. `close_in_process` undoes it."""
    svc.open_sockets()
    svc.setup()
    return svc


def close_in_process(svc: Service) -> None:
    svc.teardown()
    svc.factory.close_all(linger_ms=0)


@pytest.fixture
def broker(start_service: Callable[..., ServiceProcess], settings: Settings) -> ServiceProcess:
    proc = start_service("broker")
    if not wait_for_endpoint(settings.endpoint("control"), 15):
        pytest.fail(f"broker did not start:\n{proc.log()}")
    return proc


@pytest.fixture
def factory(settings: Settings) -> Iterator[SocketFactory]:
    f = SocketFactory(settings, zmq.Context())
    yield f
    f.close_all(linger_ms=0)
    f.context.term()


@pytest.fixture
def rpc_client(factory: SocketFactory, settings: Settings) -> RpcClient:
    return RpcClient(factory, settings.endpoint("control"), "test-client", 3.0)


@pytest.fixture
def subscribe(factory: SocketFactory, settings: Settings) -> Callable[..., Subscriber]:
    def make(*prefixes: str) -> Subscriber:
        sock = factory.connect(zmq.SUB, settings.endpoint("events-out"))
        return Subscriber(sock, prefixes, settings.bus.max_event_bytes)

    return make


def pytest_report_header(config: pytest.Config) -> str:
    return f"python {sys.version.split()[0]}, euid {os.geteuid()}"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, unmounted afterwards; skips without root or mount."""
    from tests.tmpfs import mount_tmpfs, unmount

    mnt = tmp_path / "fs"
    why = mount_tmpfs(mnt)
    if why:
        pytest.skip(why)
    try:
        yield mnt
    finally:
        unmount(mnt)
