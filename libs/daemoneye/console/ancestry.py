"""How the console shows an alert's ancestry: `bash(412) < sshd(400) < systemd(1)`,
parent first; an ancestor that had exited when the alert was built is marked `†`."""

from __future__ import annotations

from typing import Any

MAX_ARGV_CHARS = 60


def chain_text(alert: dict[str, Any], argv: bool = False, limit: int = 8) -> str:
    """The ancestry in one line (names and pids; `argv`: each one's command line too)."""
    parts = []
    for anc in (alert.get("ancestry") or [])[:limit]:
        name = anc.get("name") or (anc.get("exePath") or "").rpartition("/")[2] or "?"
        part = f"{name}({anc.get('pid', '?')}){'†' if anc.get('exited') else ''}"
        if argv and anc.get("cmdline"):
            text = " ".join(anc["cmdline"])
            if len(text) > MAX_ARGV_CHARS:
                text = text[: MAX_ARGV_CHARS - 1] + "…"
            part += f" [{text}]"
        parts.append(part)
    return " < ".join(parts)
