"""Exec -> alert *in the file sink*, measured from outside the alerter.

A process of its own follows the file sink (inotify on its directory, rotation
followed) and notes, for each storm alert line, when the line could first be read:
the time a reader of the file sees it, which is what DESIGN's "exec -> alert in the
file sink" budget means. The alert's own stamps (the detector's `sentNs`, the
alerter's `receivedNs`) are earlier than that.

    sink_tail.py <alerts.jsonl> <marker> <out>

Runs until stdin closes (its parent's end), then writes one "spawn_ns seen_ns" line
per storm alert to <out>. The parent should run it at the services' priority: a
tailer woken late reads lines late and overstates the latency (never understates).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import sys
import time
from pathlib import Path

IN_MODIFY = 0x00000002
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_CLOEXEC = 0o2000000


def storm_alert(line: bytes, marker: str) -> tuple[dict, int] | None:
    """A file sink line that is the alert of a storm process (argv: true <marker> <n>
    <spawn_ns>): the record and its spawn time; None for any other line."""
    if marker.encode() not in line:
        return None
    try:
        record = json.loads(line)
        argv = record["process"]["cmdline"]
    except (ValueError, KeyError, TypeError):
        return None
    if record.get("type") != "alert" or len(argv) < 4 or argv[1] != marker:
        return None
    return record, int(argv[3])


class Tail:
    """The lines appended to one path, across rotations (rename to .1, new file)."""

    def __init__(self, path: Path, marker: str) -> None:
        self.path, self.marker = path, marker
        self.fh = None
        self.inode = 0
        self.partial = b""
        self.seen: list[tuple[int, int]] = []  # (spawn ns, line first read ns)

    def poll(self) -> None:
        """Read what was appended; at rotation, the old file's rest, then the new one."""
        while True:
            if self.fh is None and not self._open():
                return
            self._read_rest()
            try:
                inode = os.stat(self.path).st_ino
            except FileNotFoundError:
                return
            if inode == self.inode:
                return
            self._read_rest()  # the last lines written before the rename
            self.fh.close()
            self.fh, self.partial = None, b""

    def _open(self) -> bool:
        try:
            self.fh = open(self.path, "rb")  # noqa: SIM115 - followed across reads
        except FileNotFoundError:
            return False
        self.inode = os.fstat(self.fh.fileno()).st_ino
        return True

    def _read_rest(self) -> None:
        data = self.fh.read()
        if not data:
            return
        now = time.time_ns()  # after the read: a line is never stamped before it is there
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            found = storm_alert(line, self.marker)
            if found is not None:
                self.seen.append((found[1], now))


def main() -> int:
    path, marker, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0:
        print(f"sink_tail: inotify_init1: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = IN_MODIFY | IN_CREATE | IN_MOVED_TO
    if libc.inotify_add_watch(fd, bytes(path.parent), mask) < 0:
        print(f"sink_tail: watch {path.parent}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    tail = Tail(path, marker)
    stdin = sys.stdin.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(stdin, select.POLLIN | select.POLLHUP)
    done = False
    while not done:
        for ready, _ in poller.poll():
            if ready == stdin:
                done = True  # the parent closed our stdin: read what is left, then report
            else:
                os.read(fd, 65536)  # the events only wake us; the file says what changed
        tail.poll()
    out.write_text("".join(f"{spawn} {seen}\n" for spawn, seen in tail.seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
