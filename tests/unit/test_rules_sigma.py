"""Sigma import: every Linux process_creation rule of the corpus converts and validates;
rules that cannot convert are reported with their reason; converted rules fire."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from daemoneye.rules.engine import Engine
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import load_rule_file
from daemoneye.rules.sigma import SigmaImporter, write_rules
from tests.conftest import corpus, daemoneye, needs_corpus

SIGMA = corpus("sigma-linux-process-creation")
pytestmark = needs_corpus("sigma-linux-process-creation")


@pytest.fixture(scope="module")
def importer() -> SigmaImporter:
    return SigmaImporter()


def test_all_corpus_rules_convert_and_keep_metadata(
    importer: SigmaImporter, tmp_path: Path
) -> None:
    files = sorted(SIGMA.glob("*.yml"))
    assert len(files) == 122
    converted, problems = [], []
    for f in files:
        done, found = importer.convert_file(f)
        converted += done
        problems += found
    assert problems == [], problems[:3]
    assert len(converted) == 122
    written = write_rules(converted, tmp_path)
    assert len(written) == 122
    rules, problems = load_rule_file(tmp_path / "sigma-proc_creation_lnx_at_command.yml")
    assert problems == []
    (rule,) = rules
    assert rule.id == "d2d642d7-b393-43fe-bae4-e81ed5915c4b"
    assert rule.name == "Scheduled Task/Job At" and rule.severity == "low"
    assert "attack.t1053.002" in rule.tags and rule.references


def test_unconvertible_rules_are_reported_with_reason(
    importer: SigmaImporter, tmp_path: Path
) -> None:
    other = tmp_path / "net.yml"
    other.write_text(
        textwrap.dedent(
            """\
            title: network rule
            id: 11111111-1111-1111-1111-111111111111
            logsource: {product: linux, category: network_connection}
            detection: {sel: {DestinationPort: 4444}, condition: sel}
            level: high
            """
        )
    )
    unmapped = tmp_path / "hash.yml"
    unmapped.write_text(
        textwrap.dedent(
            """\
            title: hashes rule
            id: 22222222-2222-2222-2222-222222222222
            logsource: {product: linux, category: process_creation}
            detection: {sel: {Hashes|contains: 'abc'}, condition: sel}
            level: high
            """
        )
    )
    broken = tmp_path / "broken.yml"
    broken.write_text("title: [unclosed\n")
    reasons = {}
    for path in (other, unmapped, broken):
        done, problems = importer.convert_file(path)
        assert done == [] and len(problems) == 1
        assert problems[0].path == str(path)
        reasons[path.name] = problems[0].reason
    assert "network_connection" in reasons["net.yml"]
    assert "hashes" in reasons["hash.yml"].lower()
    assert "cannot read" in reasons["broken.yml"] or "invalid" in reasons["broken.yml"]


def test_converted_rules_fire_on_matching_records(importer: SigmaImporter) -> None:
    converted = []
    for name in (
        "proc_creation_lnx_at_command.yml",
        "proc_creation_lnx_apt_shell_execution.yml",
        "proc_creation_lnx_auditctl_clear_rules.yml",
    ):
        done, problems = importer.convert_file(SIGMA / name)
        assert not problems
        converted += done
    engine = Engine()
    checked = [engine.validator.check(c.rule) for c in converted]
    engine.load(checked)

    def record(pid: int, path: str, argv: list[str]) -> dict:
        return {"pid": pid, "startTicks": pid, "exePath": path, "cmdline": argv, "name": "x"}

    firings, _ = engine.apply(
        [
            EventIn("start", record(1, "/usr/bin/at", ["at", "now"])),
            EventIn(
                "start",
                record(
                    2, "/usr/bin/apt-get", ["apt-get", "-o", "APT::Update::Pre-Invoke::=/bin/sh"]
                ),
            ),
            EventIn("start", record(3, "/sbin/auditctl", ["auditctl", "-D"])),
            EventIn("start", record(4, "/usr/bin/apt", ["apt", "update"])),
        ]
    )
    fired = sorted((f.rule.name, f.row["pid"]) for f in firings)
    assert sorted(pid for _, pid in fired) == [1, 2, 3], fired


def test_cli_import_sigma_and_validate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = daemoneye("rules", "import-sigma", str(SIGMA), "--output", str(out), timeout=300)
    assert run.returncode == 0, run.stderr
    assert "122 converted, 0 could not be converted" in run.stderr
    check = daemoneye("rules", "validate", str(out), timeout=300)
    assert check.returncode == 0, check.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("id: evil\nname: x\nsql: SELECT readfile('/etc/shadow')\n")
    check = daemoneye("rules", "validate", str(out), str(bad), timeout=300)
    assert check.returncode == 1
    assert check.stdout.strip() == f"{bad}:3: rule evil: function readfile() is forbidden"


def test_sigma_judgement_is_kept_and_filters_apply(tmp_path: Path) -> None:
    rule = tmp_path / "s.yml"
    rule.write_text(
        textwrap.dedent(
            """\
            title: whoami run
            id: 22222222-2222-2222-2222-222222222222
            status: experimental
            author: Someone
            references: [https://example.org/whoami]
            falsepositives: [Admins checking who they are]
            logsource: {product: linux, category: process_creation}
            detection: {sel: {Image|endswith: /whoami}, condition: sel}
            level: informational
            tags: [attack.discovery, attack.t1033]
            """
        )
    )
    (done,), problems = SigmaImporter().convert_file(rule)
    assert problems == []
    got = done.rule
    assert got.severity == "info" and got.status == "experimental"
    assert got.falsepositives == ["Admins checking who they are"]
    assert got.references == ["https://example.org/whoami"] and "attack.t1033" in got.tags
    (written,) = write_rules([done], tmp_path / "out")
    text = written.read_text()
    assert "Detection Rule License (DRL) 1.1" in text and "Someone" in text
    (again,), problems = load_rule_file(written)
    assert problems == [] and again.status == "experimental" and again.falsepositives
    # Sigma's own judgement as a filter: below the level, or not of the status, is skipped
    for importer in (
        SigmaImporter(min_level="low"),
        SigmaImporter(statuses=("stable", "test")),
    ):
        converted, problems = importer.convert_file(rule)
        assert converted == [] and problems == [] and len(importer.skipped) == 1
    assert "status experimental not in stable,test" in importer.skipped[0].reason
    with pytest.raises(ValueError, match="not one of"):
        SigmaImporter(statuses=("solid",))
