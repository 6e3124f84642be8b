"""RPC through the broker, the service base and the registry, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemoneye.config import Settings
from daemoneye.rpc import RpcError, RpcTimeout
from tests.conftest import wait_for

ECHO = Path(__file__).with_name("echo_service.py")


@pytest.fixture
def echo(broker, run_env, tmp_path):
    log = open(tmp_path / "echo.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(ECHO), "--id", "echo-1"],
        env=run_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(15)
    log.close()


def registered(rpc_client, service_id: str, state: str = "healthy") -> bool:
    rows = rpc_client.call("control.broker", "registry").value
    return any(
        r["service_id"] == service_id and r["state"] == state and r["registered"] for r in rows
    )


def test_rpc_reaches_a_service_by_id_and_by_name(echo, rpc_client) -> None:
    wait_for(lambda: registered(rpc_client, "echo-1"), 15, "echo to register")
    result = rpc_client.call("control.echo.echo-1", "echo", {"x": 1}, payload=b"\x01\x02")
    assert result.value == {"params": {"x": 1}, "payload": "0102"}
    assert rpc_client.call("control.echo", "health").value["service_id"] == "echo-1"


def test_a_service_answers_only_once_set_up(broker, run_env, tmp_path, rpc_client) -> None:
    """A request routed to a service still in setup() (registered early, as the
    collector does to know the bus is up) is answered after setup, not during it: a
    `health` answered then told tests the collector was up before it read the kernel."""
    log = open(tmp_path / "slow.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(ECHO), "--id", "slow-1", "--slow-start", "2"],
        env=run_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: registered(rpc_client, "slow-1"), 15, "slow-1 to register")
        # sent while it sleeps in setup(): queued beside the broker's reply to register
        assert rpc_client.call("control.echo.slow-1", "ready", timeout_s=15).value == {
            "set_up": True
        }
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_unknown_verb_and_unknown_target_are_clear_errors(echo, rpc_client) -> None:
    wait_for(lambda: registered(rpc_client, "echo-1"), 15, "echo to register")
    with pytest.raises(RpcError, match="has no verb 'nope'") as err:
        rpc_client.call("control.echo", "nope")
    assert err.value.code == "unknown_verb"
    with pytest.raises(RpcError, match=r"no service registered as control\.ghost") as err:
        rpc_client.call("control.ghost", "health")
    assert err.value.code == "unknown_target"


def test_a_hung_service_times_out_with_a_clear_error(echo, rpc_client) -> None:
    wait_for(lambda: registered(rpc_client, "echo-1"), 15, "echo to register")
    os.kill(echo.pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(RpcTimeout, match=r"no reply within 0.5 s \(peer dead or hung\)"):
        rpc_client.call("control.echo", "echo", timeout_s=0.5)
    assert time.monotonic() - started < 3
    # The broker notices the silence: unhealthy after 3 missed heartbeats.
    wait_for(lambda: registered(rpc_client, "echo-1", "unhealthy"), 15, "echo unhealthy")
    os.kill(echo.pid, signal.SIGCONT)
    wait_for(lambda: registered(rpc_client, "echo-1", "healthy"), 15, "echo healthy again")
    assert rpc_client.call("control.echo", "echo", {"back": True}).value["params"] == {"back": True}


def test_a_dead_service_is_refused_at_once_then_removed(echo, rpc_client) -> None:
    wait_for(lambda: registered(rpc_client, "echo-1"), 15, "echo to register")
    echo.kill()
    echo.wait(10)

    def refused():
        try:
            rpc_client.call("control.echo", "echo", timeout_s=2)
        except RpcError as exc:
            return exc
        return None

    err = wait_for(refused, 10, "a refusal")
    assert err.code in ("unreachable", "unknown_target", "timeout")
    wait_for(
        lambda: (
            not any(
                r["service_id"] == "echo-1"
                for r in rpc_client.call("control.broker", "registry").value
            )
        ),
        20,
        "echo to be removed",
    )
    with pytest.raises(RpcError) as refusal:
        rpc_client.call("control.echo", "echo", timeout_s=2)
    assert refusal.value.code == "unknown_target"


def test_graceful_shutdown_deregisters(echo, rpc_client) -> None:
    wait_for(lambda: registered(rpc_client, "echo-1"), 15, "echo to register")
    assert rpc_client.call("control.echo", "graceful_shutdown").value == {"stopping": True}
    assert echo.wait(15) == 0
    rows = rpc_client.call("control.broker", "registry").value
    assert [r["service_id"] for r in rows] == [
        r["service_id"] for r in rows if r["service"] == "broker"
    ]


def test_rpc_with_no_broker_times_out(settings: Settings, rpc_client) -> None:
    with pytest.raises(RpcTimeout):
        rpc_client.call("control.broker", "health", timeout_s=0.3)


def test_services_see_each_others_heartbeats_and_lifecycle(echo, subscribe, rpc_client) -> None:
    sub = subscribe("control.")
    seen: set[str] = set()

    def both():
        msg = sub.recv(100)
        if msg is not None and msg.kind == "heartbeat":
            seen.add(msg.body.service)
        return {"broker", "echo"} <= seen

    wait_for(both, 15, "heartbeats of broker and echo")


def test_invalid_config_fails_at_start_naming_key_value_reason(cli) -> None:
    out = cli("run", "broker", DAEMONEYE_HEARTBEAT_INTERVAL_S="-1", timeout=30)
    assert out.returncode == 2
    assert "heartbeat_interval_s = '-1'" in out.stderr and "greater than 0" in out.stderr
