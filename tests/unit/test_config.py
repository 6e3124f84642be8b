"""Settings: precedence of sources and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemoneye import config
from daemoneye.config import ConfigError, load_settings

pytestmark = pytest.mark.usefixtures("no_host_config")


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.heartbeat_interval_s == 5.0
    assert s.endpoint("control") == f"ipc://{s.run_dir / 'control'}"


def test_precedence_files_env_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "system.toml"
    user = tmp_path / "user.toml"
    explicit = tmp_path / "explicit.toml"
    system.write_text(
        'heartbeat_interval_s = 1\nrpc_timeout_s = 1\nlog_level = "error"\n'
        "[broker]\nunhealthy_after_missed = 9\n"
    )
    user.write_text("heartbeat_interval_s = 2\nrpc_timeout_s = 2\n")
    explicit.write_text("heartbeat_interval_s = 3\n")
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    monkeypatch.setattr(config, "USER_CONFIG", user)

    s = load_settings()
    assert (s.heartbeat_interval_s, s.rpc_timeout_s, s.log_level) == (2, 2, "error")
    assert s.broker.unhealthy_after_missed == 9
    assert load_settings(config_file=explicit).heartbeat_interval_s == 3
    monkeypatch.setenv("DAEMONEYE_HEARTBEAT_INTERVAL_S", "4")
    monkeypatch.setenv("DAEMONEYE_BROKER__UNHEALTHY_AFTER_MISSED", "5")
    s = load_settings(config_file=explicit)
    assert (s.heartbeat_interval_s, s.broker.unhealthy_after_missed) == (4, 5)
    s = load_settings(config_file=explicit, run_dir=tmp_path / "flag-run")
    assert s.run_dir == tmp_path / "flag-run"


def test_config_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    explicit = tmp_path / "c.toml"
    explicit.write_text('hostname = "from-file"\n')
    monkeypatch.setenv("DAEMONEYE_CONFIG", str(explicit))
    assert load_settings().hostname == "from-file"


def test_invalid_value_names_key_value_and_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAEMONEYE_HEARTBEAT_INTERVAL_S", "-1")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "heartbeat_interval_s = '-1'" in str(err.value)
    assert "greater than 0" in str(err.value)


def test_invalid_nested_value_and_unknown_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('no_such_key = 1\n[bus]\nevents_in = "http://x"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=bad)
    text = str(err.value)
    assert "bus.events_in = 'http://x'" in text and "ipc://" in text
    assert "no_such_key" in text


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml\n")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(config_file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml")
