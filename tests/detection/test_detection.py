"""The detection harness end to end: a real `daemoneye up` with the shipped rules, a
few behaviours and benign actions, alerts attributed to the item that caused them.

The default run takes a quick subset and checks the harness (attribution, cleanup,
latency measured), not today's detection rate, which the rules decide and
`bench/detection.py` prints. The whole corpus runs with `-m slow`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.detection import BEHAVIOURS, BENIGN, ITEMS
from tests.detection.harness import RunResult, run_corpus
from tests.detection.model import TACTICS
from tests.detection.report import render, summarise

RULES = Path(__file__).resolve().parents[2] / "deploy" / "rules"

QUICK_BEHAVIOURS = (
    "c2-bash-dev-tcp",
    "c2-python-socket-shell",
    "exec-curl-pipe-sh",
    "persist-cron-d-tee",
    "persist-web-shell-node",
    "privesc-setuid-shell",
    "evasion-deleted-binary",
    "cred-cat-shadow",
    "disc-system-burst",
    "impact-xmrig-stratum",
)
QUICK_BENIGN = (
    "benign-git-init-commit",
    "benign-make-build",
    "benign-tar-gzip",
    "benign-curl-local-server",
    "benign-ssh-keygen",
    "benign-shell-loop",
    "benign-log-rotation",
    "benign-id-alone",
    "benign-python-script",
    "benign-grep-sed-awk",
)
# behaviours any rule pack worth shipping detects, and plain work it must not alert on
SURELY_DETECTED = ("c2-bash-dev-tcp",)
SURELY_QUIET = ("benign-git-init-commit", "benign-tar-gzip", "benign-curl-local-server")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: the collector's netlink view of every process, and behaviours "
    "that write /etc/cron.d and run setuid binaries",
)


def test_corpus_is_well_formed() -> None:
    ids = [i.id for i in ITEMS]
    assert len(ids) == len(set(ids)), "item ids must be unique"
    assert len(BEHAVIOURS) >= 60 and len(BENIGN) >= 40
    tactics = {b.tactic for b in BEHAVIOURS}
    assert tactics <= set(TACTICS) and len(tactics) >= 12, sorted(tactics)
    for item in BEHAVIOURS:
        assert item.source, f"{item.id}: say which public procedure it follows"
        for line in (item.run + item.setup + item.cleanup).splitlines():
            for host in ("http://", "https://", "/dev/tcp/", "/dev/udp/"):
                if host in line and "@HTTP@" not in line:
                    assert "127.0.0.1" in line, f"{item.id}: network beyond 127.0.0.1: {line}"


def _quick() -> RunResult:
    wanted = set(QUICK_BEHAVIOURS + QUICK_BENIGN)
    return run_corpus([i for i in ITEMS if i.id in wanted], RULES)


@needs_root
@pytest.mark.timeout(600)  # the monitor's start and two canaries on a loaded machine
def test_quick_subset_end_to_end() -> None:
    result = _quick()
    summary = summarise(result)
    print(render(summary))
    by_id = {o.item.id: o for o in result.outcomes}
    assert set(by_id) == set(QUICK_BEHAVIOURS + QUICK_BENIGN)
    for outcome in result.outcomes:
        if outcome.skipped:
            assert "not installed" in outcome.skipped or "systemd" in outcome.skipped
            continue
        for phase in outcome.phases:
            assert phase.complete, f"{outcome.item.id}.{phase.kind} cut short:\n{phase.output}"
            assert not phase.timed_out, f"{outcome.item.id}.{phase.kind} timed out"
        assert not outcome.left_behind, f"{outcome.item.id} left {outcome.left_behind}"
    assert by_id["c2-bash-dev-tcp"].connections >= 1, "the reverse shell never called back"
    for name in SURELY_DETECTED:
        outcome = by_id[name]
        assert outcome.detected(), f"{name} not detected: {outcome.alerts}"
        alert = next(a for a in outcome.alerts if a["severity"] in ("high", "critical"))
        assert alert["how"] == "session" and alert["phase"] == "run"
        assert alert["latency_s"] is not None and 0 <= alert["latency_s"] < 30
    for name in SURELY_QUIET:
        assert not by_id[name].alerts, f"{name} alerted: {by_id[name].alerts}"
    assert summary["latency_s"]["count"] >= 1


@needs_root
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_whole_corpus() -> None:
    result = run_corpus(list(ITEMS), RULES)
    summary = summarise(result)
    print(render(summary))
    assert summary["behaviours"]["available"] >= 50
    assert summary["benign"]["available"] >= 35
    assert not summary["left_behind"], summary["left_behind"]
    assert not summary["incomplete"], summary["incomplete"]
    assert not summary["timed_out"], summary["timed_out"]
    assert not summary["no_callback"], summary["no_callback"]
