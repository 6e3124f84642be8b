"""The kernel's netlink process connector (NETLINK_CONNECTOR, CN_IDX_PROC).

Opens the socket (needs CAP_NET_ADMIN), subscribes to proc events and parses them
into small tuples. The kernel drops events when our receive buffer is full and
tells us with ENOBUFS on the next recv; `read` reports that as a `lost` count so
the caller can repair with a snapshot.

`open_sockets` splits the events over three sockets by kind: URGENT (exec, uid, gid:
their /proc read races the process's exit), EXITS, and OTHER (everything else: fork,
comm, sid, ptrace, coredump, and the answers to subscriptions), so a reader can wake
for the first and let the others wait (exits longest: a batch of them is one
envelope downstream). The split is a classic BPF socket filter on the
event's `what` (SO_ATTACH_FILTER: every kernel), not the connector's own per-socket
filter (`struct proc_input`, 6.6+): that one drops the answers to subscriptions
(what 0) from a socket asking for less than every kind, yet the kernel numbers them
in the per-CPU sequence, so they would look like lost events (kseq.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
EVENT_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (monotonic)
HEADER_LEN = NLMSG_HDR.size + CN_MSG.size  # 36
RCVBUF_BYTES = 8 << 20

FORK = 0x00000001
EXEC = 0x00000002
UID = 0x00000004
GID = 0x00000040
COMM = 0x00000200
EXIT = 0x80000000
URGENT_KINDS = (EXEC, UID, GID)  # a /proc read races the process's exit: read at once
MALFORMED = 0xFFFFFFFF  # ours: a known kind with a body too short to read (never a real kind)


class NetlinkUnavailable(RuntimeError):
    """The process connector cannot be used here: why (no CAP_NET_ADMIN, not Linux...)."""


@dataclass(slots=True)
class ProcEvent:
    what: int
    timestamp_ns: int
    pid: int  # the process (tgid) the event is about; for FORK the child
    tid: int  # the thread; for FORK the child thread
    ppid: int = 0  # FORK: the parent tgid; EXIT: the parent tgid on kernels that give it
    ruid: int = -1  # UID/GID events: real and effective ids
    euid: int = -1
    exit_code: int = 0
    exit_signal: int = 0
    comm: str = ""
    cpu: int = 0  # the CPU the kernel sent it from, and its sequence number on that CPU:
    seq: int = -1  # each CPU numbers every proc event it sends, so a gap is a lost event

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tid


def parse(data: bytes) -> list[ProcEvent]:
    """Every proc event in one datagram (usually one); malformed parts are skipped.
    Kinds we do not use (sid, ptrace, coredump...) come back too, with only `what`,
    `cpu` and `seq`: their sequence numbers count in the per-CPU accounting."""
    return [ProcEvent(*t) for t in parse_tuples(data)]


EventTuple = tuple[int, int, int, int, int, int, int, int, int, str, int, int]


def parse_tuples(data: bytes) -> list[EventTuple]:
    """`parse`, as tuples of ProcEvent's fields in order (the reader sends these on:
    building the dataclasses first costs the reader as much again)."""
    out: list[EventTuple] = []
    offset = 0
    size = len(data)
    while offset + NLMSG_HDR.size <= size:
        length, msg_type, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > size:
            break
        if msg_type != NLMSG_ERROR and length >= HEADER_LEN + EVENT_HDR.size:
            seq = CN_MSG.unpack_from(data, offset + NLMSG_HDR.size)[2]
            at = offset + HEADER_LEN
            what, cpu, ts = EVENT_HDR.unpack_from(data, at)
            out.append(_body(what, ts, data, at + EVENT_HDR.size, offset + length, cpu, seq))
        offset += (length + 3) & ~3
    return out


def _body(what: int, ts: int, data: bytes, body: int, end: int, cpu: int, seq: int) -> EventTuple:
    room = end - body
    if what == FORK and room >= 16:
        _ppid, ptgid, cpid, ctgid = _FOUR.unpack_from(data, body)
        return (FORK, ts, ctgid, cpid, ptgid, -1, -1, 0, 0, "", cpu, seq)
    if what == EXEC and room >= 8:
        pid, tgid = _TWO.unpack_from(data, body)
        return (EXEC, ts, tgid, pid, 0, -1, -1, 0, 0, "", cpu, seq)
    if what == EXIT and room >= 16:
        pid, tgid, code, sig = _FOUR.unpack_from(data, body)
        ppid = _TWO.unpack_from(data, body + 16)[1] if room >= 24 else 0
        return (EXIT, ts, tgid, pid, ppid, -1, -1, code, sig, "", cpu, seq)
    if what in (UID, GID) and room >= 16:
        pid, tgid, real, eff = _FOUR.unpack_from(data, body)
        return (what, ts, tgid, pid, 0, real, eff, 0, 0, "", cpu, seq)
    if what == COMM and room >= 24:
        pid, tgid = _TWO.unpack_from(data, body)
        comm = data[body + 8 : body + 24].split(b"\0", 1)[0].decode(errors="replace")
        return (COMM, ts, tgid, pid, 0, -1, -1, 0, 0, comm, cpu, seq)
    known = what in (FORK, EXEC, UID, GID, COMM, EXIT)
    # the tracker ignores these
    return (MALFORMED if known else what, ts, 0, 0, 0, -1, -1, 0, 0, "", cpu, seq)


_TWO = struct.Struct("=2I")
_FOUR = struct.Struct("=4I")


def _control_message(op: int) -> bytes:
    payload = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    total = NLMSG_HDR.size + len(cn) + len(payload)
    return NLMSG_HDR.pack(total, NLMSG_DONE, 0, 0, os.getpid()) + cn + payload


# Classic BPF (linux/filter.h): the socket filter sees the datagram from its netlink
# header on; `what` is the first word of the proc_event, after the nlmsghdr and cn_msg.
SO_ATTACH_FILTER = 26
WHAT_OFFSET = HEADER_LEN
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SOCK_FILTER = struct.Struct("=HBBI")  # code, jt, jf, k
ALL, URGENT, OTHER, EXITS = "all", "urgent", "other", "exits"
SPLIT: dict[str, tuple[tuple[int, ...], bool]] = {  # kinds: (compared with, pass if equal)
    URGENT: (URGENT_KINDS, True),
    EXITS: ((EXIT,), True),
    OTHER: ((*URGENT_KINDS, EXIT), False),
}


def _word(value: int) -> int:
    """A host-order u32 as BPF's absolute load reads it (network order)."""
    return int.from_bytes(struct.pack("=I", value), "big")


def bpf_program(kinds: str) -> bytes:
    """URGENT passes exec, uid and gid; EXITS exit; OTHER every datagram the two others
    do not (a datagram too short to hold `what` carries no event: all drop it)."""
    accept, drop = 0xFFFFFFFF, 0
    whats, equal = SPLIT[kinds]
    n = len(whats)
    code = [SOCK_FILTER.pack(BPF_LD_W_ABS, 0, 0, WHAT_OFFSET)]
    for i, what in enumerate(whats):  # a match jumps to the last instruction
        code.append(SOCK_FILTER.pack(BPF_JEQ_K, n - i, 0, _word(what)))
    match, other = (accept, drop) if equal else (drop, accept)
    code.append(SOCK_FILTER.pack(BPF_RET_K, 0, 0, other))  # no match
    code.append(SOCK_FILTER.pack(BPF_RET_K, 0, 0, match))
    return b"".join(code)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // SOCK_FILTER.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


Sockets = tuple["ProcConnector", "ProcConnector | None", "ProcConnector | None"]


def open_sockets(rcvbuf: int = RCVBUF_BYTES) -> Sockets:
    """(URGENT, OTHER, EXITS) subscribed sockets; (ALL, None, None) where a socket
    filter cannot be attached: one socket then gets every kind, as before the split."""
    try:
        urgent = ProcConnector(rcvbuf, URGENT)
    except OSError:  # the filter refused (NetlinkUnavailable is not an OSError)
        return ProcConnector(rcvbuf), None, None
    opened = [urgent]
    try:
        for kinds in (OTHER, EXITS):
            opened.append(ProcConnector(rcvbuf, kinds))
    except BaseException:
        for conn in opened:
            conn.close()
        raise
    return urgent, opened[1], opened[2]


class ProcConnector:
    """A subscribed process-connector socket: every kind of event, or those `kinds` says
    (URGENT, OTHER or EXITS: the filter is attached before the subscription, so no datagram
    of the other kind is ever queued here)."""

    def __init__(self, rcvbuf: int = RCVBUF_BYTES, kinds: str = ALL) -> None:
        if not hasattr(socket, "AF_NETLINK"):
            raise NetlinkUnavailable("netlink needs Linux; running on snapshots only")
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise NetlinkUnavailable(f"cannot open NETLINK_CONNECTOR: {exc.strerror}") from None
        self.kinds = kinds
        if kinds != ALL:
            try:
                _attach_filter(sock, bpf_program(kinds))
            except OSError:
                sock.close()
                raise
        try:
            self._grow_buffer(sock, rcvbuf)
            sock.bind((0, CN_IDX_PROC))
            sock.send(_control_message(PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            sock.close()
            why = exc.strerror or str(exc)
            if exc.errno in (errno.EPERM, errno.EACCES):
                why += " (needs CAP_NET_ADMIN)"
            raise NetlinkUnavailable(f"cannot subscribe to process events: {why}") from None
        sock.setblocking(False)
        self.sock = sock
        self.lost = 0  # ENOBUFS overruns seen

    @staticmethod
    def _grow_buffer(sock: socket.socket, size: int) -> None:
        force = getattr(socket, "SO_RCVBUFFORCE", 33)
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: past rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = 4096) -> tuple[list[ProcEvent], int]:
        """Events waiting now (without blocking) and how many overruns were reported."""
        events: list[ProcEvent] = []
        overruns = 0
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overruns += 1
                    self.lost += 1
                    continue
                raise
            events.extend(parse(data))
        return events, overruns

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(_control_message(PROC_CN_MCAST_IGNORE))
        self.sock.close()
