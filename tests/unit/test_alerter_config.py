"""The alerter's settings: a list of sink tables, the default file sink, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemoneye.config import ConfigError, load_settings
from daemoneye.settings.alerter import AlerterSettings, facility_code

pytestmark = pytest.mark.usefixtures("no_host_config")


def test_default_is_one_file_sink() -> None:
    s = AlerterSettings()
    assert [(k.kind, k.name, k.path) for k in s.sinks] == [("file", "file", None)]
    assert s.dedup_window_s == 300


def test_several_sinks_of_a_kind_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        """
[alerter]
dedup_window_s = 60
[[alerter.sinks]]
kind = "file"
[[alerter.sinks]]
kind = "file"
path = "/var/log/other.jsonl"
rotate_bytes = 1000
[[alerter.sinks]]
kind = "syslog"
transport = "tcp"
address = "127.0.0.1:6514"
facility = "local7"
[[alerter.sinks]]
kind = "webhook"
name = "soc"
url = "https://soc.example/hook"
headers = { X-Team = "blue" }
[[alerter.sinks]]
kind = "stdout"
format = "csv"
"""
    )
    s = load_settings(config_file=path).alerter
    assert [k.name for k in s.sinks] == ["file", "file-2", "syslog", "soc", "stdout"]
    assert s.sinks[1].rotate_bytes == 1000
    assert s.sinks[3].verify_tls is True and s.sinks[3].headers == {"X-Team": "blue"}
    assert facility_code(s.sinks[2].facility) == 23


def test_sinks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "DAEMONEYE_ALERTER__SINKS", '[{"kind": "stdout", "format": "human"}, {"kind": "file"}]'
    )
    s = load_settings().alerter
    assert [(k.kind, k.name) for k in s.sinks] == [("stdout", "stdout"), ("file", "file")]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('kind = "pager"', "alerter.sinks.0"),
        ('kind = "webhook"\nurl = "ftp://x"', "should match pattern"),
        ('kind = "syslog"\ntransport = "udp"\naddress = "nohost"', "must be host:port"),
        ('kind = "syslog"\nfacility = "kernel-ish"', "unknown syslog facility 'kernel-ish'"),
        ('kind = "file"\nfsync = "sometimes"', "fsync"),
        ('kind = "file"\nbogus = 1', "bogus"),
    ],
)
def test_bad_sinks_are_named_in_the_error(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[[alerter.sinks]]\n{table}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(config_file=path)
    assert "alerter.sinks" in str(err.value)


def test_duplicate_sink_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text('[[alerter.sinks]]\nkind = "file"\nname = "a"\n'
                    '[[alerter.sinks]]\nkind = "stdout"\nname = "a"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="sink names must be unique; repeated: a"):
        load_settings(config_file=path)
