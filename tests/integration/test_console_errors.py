"""The failure paths of every verb, as a user meets them: one clear line on stderr, the
documented exit code, and no Python traceback unless --debug."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import DAEMONEYE, daemoneye, wait_for

ROOT = Path(__file__).resolve().parents[2]


def one_line(out: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit `code`, stderr exactly one line naming the verb and holding `words`."""
    lines = out.stderr.splitlines()
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert len(lines) == 1, f"not one line: {out.stderr!r}"
    assert lines[0].startswith("daemoneye "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture
def quick(run_env: dict[str, str]) -> dict[str, str]:
    """No broker will ever answer here: keep the RPC deadline short."""
    return {**run_env, "DAEMONEYE_RPC_TIMEOUT_S": "0.3"}


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["status", "--check", "collector"],
        ["ps"],
        ["ps", "--json"],
        ["query", "SELECT 1"],
        ["rules", "list"],
        ["rules", "reload"],
        ["rules", "try", str(ROOT / "deploy" / "rules" / "discovery.yml")],
    ],
)
def test_no_broker(quick: dict[str, str], argv: list[str]) -> None:
    line = one_line(daemoneye(*argv, env=quick), 1, "no broker socket at", "daemoneye up")
    verb = " ".join(argv[:2]) if argv[0] == "rules" else argv[0]
    assert line.startswith(f"daemoneye {verb}: "), line


def test_no_broker_with_debug_shows_the_traceback(quick: dict[str, str]) -> None:
    out = daemoneye("ps", "--debug", env=quick)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "CommandError" in out.stderr


def test_tap_with_nothing_to_hear(quick: dict[str, str]) -> None:
    one_line(daemoneye("tap", "--timeout", "0.3", env=quick), 1, "nothing received within 0.3 s")


def test_unknown_and_unreadable_rule_files(quick: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yml")
    one_line(daemoneye("rules", "try", missing, env=quick), 1, "cannot read", missing)
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    one_line(daemoneye("rules", "try", str(binary), env=quick), 1, "not UTF-8")

    out = daemoneye("rules", "validate", missing, env=quick)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{missing}:1: rule ?: cannot read" in out.stdout

    out = daemoneye("rules", "import-sigma", missing, env=quick)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "cannot read Sigma rule" in out.stderr and out.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "verify"],
        ["ledger", "verify", "--json"],
        ["ledger", "prove", "0"],
        ["ledger", "consistency", "1", "2"],
        ["ledger", "show"],
        ["ledger", "checkpoint"],
    ],
)
def test_missing_ledger(quick: dict[str, str], argv: list[str]) -> None:
    one_line(
        daemoneye(*argv, env=quick), 1, f"daemoneye {argv[0]} {argv[1]}:", "no ledger database"
    )


def test_missing_ledger_key_and_proof_file(quick: dict[str, str], tmp_path: Path) -> None:
    one_line(daemoneye("ledger", "key", env=quick), 1, "no ledger key")
    missing = str(tmp_path / "proof.json")
    one_line(
        daemoneye("ledger", "verify-proof", missing, "--key", "x", env=quick), 1, "cannot read"
    )
    out = daemoneye("ledger", "verify-proof", "-", "--key", "x", stdin="{not json", env=quick)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr


def test_bad_configuration_exits_2(quick: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    one_line(daemoneye("status", "--config", missing, env=quick), 2, "configuration error", missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[bus]\nmax_event_bytes = 'lots'\n")
    one_line(daemoneye("ps", "--config", str(broken), env=quick), 2, "configuration error", "lots")
    env = {**quick, "DAEMONEYE_RPC_TIMEOUT_S": "-1"}
    one_line(daemoneye("query", "SELECT 1", env=env), 2, "configuration error", "rpc_timeout_s")


def test_unknown_service_exits_2(quick: dict[str, str]) -> None:
    one_line(daemoneye("run", "nosuch", env=quick), 2, "daemoneye run:", "no service 'nosuch'")
    one_line(daemoneye("up", "--only", "nosuch", env=quick), 2, "daemoneye up:", "unknown service")


def test_keys_refuse_to_overwrite(quick: dict[str, str], tmp_path: Path) -> None:
    assert daemoneye("keys", "generate", "k", "--dir", str(tmp_path), env=quick).returncode == 0
    one_line(daemoneye("keys", "generate", "k", "--dir", str(tmp_path), env=quick), 1, "--force")


def test_detector_refusals(
    broker: Any,
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
) -> None:
    # a broker but no detector: the broker says so
    one_line(
        daemoneye("ps", env=run_env),
        1,
        "daemoneye ps:",
        "no service registered as control.detector",
    )

    env = {**run_env, "DAEMONEYE_DETECTOR__RULES_DIR": str(ROOT / "deploy" / "rules")}
    start_service("detector", env=env)

    def up() -> bool:
        try:
            return bool(rpc_client.call("control.detector", "health", timeout_s=1).value)
        except RpcError:
            return False

    wait_for(up, 30, "the detector")
    for sql, reason in (
        ("DROP TABLE processes", "only a SELECT"),
        ("SELECT nosuchcol FROM processes", "unknown column 'nosuchcol'"),
        ("SELECT * FROM nosuch", "query rejected"),
        ("SELECT 1; SELECT 2", "query rejected"),
    ):
        line = one_line(daemoneye("query", sql, env=env), 1, reason)
        assert line.startswith("daemoneye query: query rejected:"), line


def test_ctrl_c_exits_130(quick: dict[str, str]) -> None:
    tap = subprocess.Popen(
        [*DAEMONEYE, "tap"],
        env=quick,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # past start-up (its ZeroMQ context exists) it is in, or on its way to, recv
        wait_for(lambda: _has_zmq_threads(tap.pid), 20, "tap to wait for messages")
        tap.send_signal(signal.SIGINT)
        _, err = tap.communicate(timeout=20)
    finally:
        if tap.poll() is None:
            tap.kill()
    assert tap.returncode == 130, err
    assert "Traceback" not in err


def _has_zmq_threads(pid: int) -> bool:
    """The process has opened its ZeroMQ context (its I/O threads exist)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except FileNotFoundError:
        return False
