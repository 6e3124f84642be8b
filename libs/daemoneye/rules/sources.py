"""Rows for the tables the detector fills itself: `users` (passwd), `file` (stat of
executables and working directories seen) and `process_open_sockets` (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

PROC = Path("/proc")
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def users_rows() -> list[tuple]:
    try:
        import pwd
    except ImportError:  # not a POSIX host
        return []

    def signed(v: int) -> int:
        return v - (1 << 32) if v >= 1 << 31 else v

    return [
        (
            u.pw_uid,
            u.pw_gid,
            signed(u.pw_uid),
            signed(u.pw_gid),
            u.pw_name,
            u.pw_gecos,
            u.pw_dir,
            u.pw_shell,
            "",
            "",
        )
        for u in pwd.getpwall()
    ]


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "regular"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "character"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown"


def file_row(path: str) -> tuple | None:
    """One `file` row, or None when the path cannot be stat()ed from here."""
    if not path or not path.startswith("/"):
        return None
    try:
        st = os.lstat(path)
        is_link = stat.S_ISLNK(st.st_mode)
        if is_link:
            with contextlib.suppress(OSError):
                st = os.stat(path)
    except OSError:
        return None
    directory, _, filename = path.rpartition("/")
    return (
        path,
        directory or "/",
        filename,
        st.st_ino,
        st.st_uid,
        st.st_gid,
        f"{stat.S_IMODE(st.st_mode):04o}",
        st.st_rdev,
        st.st_size,
        st.st_blksize,
        int(st.st_atime),
        int(st.st_mtime),
        int(st.st_ctime),
        0,
        st.st_nlink,
        int(is_link),
        _file_type(st.st_mode),
        "",
        0,
        "",
    )


def _hex_addr(text: str, family: int) -> tuple[str, int]:
    addr, _, port = text.partition(":")
    raw = bytes.fromhex(addr)
    if family == socket.AF_INET:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        ip = socket.inet_ntop(socket.AF_INET6, words)
    return ip, int(port, 16)


def _net_table(name: str, family: int, protocol: int) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    try:
        lines = (PROC / "net" / name).read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            local, lport = _hex_addr(f[1], family)
            remote, rport = _hex_addr(f[2], family)
        except ValueError:
            continue
        state = TCP_STATES.get(f[3], "") if protocol == 6 else ""
        out[int(f[9])] = (family, protocol, local, remote, lport, rport, "", state)
    return out


def _unix_table() -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    try:
        lines = (PROC / "net" / "unix").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) >= 7:
            path = f[7] if len(f) > 7 else ""
            out[int(f[6])] = (1, 0, "", "", 0, 0, path, "")
    return out


def open_sockets_rows(max_rows: int = 100_000) -> list[tuple]:
    """process_open_sockets rows for every process we may read (Linux only)."""
    if not (PROC / "net").is_dir():
        return []
    inodes: dict[int, tuple] = {}
    for name, family, proto in (
        ("tcp", socket.AF_INET, 6),
        ("tcp6", socket.AF_INET6, 6),
        ("udp", socket.AF_INET, 17),
        ("udp6", socket.AF_INET6, 17),
        ("raw", socket.AF_INET, 255),
        ("raw6", socket.AF_INET6, 255),
        ("icmp", socket.AF_INET, 1),
        ("icmp6", socket.AF_INET6, 58),
    ):
        inodes.update(_net_table(name, family, proto))
    inodes.update(_unix_table())
    rows: list[tuple] = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if not target.startswith("socket:["):
                    continue
                inode = int(target[8:-1])
                info = inodes.get(inode)
                if info is None:
                    continue
                rows.append((pid, int(fd.name), inode, *info, netns))
                if len(rows) >= max_rows:
                    return rows
    return rows
