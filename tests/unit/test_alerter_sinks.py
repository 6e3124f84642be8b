"""Sinks on their own: RFC 5424 formatting, the file sink's rotation and errors, stdout
formats, webhook backoff. Network sinks are exercised against real listeners in the
integration tests."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from daemoneye.services.alerter.sinks import Delivery, SinkError, build_sink
from daemoneye.services.alerter.sinks.syslog import format_rfc5424
from daemoneye.services.alerter.sinks.webhook import backoff_delay
from daemoneye.settings.alerter import FileSink as FileCfg
from daemoneye.settings.alerter import StdoutSink as StdoutCfg
from daemoneye.settings.alerter import facility_code


def record(n: int = 1, **extra) -> dict:
    return {
        "key": 1000 + n,
        "alertId": f"a{n}",
        "ruleId": "r.x",
        "ruleName": "rule x",
        "severity": "high",
        "title": f"alert {n}",
        "description": "desc",
        "count": 1,
        "timeNs": 1_700_000_000_123_456_789,
        "hostname": "h1",
        "process": {"pid": 42, "name": "sh", "exePath": "/bin/sh", "cmdline": ["sh", "-c", "x"],
                    "username": "root"},
        **extra,
    }  # fmt: skip


def item(n: int = 1, **extra) -> Delivery:
    rec = record(n, **extra)
    return Delivery(rec["key"], json.dumps(rec).encode(), rec)


def make(cfg, tmp_path: Path):
    return build_sink(cfg, threading.Event(), tmp_path, "testhost")


def test_rfc5424_header_structured_data_and_message() -> None:
    line = format_rfc5424(record(exe='x"]\\'), facility_code("auth"), "app", "host", 77).decode()
    header, _, msg = line.partition(" \ufeff")
    assert header.startswith(
        "<35>1 2023-11-14T22:13:20.123456Z host app 77 alert [daemoneye@32473 "
    )
    assert 'ruleId="r.x"' in header and 'pid="42"' in header and 'exe="/bin/sh"' in header
    assert msg == "alert 1: desc"


def test_rfc5424_escapes_param_values_and_fills_nil_fields() -> None:
    rec = record(title="t\nwo")
    rec["process"]["exePath"] = 'a"b]c\\d'
    line = format_rfc5424(rec, 16, "", "bad host", 1).decode()
    assert r'exe="a\"b\]c\\d"' in line
    assert " badhost - 1 alert [" in line  # spaces stripped; empty app-name is NILVALUE
    assert line.endswith("t wo: desc")


def test_unknown_facility_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown syslog facility 'nope'"):
        facility_code("nope")
    assert facility_code("LOCAL0") == 16 and facility_code(3) == 3


def test_file_sink_appends_lines_and_rotates_by_size(tmp_path: Path) -> None:
    cfg = FileCfg(name="f", path=tmp_path / "a.jsonl", rotate_bytes=1500, keep=2)
    sink = make(cfg, tmp_path)
    for n in range(20):
        sink.send([item(n)])
    sink.close()
    files = sorted(tmp_path.glob("a.jsonl*"))
    assert [f.name for f in files] == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    assert all(f.stat().st_size <= 1500 for f in files)
    newest = [json.loads(x)["alertId"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert newest[-1] == "a19"
    kept = sum(len(f.read_text().splitlines()) for f in files)
    assert sink.rotations >= 3 and kept < 20  # files beyond keep=2 were dropped


def test_file_sink_rotates_by_age(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    cfg = FileCfg(name="f", path=path, rotate_bytes=0, rotate_age_s=60)
    sink = make(cfg, tmp_path)
    sink.send([item(1)])
    old = time.time() - 120
    os.utime(path, (old, old))
    sink.close()  # a restart: the file's age is judged from its mtime
    sink.send([item(2)])
    sink.close()
    assert [json.loads(x)["alertId"] for x in path.read_text().splitlines()] == ["a2"]
    assert (tmp_path / "a.jsonl.1").read_text().count("\n") == 1


def test_file_sink_error_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    sink = make(FileCfg(name="f", path=tmp_path / "dir.jsonl"), tmp_path)
    with pytest.raises(SinkError, match=r"cannot open .*dir.jsonl") as err:
        sink.send([item()])
    assert err.value.retryable


def test_stdout_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make(StdoutCfg(name="j", format="json"), tmp_path).send([item(1), item(2)])
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["alertId"] for x in lines] == ["a1", "a2"]

    sink = make(StdoutCfg(name="c", format="csv"), tmp_path)
    sink.send([item(1)])
    sink.send([item(2, title="has, comma")])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:4] == ["time", "severity", "rule_id", "title"]
    assert rows[2][3] == "has, comma" and len(rows) == 3  # one header only

    make(StdoutCfg(name="h", format="human"), tmp_path).send([item(1, count=7)])
    out = capsys.readouterr().out
    assert "HIGH" in out and "alert 1" in out and "(x7)" in out and "exe=/bin/sh" in out


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    for attempt in range(8):
        cap = min(5.0, 0.1 * 2**attempt)
        delays = [backoff_delay(attempt, 0.1, 5.0) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2  # jitter spreads over the range
