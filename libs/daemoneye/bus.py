"""The only code that creates ZeroMQ sockets: a socket factory, topic names,
a Publisher that stamps sequence numbers and a Subscriber that checks them.

Sequence numbers are kept per (source, stream), where a stream is a topic's first
two labels (`events.process`, `alerts.high`, `control.health`). A subscriber can
then filter by prefix and still detect gaps in every stream its prefixes cover
whole; streams it only sees part of are not gap-checked.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket as pysocket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from daemoneye import wire
from daemoneye.config import Settings
from daemoneye.security import CountingAuthenticator, KeyFileError, load_pair, load_public

log = logging.getLogger("daemoneye.bus")

RUN_DIR_MODE = 0o750
SOCKET_MODE = 0o660
# plain ints on the hot path: pyzmq converts its IntEnum flags on every call
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
MAX_KNOWN_TOPICS = 4096  # topics a Subscriber remembers decoded; others are decoded each time


class Topics:
    """Topic names. A SUB prefix filter selects by these."""

    PROCESS = "events.process."
    PROCESS_STREAM = "events.process"  # its sequence stream (stream_of): a collector's WAL
    PROCESS_START = "events.process.start"
    PROCESS_STOP = "events.process.stop"
    PROCESS_MODIFY = "events.process.modify"
    PROCESS_SUSPICIOUS = "events.process.suspicious"
    COLLECTOR_NOTICE = "events.collector."
    HEARTBEAT = "control.health.heartbeat."
    LIFECYCLE = "control.collector.lifecycle"
    SERVICE_LIFECYCLE = "control.service.lifecycle"
    ALERTS = "alerts."
    AUDIT = "audit."
    CHECKPOINT = "ledger.checkpoint"
    BROKER = "control.broker"

    @staticmethod
    def heartbeat(service_id: str) -> str:
        return f"control.health.heartbeat.{service_id}"

    @staticmethod
    def collector_notice(collector_id: str) -> str:
        return f"events.collector.{collector_id}"

    @staticmethod
    def alert(severity: str) -> str:
        return f"alerts.{severity}"

    @staticmethod
    def audit(service: str) -> str:
        return f"audit.{service}"

    @staticmethod
    def control(service: str, service_id: str | None = None) -> str:
        return f"control.{service}.{service_id}" if service_id else f"control.{service}"


def stream_of(topic: str) -> str:
    """The sequence stream a topic belongs to: its first two labels."""
    first, _, rest = topic.partition(".")
    second = rest.partition(".")[0]
    return f"{first}.{second}" if second else first


def covers(prefixes: Iterable[str], stream: str) -> bool:
    """Whether subscribing to `prefixes` delivers every topic of `stream`."""
    return any(p == "" or f"{stream}.".startswith(p) for p in prefixes)


def new_boot_id() -> str:
    return secrets.token_hex(8)


# --- the socket factory ------------------------------------------------------


class RunDirError(RuntimeError):
    """The run directory is unsafe or unusable; says which and why."""


def prepare_run_dir(path: Path) -> Path:
    """Create the run dir 0750, refusing a symlink or a directory owned by someone else."""
    path = Path(path)
    if path.is_symlink():
        raise RunDirError(f"run dir {path} is a symlink; refusing to use it")
    try:
        path.mkdir(mode=RUN_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run dir {path}: {exc.strerror}") from None
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise RunDirError(f"run dir {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise RunDirError(
            f"run dir {path} is owned by uid {info.st_uid}, not by us ({os.geteuid()})"
        )
    if stat.S_IMODE(info.st_mode) & 0o027:
        os.chmod(path, RUN_DIR_MODE)
    return path


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def endpoint_in_use(endpoint: str) -> bool:
    """True when something answers on an ipc endpoint (a live broker)."""
    path = ipc_path(endpoint)
    if path is None or not path.exists():
        return False
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class SocketFactory:
    """Creates, configures and closes every socket of one process."""

    def __init__(self, settings: Settings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self._sockets: list[zmq.Socket] = []
        self._bound_files: list[Path] = []
        self.authenticator: CountingAuthenticator | None = None

    def _make(self, kind: int) -> zmq.Socket:
        bus = self.settings.bus
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, bus.linger_ms)
        sock.setsockopt(zmq.SNDHWM, bus.send_hwm)
        sock.setsockopt(zmq.RCVHWM, bus.recv_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, bus.max_message_bytes)
        sock.setsockopt(zmq.RECONNECT_IVL, bus.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, bus.reconnect_ivl_max_ms)
        self._sockets.append(sock)
        return sock

    def bind(self, kind: int, endpoint: str, **options: Any) -> zmq.Socket:
        path = ipc_path(endpoint)
        if path is not None:
            prepare_run_dir(path.parent)
            if endpoint_in_use(endpoint):
                raise RunDirError(f"{endpoint} is in use: another broker is running there")
        sock = self._make(kind)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        self._secure(sock, endpoint, server=True)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close(sock)
            raise RunDirError(f"cannot bind {endpoint}: {exc}") from None
        if path is not None:
            os.chmod(path, SOCKET_MODE)
            self._bound_files.append(path)
        return sock

    def connect(self, kind: int, endpoint: str, monitor: int = 0, **options: Any) -> zmq.Socket:
        """`monitor`: zmq.EVENT_* bits to watch from the first connection on (the PAIR
        socket is `sock.get_monitor_socket()`; the caller closes it)."""
        sock = self._make(kind)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        self._secure(sock, endpoint, server=False)
        if monitor:
            sock.get_monitor_socket(monitor)  # before connect: no early event is missed
        sock.connect(endpoint)
        return sock

    def _secure(self, sock: zmq.Socket, endpoint: str, server: bool) -> None:
        """CurveZMQ on tcp:// unless switched off: the broker serves, everyone else is a
        client that must present a key the broker's allow-list admits."""
        bus = self.settings.bus
        if not endpoint.startswith("tcp://") or bus.curve is False:
            return
        keys = self.settings.keys_dir()
        try:
            if server:
                if self.authenticator is None:
                    self.authenticator = CountingAuthenticator(
                        self.context, self.settings.authorized_dir()
                    )
                    self.authenticator.start()
                public, secret = load_pair(keys / f"{bus.server_key}.key_secret")
                sock.curve_server = True
            else:
                sock.curve_serverkey = load_public(keys / f"{bus.server_key}.key")
                public, secret = load_pair(keys / f"{bus.client_key}.key_secret")
        except KeyFileError:
            self.close(sock, linger_ms=0)
            raise
        sock.curve_publickey = public
        sock.curve_secretkey = secret

    def close(self, sock: zmq.Socket, linger_ms: int | None = None) -> None:
        if sock in self._sockets:
            self._sockets.remove(sock)
        sock.close(linger=linger_ms)

    def close_all(self, linger_ms: int | None = None) -> None:
        for sock in list(self._sockets):
            self.close(sock, linger_ms)
        for path in self._bound_files:
            path.unlink(missing_ok=True)
        self._bound_files.clear()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def shutdown(self, linger_ms: int | None = None) -> None:
        """The process's last word on the bus: close every socket and end the context,
        which waits up to the linger time for queued messages to leave. Closing sockets
        alone does not: libzmq's I/O thread dies with the process, and what it still
        held (a fast publisher's last thousands of messages) was lost."""
        self.close_all(linger_ms)
        linger = self.settings.bus.linger_ms if linger_ms is None else linger_ms
        self.context.destroy(linger=linger)  # bounded: a socket made elsewhere cannot hang it


# --- publishing --------------------------------------------------------------


class Publisher:
    """Sends [topic, envelope] with a per-stream sequence number and this boot's id."""

    def __init__(self, sock: zmq.Socket, source_id: str, boot_id: str | None = None) -> None:
        self.sock = sock
        self.source_id = source_id
        self.boot_id = boot_id or new_boot_id()
        self._seq: dict[str, int] = {}
        self._sent_on: dict[str, int] = {}  # stream -> last seq sent (RPC frames never are)
        self.sent = 0
        self._topics: dict[str, tuple[str, bytes]] = {}  # topic -> (stream, its bytes)

    def _topic(self, topic: str) -> tuple[str, bytes]:
        """The topic's stream and bytes, worked out once per topic (~1 us a message)."""
        known = self._topics.get(topic)
        if known is None:
            if len(self._topics) >= 1024:  # topics naming ids: keep the cache bounded
                self._topics.clear()
            known = self._topics[topic] = (stream_of(topic), topic.encode())
        return known

    def last_seq(self, stream: str) -> int:
        return self._seq.get(stream, 0)

    def positions(self) -> dict[str, int]:
        """The last seq sent on each stream this boot (heartbeats carry them, so a
        subscriber that lost a stream's tail learns it without waiting for a next message).
        A message is encoded and sent before the next one of its stream is encoded."""
        return dict(self._sent_on)

    def continue_from(self, stream: str, last_seq: int) -> None:
        """Resume a stream after a restart (e.g. from a WAL) so no seq is reused."""
        self._seq[stream] = max(self._seq.get(stream, 0), last_seq)

    def encode(self, topic: str, body_kind: str, body: Any = None) -> tuple[int, bytes]:
        """Stamp the next seq of the topic's stream and encode, without sending."""
        stream = self._topic(topic)[0]
        seq = self._seq.get(stream, 0) + 1
        header = wire.Header(self.source_id, self.boot_id, seq, time.time_ns())
        data = wire.encode_envelope(header, body_kind, body)
        self._seq[stream] = seq  # only once encoded: a body that fails leaves no hole
        return seq, data

    def publish(self, topic: str, body_kind: str, body: Any = None) -> int:
        seq, data = self.encode(topic, body_kind, body)
        self.send_encoded(topic, data)
        return seq

    def send_encoded(self, topic: str, data: bytes) -> None:
        # Two sends, not send_multipart: its Python layer costs more than the sends.
        stream, topic_bytes = self._topic(topic)
        send = self.sock.send
        send(topic_bytes, _SNDMORE)
        send(data)
        self.sent += 1
        self._sent_on[stream] = self._seq.get(stream, 0)


# --- subscribing -------------------------------------------------------------


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.5 us more to build
class Message:
    topic: str
    envelope: Any  # a decoded wire.Envelope reader
    size: int
    raw: bytes  # the envelope bytes as received (to store or forward verbatim)
    # What decoding already read (Subscriber fills them in): each read through the
    # reader costs ~0.5 us, so these spare callers a second read. Empty when built by hand.
    _kind: str = field(default="", repr=False, compare=False)
    _header: tuple[str, str, int] | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self._kind or wire.body_kind(self.envelope)

    @property
    def body(self) -> Any:
        return getattr(self.envelope.body, self.kind)

    @property
    def source_id(self) -> str:
        return self._header[0] if self._header else self.envelope.sourceId

    @property
    def boot_id(self) -> str:
        return self._header[1] if self._header else self.envelope.bootId

    @property
    def seq(self) -> int:
        return self._header[2] if self._header else self.envelope.seq


@dataclass(frozen=True, slots=True)
class Gap:
    source_id: str
    stream: str
    first_missing: int
    last_missing: int

    @property
    def count(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass
class SubscriberStats:
    received: int = 0
    dropped_malformed: int = 0
    dropped_oversize: int = 0
    gaps: int = 0
    missing: int = 0
    tail_gaps: int = 0  # of the gaps: found by a source's heartbeat, not by a next message
    restarts: int = 0
    duplicates: int = 0
    last_drop_reason: str = ""
    # per stream, for /metrics; counted where the totals are (gaps and drops are rare:
    # nothing is added per accepted message)
    gaps_by_stream: dict[str, int] = field(default_factory=dict)
    missing_by_stream: dict[str, int] = field(default_factory=dict)
    dropped_by_stream: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _StreamState:
    boot_id: str
    last_seq: int


class SequenceTracker:
    """Per (source, stream) sequence checking: gaps, restarts and duplicates."""

    def __init__(self, prefixes: Iterable[str], on_gap: Callable[[Gap], None] | None = None):
        self.prefixes = tuple(prefixes)
        self.on_gap = on_gap
        self.stats = SubscriberStats()
        self._streams: dict[tuple[str, str], _StreamState] = {}
        self._covered: dict[str, bool] = {}

    def check(self, topic: str, source_id: str, boot_id: str, seq: int) -> bool:
        """Record one message; False when it is a duplicate to be ignored."""
        stream = self.checked_stream(topic)
        return True if stream is None else self.check_stream(stream, source_id, boot_id, seq)

    def checked_stream(self, topic: str) -> str | None:
        """The stream of a topic when the prefixes cover it whole, else None (unchecked)."""
        stream = stream_of(topic)
        covered = self._covered.get(stream)
        if covered is None:
            covered = self._covered[stream] = covers(self.prefixes, stream)
        return stream if covered else None

    def check_stream(self, stream: str, source_id: str, boot_id: str, seq: int) -> bool:
        """`check` for a topic whose stream `checked_stream` gave."""
        key = (source_id, stream)
        state = self._streams.get(key)
        if state is not None and seq == state.last_seq + 1 and boot_id == state.boot_id:
            state.last_seq = seq  # the next in order: by far the commonest case
            return True
        if state is None:
            self._streams[key] = _StreamState(boot_id, seq)
            return True
        if boot_id != state.boot_id:
            state.boot_id = boot_id
            if seq <= state.last_seq or seq == 1:
                # A new sequence space: the source restarted without continuing.
                self.stats.restarts += 1
                state.last_seq = seq
                return True
        if seq <= state.last_seq:
            self.stats.duplicates += 1
            return False
        if seq > state.last_seq + 1:
            self._gap(Gap(source_id, stream, state.last_seq + 1, seq - 1))
        state.last_seq = seq
        return True

    def check_tail(self, stream: str, source_id: str, boot_id: str, last_sent: int) -> None:
        """A source says (in a heartbeat) it sent `last_sent` on a stream: if this
        subscriber holds less of that boot's stream, the tail was lost; it is a gap like
        any other, and the stream moves on to `last_sent` (the repair delivers the rest).
        Only streams already tracked: a heartbeat cannot make the tracker grow."""
        state = self._streams.get((source_id, stream))
        if state is None or state.boot_id != boot_id or last_sent <= state.last_seq:
            return
        self.stats.tail_gaps += 1
        first = state.last_seq + 1
        state.last_seq = last_sent  # before the repair: what it delivers is not a new gap
        self._gap(Gap(source_id, stream, first, last_sent))

    def _gap(self, gap: Gap) -> None:
        stats = self.stats
        stats.gaps += 1
        stats.missing += gap.count
        stats.gaps_by_stream[gap.stream] = stats.gaps_by_stream.get(gap.stream, 0) + 1
        stats.missing_by_stream[gap.stream] = stats.missing_by_stream.get(gap.stream, 0) + gap.count
        log.warning(
            "gap source=%s stream=%s missing=%d-%d",
            gap.source_id,
            gap.stream,
            gap.first_missing,
            gap.last_missing,
        )
        if self.on_gap:
            self.on_gap(gap)

    def last_seq(self, source_id: str, stream: str) -> int:
        state = self._streams.get((source_id, stream))
        return state.last_seq if state else 0

    def streams(self) -> list[str]:
        """The streams this subscriber checks, as far as it has seen them."""
        return [stream for stream, covered in self._covered.items() if covered]

    def resume(self, source_id: str, stream: str, boot_id: str, last_seq: int) -> None:
        """Seed a stream's position (e.g. from a store after a restart), so the next
        message is checked against it: what was missed while down shows as a gap."""
        self._streams[(source_id, stream)] = _StreamState(boot_id, last_seq)


_TAILS_ONLY, _TAILS_AND_DELIVERED = 1, 2  # a heartbeat topic's role for a Subscriber


class Subscriber:
    """A SUB socket with decoding, size limits and sequence checking."""

    def __init__(
        self,
        sock: zmq.Socket,
        prefixes: Iterable[str],
        max_event_bytes: int,
        on_gap: Callable[[Gap], None] | None = None,
        watch_tails: bool = False,
    ) -> None:
        self.sock = sock
        self.prefixes = tuple(prefixes) or ("",)
        self.max_event_bytes = max_event_bytes
        self.tracker = SequenceTracker(self.prefixes, on_gap)
        self._drop_logged_at = 0.0
        # topic bytes -> (topic, its checked stream or None, heartbeat role): decoded and
        # classified once
        self._topics: dict[bytes, tuple[str, str | None, int]] = {}
        # watch_tails: every source's heartbeats are read for the positions of its
        # streams (a lost tail shows as a gap); delivered only if the prefixes want them
        self.watch_tails = watch_tails
        wanted = self.prefixes
        if watch_tails and not covers(self.prefixes, Topics.HEARTBEAT):
            wanted += (Topics.HEARTBEAT,)
        for prefix in wanted:
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())

    @property
    def stats(self) -> SubscriberStats:
        return self.tracker.stats

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next valid message, or None when none arrives in time."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            frames = self._recv_frames()  # what already waits needs no poll
            if frames is not None:
                msg = self.accept(frames)
                if msg is not None:
                    return msg
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(wait):
                return None

    def recv_ready(self) -> Message | None:
        """Read one waiting frame without blocking; None when it was dropped or none waits."""
        frames = self._recv_frames()
        return None if frames is None else self.accept(frames)

    def drain(self, limit: int = 1000) -> Iterable[Message]:
        """Every message waiting now (up to `limit` frames), without blocking."""
        for _ in range(limit):
            frames = self._recv_frames()
            if frames is None:
                return
            msg = self.accept(frames)
            if msg is not None:
                yield msg

    def _recv_frames(self) -> list[bytes] | None:
        """One whole waiting message, or None. Like recv_multipart, at about half its cost:
        each part comes as a zmq.Frame whose `more` is a field read, where asking the
        socket (getsockopt RCVMORE) costs ~1 us a part in pyzmq's option lookup; the
        bytes are copied out as recv(copy=True) would."""
        recv = self.sock.recv
        try:
            frame = recv(_NOBLOCK, False)
        except zmq.Again:
            return None
        frames = [frame.bytes]
        while frame.more:
            frame = recv(0, False)  # the rest of a multipart message is already here
            frames.append(frame.bytes)
        return frames

    def accept(self, frames: list[bytes]) -> Message | None:
        """Decode, validate and sequence-check one received [topic, envelope]; None when
        it was dropped (counted, with the reason) or is a duplicate."""
        if len(frames) != 2:
            return self._drop(f"expected 2 frames [topic, envelope], got {len(frames)}")
        topic_bytes, data = frames
        size = len(data)
        if size > self.max_event_bytes:
            self.tracker.stats.dropped_oversize += 1
            return self._drop(f"frame of {size} bytes exceeds {self.max_event_bytes}", topic_bytes)
        known = self._topics.get(topic_bytes)
        if known is None:
            try:
                known = self._learn_topic(topic_bytes)
            except UnicodeDecodeError:
                return self._drop("topic is not UTF-8")
        try:
            envelope, kind, source_id, boot_id, seq = wire.decode_parts(data)
        except wire.DecodeError as exc:
            return self._drop(f"topic {topic_bytes[:80]!r}: {exc}", topic_bytes)
        topic, stream, heartbeat = known
        tracker = self.tracker
        if stream is not None and not tracker.check_stream(stream, source_id, boot_id, seq):
            return None
        if heartbeat:
            if kind == "heartbeat":
                self._check_tails(envelope.body.heartbeat, source_id, boot_id)
            if heartbeat == _TAILS_ONLY:
                return None
        tracker.stats.received += 1
        return Message(topic, envelope, size, data, kind, (source_id, boot_id, seq))

    def _learn_topic(self, topic_bytes: bytes) -> tuple[str, str | None, int]:
        topic = topic_bytes.decode()
        heartbeat = 0
        if self.watch_tails and topic.startswith(Topics.HEARTBEAT):
            wanted = any(topic.startswith(p) for p in self.prefixes)
            heartbeat = _TAILS_AND_DELIVERED if wanted else _TAILS_ONLY
        known = (topic, self.tracker.checked_stream(topic), heartbeat)
        if len(self._topics) < MAX_KNOWN_TOPICS:  # bounded: a publisher may invent topics
            self._topics[topic_bytes] = known
        return known

    def _check_tails(self, heartbeat: Any, source_id: str, boot_id: str) -> None:
        check = self.tracker.check_tail
        for position in heartbeat.streams:
            check(position.stream, source_id, boot_id, position.lastSeq)

    def count_malformed(self, reason: str, topic: str = "") -> None:
        """A message that decoded but whose body proved malformed when read."""
        self._drop(reason, topic.encode())

    def _drop(self, reason: str, topic: bytes = b"") -> None:
        stats = self.tracker.stats
        stats.dropped_malformed += 1
        stats.last_drop_reason = reason
        stream = stream_of(topic.decode(errors="replace")) if topic else "(unknown)"
        stats.dropped_by_stream[stream] = stats.dropped_by_stream.get(stream, 0) + 1
        now = time.monotonic()
        if now - self._drop_logged_at > 1.0:  # log at most once a second; the count is exact
            self._drop_logged_at = now
            log.warning("dropped frame: %s (dropped so far: %d)", reason, stats.dropped_malformed)
        return None


def wait_for_endpoint(endpoint: str, timeout_s: float) -> bool:
    """Wait until an ipc endpoint accepts connections (used by supervisors and tests)."""
    path = ipc_path(endpoint)
    if path is None:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if endpoint_in_use(endpoint):
            return True
        time.sleep(0.02)  # polling a filesystem condition; there is nothing to block on
    return False
