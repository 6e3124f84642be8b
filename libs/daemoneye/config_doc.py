"""Render the settings model as a commented TOML file: every setting, its default and
its meaning. `deploy/daemoneye.example.toml` is this output (a test keeps it so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daemoneye.config import Settings

HEADER = """\
# DaemonEye configuration: every setting, commented out at its default.
# Files read (later wins): /etc/daemoneye/daemoneye.toml, ~/.config/daemoneye/daemoneye.toml,
# then --config FILE / DAEMONEYE_CONFIG. Environment overrides any file:
# DAEMONEYE_<KEY>, nested with __ (DAEMONEYE_BUS__MAX_EVENT_BYTES=2097152).
# Regenerate with: daemoneye config example > deploy/daemoneye.example.toml
"""

HOST_DEPENDENT = {
    "run_dir": "$XDG_RUNTIME_DIR/daemoneye; /run/daemoneye as root; else /tmp/daemoneye-<uid>",
    "data_dir": "~/.local/share/daemoneye; /var/lib/daemoneye as root",
    "hostname": "this host's name",
    "config": "none",
}


def toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # JSON strings, numbers and booleans are valid TOML


def _default(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None


def _describe(name: str, info: FieldInfo) -> str:
    return info.description or name.replace("_", " ")


def render_model(model: type[BaseModel], prefix: str = "") -> list[str]:
    lines: list[str] = []
    tables: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            tables.append((name, annotation))
            continue
        lines.append(f"# {_describe(name, info)}")
        if not prefix and name in HOST_DEPENDENT:
            lines.append(f"# default: {HOST_DEPENDENT[name]}")
            lines.append(f"# {name} = ...")
        else:
            default = _default(info)
            lines.append(
                f"# {name} = {toml_value(default)}"
                if default is not None
                else f"# {name} = (unset)"
            )
        lines.append("")
    for name, sub in tables:
        doc = (sub.__doc__ or "").strip().splitlines()
        lines.append(f"# [{prefix}{name}]" + (f"  {doc[0]}" if doc else ""))
        lines.append("")
        lines.extend(render_model(sub, f"{prefix}{name}."))
    return lines


def example_toml() -> str:
    return HEADER + "\n" + "\n".join(render_model(Settings)).rstrip() + "\n"
