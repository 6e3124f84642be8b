"""Access control: run-dir ownership and modes, ipc permissions, CurveZMQ over tcp://."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import zmq

from daemoneye.bus import Publisher, SocketFactory, Subscriber, wait_for_endpoint
from daemoneye.rpc import RpcClient, RpcTimeout
from daemoneye.security import generate_keypair
from tests.conftest import free_port, settings_of, wait_for

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def test_run_dir_and_sockets_have_safe_modes(broker, settings) -> None:
    assert oct(settings.run_dir.stat().st_mode & 0o777) == oct(0o750)
    for name in ("events-in", "events-out", "control"):
        assert oct((settings.run_dir / name).stat().st_mode & 0o777) == oct(0o660)


def test_a_symlinked_run_dir_is_refused(start_service, run_env, tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = Path(f"/tmp/de-link-{os.getpid()}")
    link.symlink_to(real)
    try:
        proc = start_service("broker", env=dict(run_env, DAEMONEYE_RUN_DIR=str(link)))
        assert proc.proc.wait(30) == 1
        assert "is a symlink; refusing" in proc.log()
    finally:
        link.unlink()


@needs_root
def test_a_run_dir_owned_by_someone_else_is_refused(start_service, run_env) -> None:
    foreign = Path(f"/tmp/de-foreign-{os.getpid()}")
    foreign.mkdir(mode=0o750)
    os.chown(foreign, NOBODY, NOBODY)
    try:
        proc = start_service("broker", env=dict(run_env, DAEMONEYE_RUN_DIR=str(foreign)))
        assert proc.proc.wait(30) == 1
        assert f"is owned by uid {NOBODY}" in proc.log()
    finally:
        foreign.rmdir()


@needs_root
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3")
def test_an_unprivileged_user_cannot_reach_the_sockets(broker, settings) -> None:
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "else:\n"
        "    print('connected')\n"
    )
    control = str(settings.run_dir / "control")
    # The system interpreter: the project's may live where `nobody` cannot read it.
    out = subprocess.run(
        ["/usr/bin/python3", "-c", script, control],
        preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "denied", out.stderr


@pytest.fixture
def curve_env(run_env, tmp_path):
    keys = tmp_path / "keys"
    generate_keypair(keys, "broker")
    _, _ = generate_keypair(keys, "client")
    generate_keypair(tmp_path / "intruder-keys", "client")
    generate_keypair(tmp_path / "intruder-keys", "broker")  # never used: the real one is copied
    (keys / "authorized").mkdir()
    (keys / "authorized" / "client.key").write_bytes((keys / "client.key").read_bytes())
    ports = {name: free_port() for name in ("EVENTS_IN", "EVENTS_OUT", "CONTROL")}
    env = dict(run_env, DAEMONEYE_BUS__KEYS_DIR=str(keys))
    for name, port in ports.items():
        env[f"DAEMONEYE_BUS__{name}"] = f"tcp://127.0.0.1:{port}"
    return env, keys, tmp_path / "intruder-keys"


def test_curve_admits_listed_keys_and_refuses_others(start_service, curve_env, monkeypatch) -> None:
    env, keys, intruder_keys = curve_env
    broker = start_service("broker", env=env)
    trusted = settings_of(env, monkeypatch)
    port = int(trusted.bus.control.rsplit(":", 1)[1])
    wait_for(lambda: _listening(port) or broker.proc.poll() is not None, 20, "the tcp broker")
    assert broker.proc.poll() is None, broker.log()

    factory = SocketFactory(trusted, zmq.Context())
    try:
        client = RpcClient(factory, trusted.endpoint("control"), "trusted", 3.0)
        assert client.call("control.broker", "ping").value == {}
        # The bus works over CurveZMQ too.
        sub = Subscriber(factory.connect(zmq.SUB, trusted.endpoint("events-out")), ["t."], 1 << 20)
        pub = Publisher(factory.connect(zmq.PUB, trusted.endpoint("events-in")), "tcp-pub")
        wait_for(lambda: pub.publish("t.x", "empty") and sub.recv(50), 15, "a message over tcp")

        # An intruder with its own client key (and even a copy of the broker's public key).
        (intruder_keys / "broker.key").write_bytes((keys / "broker.key").read_bytes())
        intruder = settings_of(dict(env, DAEMONEYE_BUS__KEYS_DIR=str(intruder_keys)), monkeypatch)
        other = SocketFactory(intruder, zmq.Context())
        try:
            with pytest.raises(RpcTimeout):
                RpcClient(other, intruder.endpoint("control"), "intruder", 1.0).call(
                    "control.broker", "ping"
                )
        finally:
            other.close_all(linger_ms=0)
            other.context.term()
        refused = wait_for(
            lambda: client.call("control.broker", "stats").value["auth_refused"], 10, "refusal"
        )
        assert refused >= 1
        assert "refused CurveZMQ client key" in broker.log()
    finally:
        factory.close_all(linger_ms=0)
        factory.context.term()


def test_missing_keys_stop_the_broker_with_a_clear_error(start_service, curve_env) -> None:
    env, _, _ = curve_env
    broker = start_service("broker", env=dict(env, DAEMONEYE_BUS__SERVER_KEY="absent"))
    assert broker.proc.wait(30) == 1
    assert "cannot read key pair" in broker.log() and "daemoneye keys generate" in broker.log()


def test_keys_generate_makes_a_private_pair(tmp_path, cli) -> None:
    out = cli("keys", "generate", "host2", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "host2.key").is_file()
    assert (tmp_path / "host2.key_secret").stat().st_mode & 0o777 == 0o600
    again = cli("keys", "generate", "host2", "--dir", str(tmp_path))
    assert again.returncode == 1 and "--force" in again.stderr


def test_keys_generate_here_makes_the_authorized_dir(run_env, cli) -> None:
    """Into <data_dir>/keys ("here" in the README): the pair and keys/authorized/."""
    out = cli("keys", "generate", "broker")
    assert out.returncode == 0, out.stderr
    keys = Path(run_env["DAEMONEYE_DATA_DIR"]) / "keys"
    assert (keys / "broker.key").is_file() and (keys / "broker.key_secret").is_file()
    assert (keys / "authorized").is_dir()
    assert (keys / "authorized").stat().st_mode & 0o777 == 0o700
    assert str(keys / "authorized") in out.stdout


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_wait_for_endpoint_accepts_tcp() -> None:
    assert wait_for_endpoint("tcp://127.0.0.1:1", 0.1)  # tcp is not probed: no file to wait on
