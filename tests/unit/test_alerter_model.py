"""Alert records from wire alerts: wire's fast reader matches pycapnp's own, and the
default dedup key is rule + exe + cmdline."""

from __future__ import annotations

import time

import pytest

from daemoneye import wire
from daemoneye.services.alerter import model


def reader(**fields):
    body = {"ruleId": "r", "severity": "high", **fields}
    data = wire.encode_envelope(wire.Header("d@h", "b", 1, time.time_ns()), "alert", body)
    return wire.decode_envelope(data).body.alert


FULL = {
    "alertId": "a1", "ruleId": "r1", "ruleName": "R", "severity": "critical", "title": "t",
    "description": "d", "rowJson": '{"pid": 3}', "dedupKey": "", "firstSeenNs": 1,
    "lastSeenNs": 2, "count": 4, "tags": ["x", "y"], "timeNs": 5, "hostname": "h",
    "process": {"pid": 3, "ppid": 1, "name": "sh", "exePath": "/bin/sh",
                "cmdline": ["sh", "-c", "id"], "uid": 7, "exeDeleted": True, "onDisk": -1,
                "startTime": 1.5, "cwd": "/tmp", "sha256": "ab" * 32, "nice": -5},
}  # fmt: skip


def test_alert_reader_matches_to_dict() -> None:
    alert = reader(**FULL)
    fast, slow = wire.dict_reader(wire.Alert.schema)(alert), wire.to_dict(alert)
    # to_dict leaves out unset text; the converter fills it with "" so every key exists
    for key, value in slow.items():
        if key != "process":
            assert fast[key] == value, key
    for key, value in slow["process"].items():
        assert fast["process"][key] == value, key
    assert {k for k, v in fast["process"].items() if k not in slow["process"]} == {
        k for k, v in fast["process"].items() if v in ("", [])
    }
    env = [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}]
    with_env = reader(**{**FULL, "process": {**FULL["process"], "env": env}})
    assert wire.dict_reader(wire.Alert.schema)(with_env)["process"]["env"] == env
    assert wire.to_dict(with_env)["process"]["env"] == env


def test_record_adds_the_alerters_fields() -> None:
    rec = model.record_of(reader(**FULL), "detector@h", 99, carried=3)
    assert (rec["key"], rec["type"], rec["count"], rec["repeats"]) == (99, "alert", 7, 3)
    assert rec["sourceId"] == "detector@h" and rec["timeNs"] == 5
    no_id = model.record_of(reader(), "d", 1)
    assert len(no_id["alertId"]) == 16 and no_id["timeNs"] == no_id["receivedNs"]
    assert model.json_load(model.encode(rec)) == rec


def test_default_dedup_key_is_rule_exe_and_cmdline() -> None:
    proc = {"exePath": "/bin/a", "cmdline": ["a", "-x"]}
    same = model.dedup_key(reader(process=proc))
    assert same == model.dedup_key(reader(process=dict(proc), title="other title"))
    assert same != model.dedup_key(reader(process={**proc, "cmdline": ["a", "-y"]}))
    assert same != model.dedup_key(reader(process={**proc, "exePath": "/bin/b"}))
    assert same != model.dedup_key(reader(ruleId="r2", process=proc))
    own = model.dedup_key(reader(dedupKey="user=1", process=proc))
    assert own == model.dedup_key(reader(dedupKey="user=1", process={"exePath": "/x"}))


def test_check_refuses_missing_unknown_and_malformed_fields() -> None:
    model.check(reader(**FULL))
    with pytest.raises(model.BadAlert, match="no ruleId"):
        model.check(reader(ruleId=""))
    header = wire.Header("d@h", "b", 1, time.time_ns())
    data = bytearray(wire.encode_envelope(header, "alert", {"ruleId": "RULEID", "severity": "low"}))
    at = data.index(b"RULEID")
    data[at : at + 6] = b"\xff" * 6  # not UTF-8: passes the structure check, fails to read
    with pytest.raises(model.BadAlert, match="malformed field"):
        model.check(wire.decode_envelope(bytes(data)).body.alert)


def test_an_argv_that_is_not_utf8_makes_a_malformed_alert_not_a_crash() -> None:
    """dedup_key reads the process's argv raw: a text in it that is not UTF-8 raised
    pycapnp's UnicodeDecodeError out of the alerter's handler (a logged crash); it is a
    DecodeError now, which the service counts as a malformed message."""
    header = wire.Header("d@h", "b", 1, time.time_ns())
    body = {"ruleId": "r", "severity": "low", "process": {"exePath": "/x", "cmdline": ["ARGV"]}}
    data = bytearray(wire.encode_envelope(header, "alert", body))
    at = data.index(b"ARGV")
    data[at : at + 4] = b"\xe7\xff\xfe\xfd"
    alert = wire.decode_envelope(bytes(data)).body.alert
    model.check(alert)  # rule and severity read fine
    with pytest.raises(wire.DecodeError, match="cmdline"):
        model.dedup_key(alert)
