"""Suspicious-process heuristics: each a small function of (record, previous, parent).

A heuristic returns a reason string when it fires; `check` gathers (reason,
severity) pairs. Names are short and stable: detection rules and operators key on them.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable
from typing import Any

Record = dict[str, Any]

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash"})
# exec'ing a script makes comm the script's name and exe the interpreter: not masquerading
_INTERPRETER = re.compile(
    r"^(?:(?:ba|da|z|k|mk|c|tc|fi|a)?sh|busybox|python[\d.]*|perl[\d.]*|ruby[\d.]*|node(js)?"
    r"|php[\d.]*|java|lua[\d.]*|tclsh[\d.]*|wish[\d.]*|env|ld-linux.*\.so.*|qemu-.*)$"
)
COMM_LEN = 15  # the kernel truncates comm to 15 bytes


def exe_memfd(rec: Record) -> str | None:
    exe = rec.get("exePath") or ""
    if exe.startswith("/memfd:"):  # memfd_create + fexecve: nothing on disk at all
        return f"running from an anonymous memory file {exe!r} (fileless)"
    return None


def exe_deleted(rec: Record) -> str | None:
    if rec.get("exeDeleted") and not (rec.get("exePath") or "").startswith("/memfd:"):
        return f"executable {rec.get('exePath', '')} deleted while running"
    return None


# directory -> (world-writable, when to look again): a storm of execs from one directory
# stats it once, and a directory made world-writable later is seen within the TTL
_dir_modes: dict[str, tuple[bool, float]] = {}
DIR_MODE_TTL_S = 5.0
_clock = time.monotonic


def _world_writable(directory: str) -> bool:
    now = _clock()
    known = _dir_modes.get(directory)
    if known is not None and now < known[1]:
        return known[0]
    try:
        writable = bool(os.stat(directory).st_mode & stat.S_IWOTH)
    except OSError:
        writable = False
    if len(_dir_modes) > 4096:
        _dir_modes.clear()
    _dir_modes[directory] = (writable, now + DIR_MODE_TTL_S)
    return writable


def exe_in_writable_dir(rec: Record, places: Iterable[str]) -> str | None:
    exe = rec.get("exePath") or ""
    if not exe.startswith("/"):
        return None
    for place in places:
        base = place.rstrip("/")
        if exe.startswith(base + "/"):
            return f"executable {exe} under world-writable {base}"
    directory = os.path.dirname(exe)
    if _world_writable(directory):
        return f"executable {exe} in world-writable directory {directory}"
    return None


def masquerade(rec: Record) -> str | None:
    name = rec.get("name") or ""
    exe = rec.get("exePath") or ""
    if not name or not exe or rec.get("state") == "Z":
        return None
    base = os.path.basename(exe)
    if _INTERPRETER.match(base):
        return None
    if base == name or (len(name.encode()) >= COMM_LEN and base.startswith(name)):
        return None
    return f"name {name!r} does not match executable {base!r}"


def uid_raised(rec: Record, previous: Record | None) -> str | None:
    if previous is None:
        return None
    if previous.get("euid", 0) != 0 and rec.get("euid", 0) == 0:
        return f"euid raised from {previous['euid']} to 0 in a running process"
    return None


def shell_from_service(rec: Record, parent: Record | None, services: Iterable[str]) -> str | None:
    if parent is None or (rec.get("name") or "") not in SHELLS:
        return None
    pname = parent.get("name") or ""
    pbase = os.path.basename(parent.get("exePath") or "")
    for svc in services:
        if pname == svc or pbase == svc or (pname.startswith(svc[:COMM_LEN]) and len(pname) >= 15):
            return f"shell {rec['name']!r} spawned by service process {pname!r}"
    return None


def check(
    rec: Record,
    previous: Record | None,
    parent: Record | None,
    writable_places: Iterable[str],
    shell_parents: Iterable[str],
) -> list[tuple[str, str, str]]:
    """(heuristic id, severity, message) for every heuristic that fires."""
    found = []
    for hid, severity, msg in (
        ("exe_deleted", "high", exe_deleted(rec)),
        ("exe_memfd", "high", exe_memfd(rec)),
        ("exe_world_writable", "medium", exe_in_writable_dir(rec, writable_places)),
        ("masquerade", "medium", masquerade(rec)),
        ("uid_raised_to_root", "critical", uid_raised(rec, previous)),
        ("shell_from_service", "high", shell_from_service(rec, parent, shell_parents)),
    ):
        if msg:
            found.append((hid, severity, msg))
    return found
