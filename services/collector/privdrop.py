"""Privilege drop: after root-only things are open, become a plain user that keeps
only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (to read other users' /proc entries),
with no-new-privs set so nothing exec'd can regain more.
"""

from __future__ import annotations

import ctypes
import os
import pwd

from daemoneye.libc import libc as c_library

CAP_DAC_READ_SEARCH = 2
CAP_SYS_PTRACE = 19
KEPT = (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH)
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST = 63


class PrivilegeError(RuntimeError):
    """The drop could not be done: which step and why."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    lib = c_library()
    if lib is None:
        raise PrivilegeError("no C library to call prctl and capset through")
    return lib


def _check(ret: int, step: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{step} failed: {os.strerror(err)}")


def effective_caps() -> int:
    """CapEff of this process, as a bit mask."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def lacking() -> list[str]:
    """What a collector not started as root cannot do, for the status notes."""
    if os.geteuid() == 0:
        return []
    caps = effective_caps()
    notes = []
    if not caps & (1 << CAP_SYS_PTRACE):
        notes.append("no CAP_SYS_PTRACE: exe, cwd and io of other users' processes unreadable")
    if not caps & (1 << CAP_DAC_READ_SEARCH):
        notes.append("no CAP_DAC_READ_SEARCH: some /proc entries of other users unreadable")
    return notes


def drop_to(user: str, own_paths: tuple[str, ...] = ()) -> str:
    """Become `user` keeping only KEPT capabilities; `own_paths` are chowned first."""
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot drop to {user!r}: not running as root")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r} (setting collector.user)") from None
    for path in own_paths:
        for root, dirs, files in os.walk(path):
            os.chown(root, pw.pw_uid, pw.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
    libc = _libc()
    for cap in range(CAP_LAST + 1):  # the bounding set: nothing else can ever come back
        if cap not in KEPT:
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap
    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    mask = 0
    for cap in KEPT:
        mask |= 1 << cap
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, 0), _CapData(0, 0, 0))
    _check(libc.capset(ctypes.byref(header), data), "capset")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return f"running as {user} (uid {pw.pw_uid}) with CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH"
