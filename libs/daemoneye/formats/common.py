"""What both schema mappings need from a DaemonEye record."""

from __future__ import annotations

import re
import time
from typing import Any

ATTACK_TAG = re.compile(r"^attack\.(t\d{4})(?:\.(\d{3}))?$", re.IGNORECASE)


def iso(time_ns: int | float) -> str:
    """RFC 3339 UTC with microseconds."""
    seconds, ns = divmod(int(time_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


def ms(time_ns: int | float) -> int:
    return int(time_ns) // 1_000_000


def techniques(tags: list[str] | None) -> list[tuple[str, str | None]]:
    """(technique, sub-technique or None) of every `attack.tNNNN[.NNN]` tag."""
    out = []
    for tag in tags or []:
        m = ATTACK_TAG.match(tag)
        if m:
            technique = m.group(1).upper()
            out.append((technique, f"{technique}.{m.group(2)}" if m.group(2) else None))
    return out


def argv(proc: dict[str, Any]) -> list[str]:
    return [str(a) for a in proc.get("cmdline") or []]


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
