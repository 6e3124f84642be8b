"""OCSF and ECS output validated against the published schemas (tests/schemas/check.py
over OCSF 1.8.0 and ECS 9.4.0, vendored), for every record type the alerter writes and
every process event kind; and the validators catch what is wrong."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from typing import Any

import pytest

from daemoneye import procfs
from daemoneye.formats import ecs, encode_alert, key_of, ocsf
from tests.schemas.check import ecs_problems, ocsf_problems


def real_process(pid: int) -> dict[str, Any]:
    record = procfs.read_process(pid)
    assert record is not None
    return record


@pytest.fixture(scope="module")
def me() -> dict[str, Any]:
    record = real_process(os.getpid())
    record["sha256"] = hashlib.sha256(open(sys.executable, "rb").read()).hexdigest()  # noqa: SIM115
    return record


def alert(process: dict[str, Any], **extra: Any) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "alertId": "0d074c51f1075a7cb39fd6a678384667",
        "ruleId": "de-exec-world-writable",
        "ruleName": "Execution from a world-writable directory",
        "severity": "high",
        "title": f"Execution from a world-writable directory: {process.get('exePath')}",
        "description": "A program executed from /tmp.\n",
        "process": process,
        "rowJson": json.dumps({"pid": process.get("pid")}),
        "dedupKey": "de-exec-world-writable|1:2",
        "firstSeenNs": now - 5_000_000_000,
        "lastSeenNs": now,
        "count": 3,
        "tags": ["attack.execution", "attack.t1059", "attack.t1059.004"],
        "timeNs": now,
        "hostname": "host-1",
        "key": now + 1,
        "type": "alert",
        "repeats": 2,
        "sourceId": "detector@host-1",
        "receivedNs": now + 2,
        "sinks": ["file"],
        **extra,
    }


def records(me: dict[str, Any]) -> dict[str, dict[str, Any]]:
    parent = real_process(os.getppid())
    in_container = {**me, "containerId": "4f" * 32, "pidNamespace": 4026532000}
    return {
        "alert": alert(me),
        "alert with ancestors and incident": alert(
            me, ancestors=[parent, real_process(1)], incidentId="inc-1"
        ),
        "alert in a container": alert(in_container),
        "every severity": alert(me, severity="info"),
        "critical": alert(me, severity="critical"),
        "low": alert(me, severity="low"),
        "medium": alert(me, severity="medium"),
        "repeat summary": alert(me, type="repeat_summary", title="x (repeated 4 times in 300 s)"),
        "rate limit summary": alert(
            {}, type="rate_limit_summary", ruleId="daemoneye.rate_limit", tags=[]
        ),
        "kernel thread (no exe, no argv)": alert(
            real_process(2) if os.path.exists("/proc/2") else me
        ),
    }


def test_every_alert_is_a_valid_ocsf_detection_finding(me) -> None:
    for what, record in records(me).items():
        doc = json.loads(encode_alert("ocsf", record))  # as a sink writes it
        assert ocsf_problems(doc) == [], what
        assert doc["class_uid"] == 2004 and doc["category_uid"] == 2
        assert doc["type_uid"] == 2004 * 100 + doc["activity_id"]
        assert doc["metadata"]["version"] == "1.8.0"
        assert doc["metadata"]["product"]["name"] == "DaemonEye"
        assert doc["finding_info"]["uid"] == record["alertId"]
        assert doc["finding_info"]["title"] == record["title"]
        assert key_of(doc) == record["key"]


def test_alert_fields_land_where_ocsf_has_them(me) -> None:
    record = records(me)["alert with ancestors and incident"]
    doc = ocsf.alert(record)
    proc = doc["evidences"][0]["process"]
    assert proc["pid"] == me["pid"] and proc["cmd_line"] == " ".join(me["cmdline"])
    assert proc["file"]["path"] == me["exePath"]
    assert proc["file"]["hashes"] == [
        {"algorithm_id": 3, "algorithm": "SHA-256", "value": me["sha256"]}
    ]
    assert proc["parent_process"]["pid"] == os.getppid()
    assert proc["parent_process"]["parent_process"]["pid"] == 1
    assert doc["severity_id"] == 4 and doc["severity"] == "High"
    assert doc["metadata"]["correlation_uid"] == "inc-1"
    assert doc["device"]["hostname"] == "host-1"
    assert {"technique": {"uid": "T1059"}, "sub_technique": {"uid": "T1059.004"}} in doc[
        "finding_info"
    ]["attacks"]


@pytest.mark.parametrize("kind", ["start", "stop", "modify", "suspicious"])
def test_process_events_are_valid_ocsf_process_activity_and_ecs(me, kind) -> None:
    event = {
        "kind": kind,
        "source": "netlink",
        "timeNs": time.time_ns(),
        "record": me,
        "previous": me if kind == "modify" else {},
        "changedFields": ["euid"] if kind == "modify" else [],
        "reason": "exe deleted" if kind == "suspicious" else "",
        "severity": "high",
        "runtimeNs": 1000,
        "exitCode": 0,
        "hostname": "host-1",
    }
    doc = ocsf.process_activity(event)
    assert ocsf_problems(doc) == []
    assert doc["class_uid"] == 1007 and doc["category_uid"] == 1
    expected = {"start": 1, "stop": 2, "modify": 5, "suspicious": 99}[kind]
    assert doc["activity_id"] == expected and doc["type_uid"] == 100700 + expected
    assert ecs_problems(ecs.process_event(event)) == []


def test_every_alert_is_a_valid_ecs_document(me) -> None:
    for what, record in records(me).items():
        doc = json.loads(encode_alert("ecs", record))
        assert ecs_problems(doc) == [], what
        assert doc["event"]["kind"] == "alert" and doc["ecs"]["version"] == "9.4.0"
        assert doc["rule"]["id"] == record["ruleId"]
        assert doc["host"]["hostname"] == "host-1"
        assert key_of(doc) == record["key"]
    doc = ecs.alert(records(me)["alert with ancestors and incident"])
    assert doc["process"]["args"] == me["cmdline"] and doc["process"]["pid"] == me["pid"]
    assert doc["process"]["parent"]["pid"] == os.getppid()
    assert doc["threat"]["technique"]["id"] == ["T1059"]
    assert doc["labels"]["incident_id"] == "inc-1"


# --- the validators reject what is wrong: they are not a restatement of the output ---


def broken_ocsf(doc: dict[str, Any], change: Any) -> list[str]:
    doc = copy.deepcopy(doc)
    change(doc)
    return ocsf_problems(doc)


def test_the_ocsf_validator_rejects_schema_violations(me) -> None:
    good = ocsf.alert(records(me)["alert"])
    cases = {
        "type_uid": lambda d: d.update(type_uid=200402),
        "category_uid": lambda d: d.update(category_uid=1),
        "severity_id enum": lambda d: d.update(severity_id=7),
        "severity caption": lambda d: d.update(severity="Low"),
        "pid type": lambda d: d["evidences"][0]["process"].update(pid="42"),
        "pid range": lambda d: d["evidences"][0]["process"].update(pid=2**40),
        "unknown attribute": lambda d: d["finding_info"].update(rule_id="x"),
        "missing uid": lambda d: d["finding_info"].pop("uid"),
        "missing metadata.product": lambda d: d["metadata"].pop("product"),
        "time type": lambda d: d.update(time="yesterday"),
        "array": lambda d: d["finding_info"].update(types="alert"),
        "profile": lambda d: d["metadata"].update(profiles=[]),
        "version": lambda d: d["metadata"].update(version="1.1.0"),
        "hash algorithm": lambda d: d["evidences"][0]["process"]["file"]["hashes"][0].update(
            algorithm_id=42
        ),
        "file needs type_id": lambda d: d["evidences"][0]["process"]["file"].pop("type_id"),
    }
    for what, change in cases.items():
        assert broken_ocsf(good, change), f"the validator missed: {what}"


def test_the_ecs_validator_rejects_schema_violations(me) -> None:
    good = ecs.alert(records(me)["alert"])
    cases = {
        "unknown field": lambda d: d["process"].update(argv=["x"]),
        "kind allowed values": lambda d: d["event"].update(kind="finding"),
        "category allowed values": lambda d: d["event"].update(category=["processes"]),
        "pid type": lambda d: d["process"].update(pid="42"),
        "date": lambda d: d.update({"@timestamp": "yesterday"}),
        "array where ECS has one": lambda d: d["process"].update(args="x y"),
        "no array where ECS has none": lambda d: d["rule"].update(id=["a", "b"]),
        "labels are keywords": lambda d: d["labels"].update(count=3),
    }
    for what, change in cases.items():
        doc = copy.deepcopy(good)
        change(doc)
        assert ecs_problems(doc), f"the validator missed: {what}"


@pytest.mark.parametrize("fmt", ["json", "ocsf", "ecs"])
def test_a_file_sink_knows_what_it_wrote_in_any_format(me, tmp_path, fmt) -> None:
    """After a crash between a write and its confirmation, the file sink finds the keys
    it already wrote, whatever the format (so nothing is written twice)."""
    import threading

    from daemoneye.services.alerter.sinks import Delivery, build_sink
    from daemoneye.settings.alerter import FileSink as FileCfg

    sink = build_sink(FileCfg(name="f", format=fmt), threading.Event(), tmp_path, "h")
    batch = []
    for n in range(3):
        record = alert(me, key=1000 + n, alertId=f"a{n}")
        batch.append(Delivery(record["key"], json.dumps(record).encode(), record))
    sink.send(batch[:2])
    sink.close()
    assert sink.already_sent(batch) == {1000, 1001}
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    check = {"ocsf": ocsf_problems, "ecs": ecs_problems}.get(fmt)
    assert check is None or all(check(doc) == [] for doc in lines)
