"""Every verb's --json output, from real services, has exactly the shape docs/CLI.md states.

A field added, renamed or retyped fails here and in the document's check, so neither
scripts nor the document can drift from what the console prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from daemoneye.bus import Publisher, SocketFactory, Topics
from daemoneye.config import Settings
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import daemoneye, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CLI.md"
RULES = ROOT / "deploy" / "rules"
OPT = type(None)  # a field that may be null

STATUS_ROW = {
    "service": str,
    "service_id": str,
    "pid": (int, OPT),
    "hostname": str,
    "boot_id": str,
    "state": str,
    "service_state": str,
    "registered": bool,
    "last_heartbeat_ns": int,
    "heartbeat_age_s": (float, OPT),
    "heartbeat_interval_s": (float, int),
    "events_per_sec": (float, int),
    "queue_depth": int,
    "rss_bytes": int,
    "cpu_percent": (float, int),
    "uptime_s": (float, int),
    "notes": list,
    "metrics": dict,
    "verbs": list,
}
PS_ROW = {
    "pid": int,
    "parent": (int, OPT),
    "name": (str, OPT),
    "path": (str, OPT),
    "cmdline": (str, OPT),
    "username": (str, OPT),
    "uid": (int, OPT),
    "euid": (int, OPT),
    "state": (str, OPT),
    "threads": (int, OPT),
    "resident_size": (int, OPT),
    "start_time": (int, OPT),
    "cwd": (str, OPT),
    "sha256": (str, OPT),
    "collector": (str, OPT),
}
RULE_SUMMARY = {
    "id": str,
    "name": str,
    "severity": str,
    "enabled": bool,
    "state": str,
    "mode": str,
    "path": str,
    "tags": list,
    "runs": int,
    "matches": int,
    "avg_ms": (float, int),
    "suppressed": int,
    "exceptions": list,
}
RULES_LIST = {"dir": str, "rules": list, "problems": list}
RULES_TEST = {"results": list, "problems": list}
RULES_TEST_RESULT = {"id": str, "name": str, "severity": str, "columns": list, "rows": list}
RULES_VALIDATE = {"ok": bool, "valid": list, "problems": list}
RULES_VALID = {"id": str, "path": str}
RULES_PROBLEM = {"path": str, "rule_id": str, "line": int, "reason": str}
TAP_LINE = {"topic": str, "envelope": dict}
ENVELOPE = {
    "schemaVersion": int,
    "sourceId": str,
    "bootId": str,
    "seq": int,
    "sentNs": int,
    "body": dict,
}
LEDGER_VERIFY = {
    "ok": bool,
    "size": int,
    "from": int,
    "to": int,
    "checkpoints_verified": int,
    "root_hash": str,
    "first_bad_entry": (int, OPT),
    "problem": (str, OPT),
    "warnings": list,
}
LEDGER_PROVE = {
    "leaf_index": int,
    "tree_size": int,
    "entry_hash": str,
    "leaf_hash": str,
    "root_hash": str,
    "audit_path": list,
    "entry": str,
}
LEDGER_PROVE_OPTIONAL = {"payload": str, "checkpoint": str}
LEDGER_CONSISTENCY = {
    "old_size": int,
    "new_size": int,
    "old_root": str,
    "new_root": str,
    "proof": list,
}
LEDGER_CONSISTENCY_OPTIONAL = {"old_checkpoint": str, "new_checkpoint": str}
LEDGER_ENTRY = {
    "seq": int,
    "time_ns": int,
    "actor": str,
    "action": str,
    "payload_hash": str,
    "prev_hash": str,
    "entry_hash": str,
}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def piped(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`daemoneye ARGS` into a pipe: no traceback, no escape codes (and exit 0 if `check`)."""
    out = daemoneye(*args, env=env)
    if check:
        assert out.returncode == 0, f"{args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    assert "\x1b[" not in out.stdout, "escape codes in piped --json output"
    return out


def shape(doc: Any, fields: dict[str, Any], optional: dict[str, Any] | None = None) -> None:
    """Exactly these keys (plus any of `optional`), each of the stated type."""
    assert isinstance(doc, dict), doc
    optional = optional or {}
    assert set(fields) <= set(doc), f"missing {set(fields) - set(doc)} in {doc}"
    assert set(doc) <= set(fields) | set(optional), f"undocumented {set(doc) - set(fields)}"
    for key, value in doc.items():
        want = fields.get(key, optional.get(key))
        # bool is an int in Python: an int field must not silently become a bool
        assert not (isinstance(value, bool) and want is int), (key, value)
        assert isinstance(value, want), f"{key} = {value!r} is not {want}"


def documented(section: str, *fields: dict[str, Any]) -> None:
    """docs/CLI.md's section for this verb names every field in backticks."""
    text = DOC.read_text()
    match = re.search(rf"^### `{re.escape(section)}`\n(.*?)(?=^### |\Z)", text, re.M | re.S)
    assert match, f"docs/CLI.md has no section ### `{section}`"
    body = match.group(1)
    for group in fields:
        for key in group:
            assert f"`{key}`" in body, f"docs/CLI.md `{section}` does not document `{key}`"


def health(rpc_client: RpcClient, target: str) -> bool:
    try:
        return bool(rpc_client.call(target, "health", timeout_s=1).value)
    except RpcError:
        return False


def test_detector_and_broker_verbs_json(
    broker: Any,
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    tmp_path: Path,
) -> None:
    env = {
        **run_env,
        "DAEMONEYE_DETECTOR__RULES_DIR": str(RULES),
        "DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S": "1",
    }
    start_service("collector", env=env)
    start_service("detector", env=env)
    wait_for(lambda: health(rpc_client, "control.detector"), 30, "the detector")
    count = {"sql": "SELECT count(*) FROM processes"}
    wait_for(
        lambda: rpc_client.call("control.detector", "query", count).value["rows"][0][0] > 0,
        30,
        "the live table to fill from the collector",
    )

    rows = json.loads(piped(env, "status", "--json").stdout)
    assert {r["service"] for r in rows} >= {"broker", "collector", "detector"}
    for row in rows:
        shape(row, STATUS_ROW)
        assert row["state"] in ("healthy", "unhealthy")
    documented("daemoneye status", STATUS_ROW)
    checked = json.loads(piped(env, "status", "--check", "detector", "--json").stdout)
    assert [r["service"] for r in checked] == [r["service"] for r in rows]

    procs = json.loads(piped(env, "ps", "--json").stdout)
    assert procs and any(p["pid"] == os.getpid() for p in procs)
    for proc in procs:
        shape(proc, PS_ROW)
    documented("daemoneye ps", PS_ROW)

    sql = f"SELECT pid, name, uid FROM processes WHERE pid = {os.getpid()}"
    [mine] = json.loads(piped(env, "query", sql, "--json").stdout)
    assert mine == {"pid": os.getpid(), "name": mine["name"], "uid": os.getuid()}
    assert json.loads(piped(env, "query", "SELECT 1 AS one WHERE 0", "--json").stdout) == []

    listing = json.loads(piped(env, "rules", "list", "--json").stdout)
    shape(listing, RULES_LIST)
    assert listing["rules"] and listing["problems"] == []
    for rule in listing["rules"]:
        shape(rule, RULE_SUMMARY)
    documented("daemoneye rules list", RULES_LIST, RULE_SUMMARY)

    rule_file = RULES / "discovery.yml"
    tested = json.loads(piped(env, "rules", "try", str(rule_file), "--json").stdout)
    shape(tested, RULES_TEST)
    assert tested["results"]
    for result in tested["results"]:
        shape(result, RULES_TEST_RESULT)
        assert all(len(r) == len(result["columns"]) for r in result["rows"])
    documented("daemoneye rules try", RULES_TEST, RULES_TEST_RESULT)

    lines = piped(env, "tap", "control.health.", "--json", "--count", "3").stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        msg = json.loads(line)
        shape(msg, TAP_LINE)
        shape(msg["envelope"], ENVELOPE)
        assert list(msg["envelope"]["body"]) == ["heartbeat"]
    documented("daemoneye tap", TAP_LINE, ENVELOPE)


RULES_CASES = {
    "ok": bool, "rules": int, "cases": int, "failed": list, "problems": list, "missing": list,
}  # fmt: skip


def test_rules_test_json(run_env: dict[str, str]) -> None:
    out = piped(run_env, "rules", "test", str(RULES / "discovery.yml"), "--strict", "--json")
    result = json.loads(out.stdout)
    shape(result, RULES_CASES)
    assert out.returncode == 0 and result["ok"] and result["cases"] > result["rules"] > 0
    documented("daemoneye rules test", RULES_CASES)


def test_rules_validate_json(tmp_path: Path, run_env: dict[str, str]) -> None:
    good = json.loads(piped(run_env, "rules", "validate", str(RULES), "--json").stdout)
    shape(good, RULES_VALIDATE)
    assert good["ok"] and good["problems"] == [] and good["valid"]
    for valid in good["valid"]:
        shape(valid, RULES_VALID)

    bad = tmp_path / "bad.yml"
    bad.write_text("id: bad-one\nname: Bad\nseverity: high\nsql: DELETE FROM processes\n")
    out = piped(run_env, "rules", "validate", str(bad), str(RULES), "--json", check=False)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    shape(doc, RULES_VALIDATE)
    assert doc["ok"] is False and doc["valid"] == good["valid"]
    [problem] = doc["problems"]
    shape(problem, RULES_PROBLEM)
    assert problem["path"] == str(bad) and problem["rule_id"] == "bad-one"
    documented("daemoneye rules validate", RULES_VALIDATE, RULES_VALID, RULES_PROBLEM)


def test_ledger_verbs_json(
    broker: Any,
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    factory: SocketFactory,
    settings: Settings,
) -> None:
    env = {**run_env, "DAEMONEYE_LEDGER__CHECKPOINT_EVERY_ENTRIES": "2"}
    ledger = start_service("ledger", env=env)
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "tester@test")

    def size() -> int:
        try:
            return rpc_client.call("control.ledger", "head", timeout_s=1).value["size"]
        except RpcError:
            return -1

    def recorded() -> bool:  # publish audit records until the ledger holds a few
        body = {"actor": "tester@test", "action": "probe", "subject": "", "detailJson": "{}"}
        pub.publish(Topics.audit("tester"), "auditRecord", {**body, "timeNs": time.time_ns()})
        return size() >= 4

    wait_for(recorded, 30, "the ledger to record audit records from the bus")
    assert ledger.stop() == 0  # a clean stop signs a checkpoint over everything

    verified = json.loads(piped(env, "ledger", "verify", "--json").stdout)
    shape(verified, LEDGER_VERIFY)
    total = verified["size"]
    assert verified["ok"] and verified["from"] == 0 and verified["to"] == total >= 3
    assert verified["checkpoints_verified"] >= 1 and HEX64.match(verified["root_hash"])
    assert verified["problem"] is None and verified["first_bad_entry"] is None
    documented("daemoneye ledger verify", LEDGER_VERIFY)

    proof = json.loads(piped(env, "ledger", "prove", "1", "--payload", "--json").stdout)
    shape(proof, LEDGER_PROVE, LEDGER_PROVE_OPTIONAL)
    assert proof["leaf_index"] == 1 and proof["tree_size"] == total
    assert "payload" in proof and "checkpoint" in proof
    assert all(HEX64.match(h) for h in proof["audit_path"])
    documented("daemoneye ledger prove", LEDGER_PROVE, LEDGER_PROVE_OPTIONAL)

    cons = json.loads(piped(env, "ledger", "consistency", "2", str(total), "--json").stdout)
    shape(cons, LEDGER_CONSISTENCY, LEDGER_CONSISTENCY_OPTIONAL)
    assert (cons["old_size"], cons["new_size"]) == (2, total) and cons["proof"]
    documented("daemoneye ledger consistency", LEDGER_CONSISTENCY, LEDGER_CONSISTENCY_OPTIONAL)

    shown = piped(env, "ledger", "show", "--count", "3", "--json").stdout.splitlines()
    entries = [json.loads(line) for line in shown]
    assert [e["seq"] for e in entries] == [0, 1, 2]
    for e in entries:
        shape(e, LEDGER_ENTRY)
    assert entries[1]["prev_hash"] == entries[0]["entry_hash"]
    documented("daemoneye ledger show", LEDGER_ENTRY)


@pytest.mark.parametrize(
    "section",
    [
        "daemoneye up",
        "daemoneye run",
        "daemoneye config",
        "daemoneye keys",
        "daemoneye dashboard",
        "daemoneye rules reload",
        "daemoneye rules import-sigma",
        "daemoneye rules except",
        "daemoneye ledger checkpoint",
        "daemoneye ledger key",
        "daemoneye ledger verify-proof",
    ],
)
def test_verbs_without_json_are_documented(section: str) -> None:
    documented(section)


ALERT_FIELDS = {
    "key": int,
    "type": str,
    "alertId": str,
    "ruleId": str,
    "ruleName": str,
    "severity": str,
    "title": str,
    "description": str,
    "process": dict,
    "rowJson": str,
    "dedupKey": str,
    "firstSeenNs": int,
    "lastSeenNs": int,
    "count": int,
    "repeats": int,
    "tags": list,
    "timeNs": int,
    "receivedNs": int,
    "hostname": str,
    "sourceId": str,
    "sinks": list,
    "deliveries": dict,
    "ancestry": list,
}
ALERT_OPTIONAL = {"heldBy": list, "incidentId": str, "incidents": list}
ANCESTOR = {
    "pid": int,
    "ppid": int,
    "startTicks": int,
    "startTime": (float, int),
    "name": str,
    "exePath": str,
    "cmdline": list,
    "uid": int,
    "username": str,
    "sessionId": int,
    "exited": bool,
    "source": str,
}
INCIDENT = {
    "incidentId": str,
    "state": str,
    "severity": str,
    "title": str,
    "hostname": str,
    "sessionId": int,
    "firstSeenNs": int,
    "lastSeenNs": int,
    "alerts": int,
    "delivered": int,
    "held": int,
    "updates": int,
    "rules": list,
    "processes": list,
    "processCount": int,
    "alertKeys": list,
}


def test_alerts_json(
    broker: Any,
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    factory: SocketFactory,
    settings: Settings,
) -> None:
    start_service("alerter")
    wait_for(lambda: health(rpc_client, "control.alerter"), 30, "the alerter")
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "detector@test")
    alert = {
        "alertId": "a-json",
        "ruleId": "r-json",
        "ruleName": "JSON shape",
        "severity": "high",
        "title": "shape probe",
        "process": {"pid": 4242, "name": "probe", "exePath": "/usr/bin/probe", "sessionId": 77},
        "ancestry": [
            {
                "pid": 4200,
                "ppid": 1,
                "name": "bash",
                "exePath": "/bin/bash",
                "cmdline": ["bash"],
                "sessionId": 77,
                "source": "live",
            },
        ],
        "timeNs": time.time_ns(),
    }

    def listed() -> list[dict[str, Any]]:  # publish until the alerter has stored it
        pub.publish(Topics.alert("high"), "alert", alert)
        out = piped(run_env, "alerts", "--json")
        return [json.loads(line) for line in out.stdout.splitlines()]

    [first, *_] = wait_for(listed, 30, "the alert in `daemoneye alerts --json`")
    shape(first, ALERT_FIELDS, ALERT_OPTIONAL)
    assert (first["ruleId"], first["process"]["pid"]) == ("r-json", 4242)
    assert set(first["deliveries"]) == set(first["sinks"])
    shape(first["ancestry"][0], ANCESTOR)
    documented("daemoneye alerts", ALERT_FIELDS, ALERT_OPTIONAL, ANCESTOR)

    out = piped(run_env, "alerts", "--incidents", "--json")
    [incident, *_] = [json.loads(line) for line in out.stdout.splitlines()]
    shape(incident, INCIDENT)
    assert incident["incidentId"] == first["incidentId"] and incident["severity"] == "high"
    documented("daemoneye alerts --incidents", INCIDENT)
