"""deploy/daemoneye.example.toml lists every setting and stays loadable."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel

from daemoneye.config import Settings, load_settings
from daemoneye.config_doc import example_toml

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "daemoneye.example.toml"


def test_example_file_is_current() -> None:
    assert EXAMPLE.read_text() == example_toml(), (
        "deploy/daemoneye.example.toml is stale: "
        "run `daemoneye config example > deploy/daemoneye.example.toml`"
    )


def all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            keys += all_keys(info.annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_setting_is_in_the_example_with_a_description() -> None:
    text = example_toml()
    for key in all_keys(Settings):
        leaf = key.rsplit(".", 1)[-1]
        assert re.search(rf"^# {re.escape(leaf)} = ", text, re.M), f"{key} missing"


def test_uncommented_example_loads(tmp_path: Path) -> None:
    lines = []
    for line in example_toml().splitlines():
        table = re.match(r"^# (\[[\w.]+\])(  .*)?$", line)
        setting = re.match(r"^# (\w+ = .*)$", line)
        if table:
            lines.append(table.group(1))
        elif setting and not line.endswith(("= ...", "= (unset)")):
            lines.append(setting.group(1))
    path = tmp_path / "all.toml"
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())
    assert load_settings(config_file=path).bus.max_event_bytes == 1 << 20
