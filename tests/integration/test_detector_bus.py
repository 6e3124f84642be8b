"""The detector as a real service on a real broker, fed synthetic ProcessEvents by a
publisher on events-in: alerts, differential firing, budgets, audit, RPC and console."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from daemoneye.bus import Publisher, Subscriber
from daemoneye.rpc import RpcError
from tests.conftest import wait_for

TMP_RULE = """\
id: tmp-exec
name: exec from tmp
severity: high
tags: [test]
sql: SELECT pid, path, cmdline FROM processes WHERE path LIKE '/tmp/%'
"""
FOREVER_RULE = """\
id: forever
name: runs forever
severity: low
interval: 0.2
sql: |
  SELECT count(*) FROM process_events a, process_events b, process_events c, process_events d
"""
_ticks = itertools.count(50_000)


def record(pid: int, path: str, ppid: int = 1) -> dict[str, Any]:
    return {
        "pid": pid,
        "ppid": ppid,
        "startTicks": next(_ticks),
        "startTime": time.time(),
        "name": path.rsplit("/", 1)[-1][:15],
        "exePath": path,
        "cmdline": [path, "--flag"],
        "uid": 1000,
        "euid": 1000,
        "username": "tester",
    }


class Feeder:
    """Publishes synthetic collector events on events-in."""

    def __init__(self, factory, settings) -> None:
        sock = factory.connect(zmq.PUB, settings.endpoint("events-in"))
        self.publisher = Publisher(sock, "collector@synthetic")

    def send(self, kind: str, rec: dict[str, Any], **extra: Any) -> None:
        body = {"kind": kind, "source": "netlink", "timeNs": time.time_ns(), "record": rec, **extra}
        self.publisher.publish(f"events.process.{kind}", "processEvent", body)


def alerts_until(sub: Subscriber, predicate, timeout: float = 15.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sub.recv(200)
        if msg is not None and msg.kind == "alert":
            got.append(msg.body.to_dict())
            if predicate(got[-1]):
                return got
    pytest.fail(f"no matching alert within {timeout} s; got {[a.get('ruleId') for a in got]}")


def prime_alerts(feeder: Feeder, alerts: Subscriber) -> None:
    """Subscriptions join late: send matching processes until one alert comes through."""
    for pid in range(9000, 9100):
        feeder.send("start", record(pid, "/tmp/prime"))
        msg = alerts.recv(300)
        if msg is not None:
            alerts.drain()  # primes that were in flight
            return
    pytest.fail("no alert came through while priming")


def query(rpc_client, sql: str) -> list[list[Any]]:
    return rpc_client.call("control.detector", "query", {"sql": sql}, timeout_s=5).value["rows"]


@pytest.fixture
def detector_env(run_env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "tmp.yml").write_text(TMP_RULE)
    (rules / "forever.yml").write_text(FOREVER_RULE)
    env = {
        **run_env,
        "DAEMONEYE_DETECTOR__RULES_DIR": str(rules),
        "DAEMONEYE_DETECTOR__SCHEDULED_BUDGET_MS": "100",
        "DAEMONEYE_DETECTOR__SNAPSHOT_TIMEOUT_S": "0.5",
    }
    return env, rules


@pytest.fixture
def detector(broker, start_service, detector_env, rpc_client, factory, settings):
    env, rules = detector_env
    proc = start_service("detector", env=env)
    wait_for(lambda: _healthy(rpc_client), 20, "the detector to answer health")
    feeder = Feeder(factory, settings)
    # the PUB socket joins late: feed a benign process until the detector has it
    benign = record(7, "/usr/bin/benign")
    wait_for(
        lambda: feeder.send("start", benign) or query(rpc_client, "SELECT pid FROM processes"),
        15,
        "the detector to receive synthetic events",
    )
    return proc, feeder, rules


def _healthy(rpc_client) -> bool:
    try:
        return bool(rpc_client.call("control.detector", "health", timeout_s=0.5).value)
    except RpcError:
        return False


def test_alerts_fire_once_per_process_and_budget_disables_runaway_rule(
    detector, subscribe, rpc_client
) -> None:
    proc, feeder, _ = detector
    audits = subscribe("audit.detector")
    alerts = subscribe("alerts.")
    prime_alerts(feeder, alerts)

    def tmp_exec_pid(alert: dict[str, Any]) -> int | None:
        """The process of a tmp-exec alert (the aggregate `forever` alerts meanwhile,
        with no process, whenever its count changed)."""
        return alert["process"]["pid"] if alert["ruleId"] == "tmp-exec" else None

    evil = record(100, "/tmp/evil")
    feeder.send("start", evil)
    got = alerts_until(alerts, lambda a: tmp_exec_pid(a) == 100)
    alert = got[-1]
    assert alert["ruleId"] == "tmp-exec" and alert["severity"] == "high"
    row = json.loads(alert["rowJson"])
    assert row == {"pid": 100, "path": "/tmp/evil", "cmdline": "/tmp/evil --flag"}
    assert alert["process"]["exePath"] == "/tmp/evil" and alert["tags"] == ["test"]

    # still running and modified: no new alert; a second matching process: one alert
    feeder.send("modify", {**evil, "threads": 3}, changedFields=["threads"])
    feeder.send("modify", {**evil, "threads": 4}, changedFields=["threads"])
    feeder.send("start", record(101, "/tmp/evil"))
    got = alerts_until(alerts, lambda a: tmp_exec_pid(a) == 101)
    pids = [pid for a in got if (pid := tmp_exec_pid(a)) is not None and pid < 9000]
    assert pids == [101], pids

    # the runaway scheduled rule is stopped by its budget, disabled and audited
    # (a 4-way self-join of process_events: cheap while the table is small, not after this)
    for pid in range(1000, 1300):
        feeder.send("start", record(pid, "/usr/bin/filler"))

    def disabled() -> bool:
        msg = audits.recv(100)
        if msg is None:
            return False
        return msg.body.action == "rule.disable" and msg.body.subject == "forever"

    wait_for(disabled, 20, "the runaway rule to be disabled")
    listed = rpc_client.call("control.detector", "rules_list").value["rules"]
    state = {r["id"]: r["state"] for r in listed}
    assert state["forever"].startswith("disabled") and "time budget" in state["forever"]
    assert state["tmp-exec"] == "active"
    # ...and the others keep firing
    feeder.send("start", record(102, "/tmp/third"))
    alerts_until(alerts, lambda a: tmp_exec_pid(a) == 102)
    assert proc.proc.poll() is None


def test_query_ps_rules_rpc_and_console(detector, rpc_client, cli, tmp_path) -> None:
    _, feeder, rules = detector
    feeder.send("start", record(200, "/usr/sbin/nginx"))
    feeder.send("start", record(201, "/bin/sh", ppid=200))
    wait_for(lambda: query(rpc_client, "SELECT pid FROM processes WHERE pid = 201"), 10, "pid 201")
    rows = query(rpc_client, "SELECT pid, parent_name FROM processes WHERE pid = 201")
    assert rows == [[201, "nginx"]]
    with pytest.raises(RpcError, match="only a SELECT"):
        query(rpc_client, "DELETE FROM processes")
    with pytest.raises(RpcError, match="readfile"):
        query(rpc_client, "SELECT readfile('/etc/passwd')")
    history = rpc_client.call("control.detector", "history", {"pid": 201}).value
    assert history and history[0]["pid"] == 201 and history[0]["event"] == "start"

    sql = "SELECT pid, name FROM processes WHERE pid IN (200, 201) ORDER BY pid"
    out = cli("query", sql, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"pid": 200, "name": "nginx"}, {"pid": 201, "name": "sh"}]
    out = cli("query", "SELECT * FROM sqlite_master")
    assert out.returncode == 1 and "system table" in out.stderr
    out = cli("ps", "--json")
    assert out.returncode == 0 and 201 in [p["pid"] for p in json.loads(out.stdout)]
    out = cli("ps", "--tree")
    assert out.returncode == 0 and "nginx" in out.stdout
    out = cli("rules", "list", "--json")
    assert {r["id"] for r in json.loads(out.stdout)["rules"]} == {"tmp-exec", "forever"}

    test_file = tmp_path / "try.yml"
    test_file.write_text(
        "id: try\nname: try\nsql: SELECT pid, name FROM processes WHERE parent_name = 'nginx'\n"
    )
    out = cli("rules", "try", str(test_file), "--json")
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)["results"]
    assert result["rows"] == [[201, "sh"]]

    # reload picks up a new rule without losing the live table
    (rules / "nginx.yml").write_text(test_file.read_text().replace("id: try", "id: nginx-child"))
    out = cli("rules", "reload")
    assert out.returncode == 0, out.stderr
    listed = rpc_client.call("control.detector", "rules_list").value["rules"]
    assert "nginx-child" in {r["id"] for r in listed}
    assert query(rpc_client, "SELECT count(*) FROM processes WHERE pid = 201") == [[1]]
    (rules / "broken.yml").write_text("id: broken\nname: b\nsql: DROP TABLE processes\n")
    out = cli("rules", "reload")
    assert out.returncode == 1 and "broken.yml" in out.stderr and "only a SELECT" in out.stderr


def test_runs_at_the_configured_priority(detector) -> None:
    """As the collector: a fork storm that saturates the CPU must not starve the rules
    (every thread, the bus's I/O threads included)."""
    if os.geteuid() != 0:
        pytest.skip("raising the priority needs root (CAP_SYS_NICE)")
    proc, _, _ = detector
    tids = os.listdir(f"/proc/{proc.pid}/task")
    stats = [Path(f"/proc/{proc.pid}/task/{t}/stat").read_text() for t in tids]
    nice = {int(stat.rsplit(")", 1)[1].split()[16]) for stat in stats}  # field 19: nice
    assert nice == {-10}, f"threads' niceness {nice}"


def test_a_rule_compile_that_does_not_answer_in_time_is_refused_and_the_detector_runs(
    broker, start_service, detector_env, rpc_client
) -> None:
    """The rules are compiled in a forked child (rules/offload.py); one that has not
    answered within compile_timeout_s is killed. Here no compile can be that fast: the
    load is refused with a problem that says so, and the detector still serves."""
    env, _ = detector_env
    start_service("detector", env={**env, "DAEMONEYE_DETECTOR__COMPILE_TIMEOUT_S": "0.000001"})
    wait_for(lambda: _healthy(rpc_client), 20, "the detector to answer health")
    listed = rpc_client.call("control.detector", "rules_list").value
    assert listed["rules"] == []
    assert any("did not answer within" in p for p in listed["problems"]), listed["problems"]
    health = rpc_client.call("control.detector", "health").value
    assert any(n.startswith("rules: 1 rejected") for n in health["notes"]), health
    # its own SQL (ps) needs no compile: it still answers
    assert rpc_client.call("control.detector", "ps").value["columns"]
