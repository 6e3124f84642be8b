"""Shipped rules that work as a pair, and what their own cases (one rule per engine)
cannot show: a pipeline into a shell gives one alert whatever order its execs reach the
detector in, and a shell started by two different one-liners is two alerts, not one
alert and a repeat."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemoneye.rules.cases import CaseRunner
from daemoneye.rules.engine import Engine, Firing
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import load_rule_file
from daemoneye.rules.validate import Validator
from daemoneye.services.detector.keys import dedup_key

EXECUTION = Path(__file__).resolve().parents[2] / "deploy" / "rules" / "execution.yml"
PIPE_RULES = ("de-pipe-to-shell-sibling", "de-pipe-to-shell-sibling-late")


@pytest.fixture(scope="module")
def checked() -> dict[str, Any]:
    rules, problems = load_rule_file(EXECUTION)
    assert problems == []
    validator = Validator()
    return {r.id: validator.check(r) for r in rules}


def engine_of(checked: dict[str, Any], ids: tuple[str, ...]) -> Engine:
    engine = Engine(on_disable=lambda rule, why: pytest.fail(f"{rule.id} disabled: {why}"))
    engine.load([checked[i] for i in ids])
    return engine


def batchings(n: int) -> Iterator[list[list[int]]]:
    """Every order of n events (their indexes), cut into consecutive batches every way."""
    for order in itertools.permutations(range(n)):
        for cuts in itertools.product((False, True), repeat=n - 1):
            batches, current = [], [order[0]]
            for cut, i in zip(cuts, order[1:], strict=True):
                if cut:
                    batches.append(current)
                    current = []
                current.append(i)
            yield [*batches, current]


def pipeline(rows: list[dict[str, Any]]) -> tuple[list[EventIn], list[EventIn]]:
    """(the parent's events, the pipeline's): every row a child of one bash."""
    parent = {"parent_name": "bash", "parent_cmdline": "bash"}
    events, context = CaseRunner().events_of({"events": [{**r, **parent} for r in rows]})
    return [e for e in events if e.record["pid"] in context], [
        e for e in events if e.record["pid"] not in context
    ]


def run(engine: Engine, before: list[EventIn], batches: list[list[EventIn]]) -> list[Firing]:
    engine.apply(before)
    firings: list[Firing] = []
    for batch in batches:
        firings += engine.apply(batch)[0]
    return firings


def arrangements(rows: list[dict[str, Any]]) -> Iterator[tuple[str, list[EventIn], list]]:
    """For each order and batching: its description, the parent's events, the batches
    (fresh events each time: the engine normalises records in place)."""
    for shape in batchings(len(rows)):
        before, events = pipeline(rows)
        batches = [[events[i] for i in batch] for batch in shape]
        names = " / ".join(",".join(rows[i]["name"] for i in batch) for batch in shape)
        yield names, before, batches


@pytest.mark.parametrize(
    "rows",
    [
        [  # echo 69643b… | xxd -r -p | sh
            {"name": "xxd", "cmdline": "xxd -r -p", "pgroup": 5100},
            {"name": "sh", "cmdline": "sh", "pgroup": 5100},
        ],
        [  # echo 'di' | rev | sh
            {"name": "rev", "cmdline": "rev", "pgroup": 5200},
            {"name": "sh", "cmdline": "sh", "pgroup": 5200},
        ],
        [  # curl -s …/x.b64 | base64 -d | bash
            {"name": "curl", "cmdline": "curl -s http://127.0.0.1:8000/x.b64", "pgroup": 5300},
            {"name": "base64", "cmdline": "base64 -d", "pgroup": 5300},
            {"name": "bash", "cmdline": "bash", "pgroup": 5300},
        ],
    ],
    ids=["xxd-sh", "rev-sh", "curl-base64-bash"],
)
def test_a_pipeline_into_a_shell_is_one_alert_in_any_exec_order(checked, rows) -> None:
    shell = rows[-1]["name"]
    for names, before, batches in arrangements(rows):
        firings = run(engine_of(checked, PIPE_RULES), before, batches)
        assert [f.row["name"] for f in firings] == [shell], names


def test_the_decoder_seen_again_does_not_fire_twice(checked) -> None:
    """A fork published before its exec: the decoder's exec is a modify of that pid."""
    before, (xxd, sh) = pipeline(
        [
            {"pid": 5401, "name": "xxd", "cmdline": "xxd -r -p", "pgroup": 5400},
            {"name": "sh", "cmdline": "sh", "pgroup": 5400},
        ]
    )
    again = EventIn("modify", {**xxd.record, "threads": 2}, xxd.time_ns, source="netlink")
    firings = run(engine_of(checked, PIPE_RULES), before, [[sh], [xxd], [again]])
    assert [(f.rule.id, f.row["name"]) for f in firings] == [
        ("de-pipe-to-shell-sibling-late", "sh")
    ]


@pytest.mark.parametrize(
    "rows",
    [
        [  # xxd firmware.bin | less: a dump, nothing decoded, no shell
            {"name": "xxd", "cmdline": "xxd firmware.bin", "pgroup": 5500},
            {"name": "less", "cmdline": "less", "pgroup": 5500},
        ],
        [  # rev names.txt | sort
            {"name": "rev", "cmdline": "rev names.txt", "pgroup": 5600},
            {"name": "sort", "cmdline": "sort", "pgroup": 5600},
        ],
        [  # xxd -r patch.hex > fw.bin next to a shell running a script
            {"name": "xxd", "cmdline": "xxd -r patch.hex", "pgroup": 5700},
            {"name": "bash", "cmdline": "bash build.sh", "pgroup": 5700},
        ],
        [  # base64 (encoding) into a shell's stdin? no: encoding is not decoding
            {"name": "base64", "cmdline": "base64 file.bin", "pgroup": 5800},
            {"name": "sh", "cmdline": "sh", "pgroup": 5800},
        ],
    ],
    ids=["xxd-less", "rev-sort", "xxd-r-beside-script", "base64-encode"],
)
def test_admin_pipelines_stay_silent_in_any_exec_order(checked, rows) -> None:
    for names, before, batches in arrangements(rows):
        assert run(engine_of(checked, PIPE_RULES), before, batches) == [], names


def child_shell_key(
    checked,
    parent_cmdline: str,
    parent_name: str,
    rule: str = "de-interpreter-child-shell",
    cmdline: str = "sh -c 'id; uname -a'",
) -> str:
    events, _ = CaseRunner().events_of(
        {
            "process": {
                "name": "sh",
                "cmdline": cmdline,
                "parent_name": parent_name,
                "parent_cmdline": parent_cmdline,
            }
        }
    )
    firings = run(engine_of(checked, (rule,)), [], [events])
    assert len(firings) == 1
    return dedup_key(firings[0])


@pytest.mark.parametrize(
    ("rule", "cmdline", "first", "second"),
    [
        ("de-gtfobins-shell", "/bin/sh", ("less", "less /etc/passwd"), ("vim", "vim notes.txt")),
        (
            "de-webshell",
            "sh -c id",
            ("php-fpm8.2", "php-fpm: pool www"),
            ("apache2", "apache2 -k start"),
        ),
    ],
    ids=["gtfobins", "webshell"],
)
def test_one_shell_from_two_parents_is_two_alerts(checked, rule, cmdline, first, second) -> None:
    """Rules whose meaning is the parent's: the bare shell's argv alone would make the
    second escape (or web shell) within the dedup window a repeat of the first."""
    a = child_shell_key(checked, first[1], first[0], rule, cmdline)
    b = child_shell_key(checked, second[1], second[0], rule, cmdline)
    assert a != b
    assert a == child_shell_key(checked, first[1], first[0], rule, cmdline)


def test_one_shell_command_from_two_one_liners_is_two_alerts(checked) -> None:
    """The shell's argv alone made awk's system() a repeat of python's os.system()."""
    awk = child_shell_key(checked, "awk 'BEGIN { system(\"id; uname -a\") }'", "mawk")
    py = child_shell_key(checked, "python3 -c \"import os; os.system('id; uname -a')\"", "python3")
    assert awk != py
    assert awk == child_shell_key(checked, "awk 'BEGIN { system(\"id; uname -a\") }'", "mawk")


def pipeline_key(checked, decoder: dict[str, Any], shell_first: bool) -> str:
    shell_row = {"name": "sh", "cmdline": "sh", "pgroup": 6000}
    before, (feeder, shell) = pipeline([{**decoder, "pgroup": 6000}, shell_row])
    order = [[shell], [feeder]] if shell_first else [[feeder], [shell]]
    firings = run(engine_of(checked, PIPE_RULES), before, order)
    assert len(firings) == 1
    return dedup_key(firings[0])


@pytest.mark.parametrize("shell_first", [False, True], ids=["decoder-first", "shell-first"])
def test_two_pipelines_into_sh_are_two_alerts(checked, shell_first) -> None:
    """The shell's argv (`sh`) alone made `rev | sh` a repeat of `xxd -r -p | sh`."""
    xxd = {"name": "xxd", "cmdline": "xxd -r -p"}
    rev = {"name": "rev", "cmdline": "rev"}
    assert pipeline_key(checked, xxd, shell_first) != pipeline_key(checked, rev, shell_first)
    assert pipeline_key(checked, xxd, shell_first) == pipeline_key(checked, xxd, shell_first)
